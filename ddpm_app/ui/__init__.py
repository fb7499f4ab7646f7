"""The Gradio interface: the widgets the app trusts, and the page with its tabs."""
