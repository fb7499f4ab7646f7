"""Serving models to many users, without Gradio: the model library, the one device worker that does all tensor work,
the served model, runs kept as trajectories, the checks only serving needs, and the HTTP-level limits."""
