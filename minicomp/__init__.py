"""minicomp: a readable reference implementation of CoMP (arXiv 2503.18931)."""
from . import align, attention, pos_embed, rope, viz
from .align import alignment_loss, alignment_targets, sinkhorn_knopp
from .packed import Packed
from .vision import CRoPEViT

__version__ = "0.1.0"
__all__ = ["CRoPEViT", "Packed", "align", "alignment_loss", "alignment_targets", "attention", "pos_embed", "rope",
           "sinkhorn_knopp", "viz"]
