"""The diffusion math, free of devices and UI: the noise schedule and q(x_t|x₀), the reverse samplers, the training
loss, the variational bound in bits/dim, and interpolation between starting noises."""
