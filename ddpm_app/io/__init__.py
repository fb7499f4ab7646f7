"""Models and data on disk and on the Hub: model folders (safetensors + config.json), diffusers folders, the seed
tutorial's checkpoints, data packs, model cards and Hub transfers."""
