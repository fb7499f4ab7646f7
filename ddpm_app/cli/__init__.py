"""Command-line entry points and their options, generated from the config dataclasses."""
