"""The toy world's models, built by the project's own scripts: the tokenizer and the LLM (so far).

The built checkpoints ship in `minicomp/toy/checkpoints/`; `minicomp toy build` remakes them."""
from pathlib import Path

from .llm import TOY_LLM, build_toy_llm
from .tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer

CHECKPOINTS = Path(__file__).parent / "checkpoints"
TOY_LLM_PATH = CHECKPOINTS / "llm"

__all__ = ["CHAT_TEMPLATE", "CHECKPOINTS", "SPECIAL_TOKENS", "TOY_LLM", "TOY_LLM_PATH", "build_tokenizer", "build_toy_llm"]
