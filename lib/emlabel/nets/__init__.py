"""Network factories (MONAI networks)."""

from emlabel.nets.factory import build_unet, count_parameters

__all__ = ["build_unet", "count_parameters"]
