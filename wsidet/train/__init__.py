"""Training: datasets cut with the inference tiling code, augmentation, the loop, checkpoints.

Importing this package imports torch.
"""
