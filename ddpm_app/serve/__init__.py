"""Serving models to many users, without Gradio: the model library and its device worker, the served model, runs kept
as trajectories, checks of what users send, and the HTTP-level limits."""
