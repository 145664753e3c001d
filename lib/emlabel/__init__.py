"""EMLabel: annotation-efficient segmentation on MONAI Label.

The library (everything below ``emlabel`` except ``emlabel.monailabel`` and ``emlabel.cli``)
is plain PyTorch/MONAI code that runs without the server.
"""

__version__ = "0.1.0"
