"""Datasets: built-in ``digits`` and a user's ``imagefolder``, with fixed-seed stratified splits."""

from edgedistill.toolchain.data.vision import VisionData, load_vision_data

__all__ = ["VisionData", "load_vision_data"]
