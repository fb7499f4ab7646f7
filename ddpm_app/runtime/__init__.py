"""Running a network on a device: the one network object the samplers call, and the choice of CPU engine, precision
and threads, made once per model."""
