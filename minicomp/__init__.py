"""minicomp: a readable reference implementation of CoMP (arXiv 2503.18931)."""
from . import attention, pos_embed, rope, viz
from .packed import Packed
from .vision import CRoPEViT

__version__ = "0.1.0"
__all__ = ["CRoPEViT", "Packed", "attention", "pos_embed", "rope", "viz"]
