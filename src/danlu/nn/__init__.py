"""Modules for regularising the model itself: drop path / stochastic depth."""

from danlu.nn.drop_path import DropPath, drop_path

__all__ = ["DropPath", "drop_path"]
