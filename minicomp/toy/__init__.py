"""The toy world's models, built by the project's own scripts: the toy LLM (with its tokenizer)
and two toy VFMs, vision-only and SigLIP-like.

The built checkpoints ship in `minicomp/toy/checkpoints/`; `minicomp toy build`
(`build_toy_models`) builds them from scratch: the same bits on the machine and libraries that
each `build_log.json` names (two builds there were identical; another CPU rounds differently)."""
from pathlib import Path

from .build import build_toy_models
from .llm import TOY_LLM, build_toy_llm
from .tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer
from .vfm import ATTRIBUTES, RESOLUTION, TOY_VFMS, build_toy_vfm, create_toy_vit

CHECKPOINTS = Path(__file__).parent / "checkpoints"
TOY_LLM_PATH = CHECKPOINTS / "llm"
TOY_VFM_PATHS = {kind: CHECKPOINTS / kind for kind in TOY_VFMS}  # load: timm.create_model(f"local-dir:{path}", pretrained=True)

__all__ = ["ATTRIBUTES", "CHAT_TEMPLATE", "CHECKPOINTS", "RESOLUTION", "SPECIAL_TOKENS", "TOY_LLM", "TOY_LLM_PATH",
           "TOY_VFMS", "TOY_VFM_PATHS", "build_tokenizer", "build_toy_llm", "build_toy_models", "build_toy_vfm",
           "create_toy_vit"]
