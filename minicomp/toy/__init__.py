"""The toy world's models, built by the project's own scripts: the toy LLM (with its tokenizer)
and two toy VFMs, vision-only and SigLIP-like.

The built checkpoints ship in `minicomp/toy/checkpoints/`; `minicomp toy build`
(`build_toy_models`) builds them from scratch: the same bits on the machine and libraries that
each `build_log.json` names (two builds there were identical; another CPU rounds differently)."""
import importlib
from pathlib import Path

CHECKPOINTS = Path(__file__).parent / "checkpoints"
TOY_LLM_PATH = CHECKPOINTS / "llm"
TOY_VFM_PATHS = {kind: CHECKPOINTS / kind for kind in ("vision", "siglip")}  # = TOY_VFMS's kinds (a test checks);
# load: timm.create_model(f"local-dir:{path}", pretrained=True)
_NAMES = {  # name -> the module that defines it, loaded on first use: the paths above need neither
    "build_toy_models": "build", "TOY_LLM": "llm", "build_toy_llm": "llm",  # timm nor transformers
    "CHAT_TEMPLATE": "tokenizer", "SPECIAL_TOKENS": "tokenizer", "build_tokenizer": "tokenizer",
    "ATTRIBUTES": "vfm", "RESOLUTION": "vfm", "TOY_VFMS": "vfm", "build_toy_vfm": "vfm", "create_toy_vit": "vfm",
}
_SUBMODULES = {"build", "llm", "probes", "tokenizer", "vfm"}


def __getattr__(name):
    if name in _NAMES:
        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    if name in _SUBMODULES:  # `toy.vfm` etc., as when this package imported them all
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'minicomp.toy' has no attribute {name!r}")


__all__ = ["ATTRIBUTES", "CHAT_TEMPLATE", "CHECKPOINTS", "RESOLUTION", "SPECIAL_TOKENS", "TOY_LLM", "TOY_LLM_PATH",
           "TOY_VFMS", "TOY_VFM_PATHS", "build_tokenizer", "build_toy_llm", "build_toy_models", "build_toy_vfm",
           "create_toy_vit"]
