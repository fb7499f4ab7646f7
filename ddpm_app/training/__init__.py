"""Training the U-Net: the settings and recipes (config), the timesteps and loss weights of a batch (objective), the
loop (trainer), checkpoints that resume exactly (checkpoint), the EMA (ema), several GPUs (distributed) and the model
folder a run ends with (export)."""
