"""The toy world's models, built by the project's own scripts: the tokenizer (so far)."""
from .tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tokenizer"]
