"""Training loops (plain PyTorch/MONAI, no server)."""
