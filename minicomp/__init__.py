"""minicomp: a readable reference implementation of CoMP (arXiv 2503.18931).

Every name here is loaded on first use (PEP 562), so that `import minicomp` and the command line
start at once: timm, transformers and matplotlib take several seconds to import, and a process that
only launches others, or prints help, needs none of them."""
import importlib
import importlib.util

__version__ = "0.1.0"
_MODULES = {"align", "attention", "pos_embed", "rope", "viz"}
_NAMES = {  # name -> the module that defines it
    "alignment_loss": "align", "alignment_targets": "align", "sinkhorn_knopp": "align",
    "PatchMerger": "merger", "Packed": "packed", "CRoPEViT": "vision",
    "CoMPConfig": "model", "CoMPModel": "model", "CoMPOutput": "model",
}


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    if name in _MODULES or not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
        return importlib.import_module(f".{name}", __name__)  # any module, as `import minicomp.data` would
    raise AttributeError(f"module 'minicomp' has no attribute {name!r}")


__all__ = ["CRoPEViT", "CoMPConfig", "CoMPModel", "CoMPOutput", "Packed", "PatchMerger", "align", "alignment_loss",
           "alignment_targets", "attention", "pos_embed", "rope", "sinkhorn_knopp", "viz"]


def __dir__():
    return sorted({*globals(), *__all__})
