"""Pure-PyTorch video re-ID models: ResNet-50 backbone, non-local blocks, presets."""
