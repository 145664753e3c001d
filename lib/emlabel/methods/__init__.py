"""Label-learning methods as plain PyTorch/MONAI code, one subpackage per method (no server)."""
