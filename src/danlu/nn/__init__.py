"""Modules for regularising the model itself: drop path / stochastic depth, and top-layer
re-initialisation of a pretrained encoder."""

from danlu.nn.drop_path import DropPath, add_drop_path, drop_path
from danlu.nn.reinit import reinit_top_layers

__all__ = ["DropPath", "add_drop_path", "drop_path", "reinit_top_layers"]
