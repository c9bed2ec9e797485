"""minicomp: a readable reference implementation of CoMP (arXiv 2503.18931)."""
from . import align, attention, pos_embed, rope, viz
from .align import alignment_loss, alignment_targets, sinkhorn_knopp
from .merger import PatchMerger
from .packed import Packed
from .vision import CRoPEViT

__version__ = "0.1.0"
_LAZY = {"CoMPConfig", "CoMPModel", "CoMPOutput"}  # they import transformers: loaded on first use


def __getattr__(name):
    if name in _LAZY:
        from . import model
        return getattr(model, name)
    raise AttributeError(f"module 'minicomp' has no attribute {name!r}")


__all__ = ["CRoPEViT", "CoMPConfig", "CoMPModel", "CoMPOutput", "Packed", "PatchMerger", "align", "alignment_loss",
           "alignment_targets", "attention", "pos_embed", "rope", "sinkhorn_knopp", "viz"]
