"""Training the U-Net: the training config and recipes, the loop, checkpoints that resume exactly, EMA and
multi-GPU."""
