"""admpff.runtime: embed person crops and match them, with numpy, OpenCV and one inference backend.

Imports nothing from torch: this package is what runs on a Jetson next to the cameras.
"""
from .contract import DEFAULT_CONTRACT, INFRARED, VISIBLE, InputContract, ModelInfo

__all__ = ["DEFAULT_CONTRACT", "INFRARED", "VISIBLE", "InputContract", "ModelInfo"]
