"""Training: the driver (`fit`, python -m harness.train), the Ray Train worker loop, checkpoints, losses, node checks."""
