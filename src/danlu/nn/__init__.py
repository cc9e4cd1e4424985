"""Modules for regularising the model itself: drop path / stochastic depth."""

from danlu.nn.drop_path import DropPath, add_drop_path, drop_path

__all__ = ["DropPath", "add_drop_path", "drop_path"]
