"""The position-id rule: where each token of a spliced sequence sits for the LLM's rotary embedding.

- "1d" (LLaVA, minicomp's default): one position per token, the image's tokens counted like text,
  by the LLM itself; nothing is passed.
- "mrope" (Qwen2-VL's M-RoPE; the authors' CoMP-MM models): three positions (t, h, w) per token.
  Text counts up on all three axes; an image's merged tokens take their row and column in the
  image's merged grid, from the position after the text before it; the text after the image
  resumes one past the grid's largest position. The LLM's own `get_rope_index` computes them
  (transformers' Qwen2-VL family); minicomp only describes the images to it.

A model is a configuration of the same parts: the rule is a setting (`CoMPConfig.positions`),
and the same two calls serve every rule.
"""
from __future__ import annotations

import torch
import torch.nn as nn

RULES = ("1d", "mrope")


def check_rule(rule: str, llm: nn.Module, merge: int) -> None:
    """The LLM can follow the rule: a ValueError that names what is missing."""
    if rule not in RULES:
        raise ValueError(f"model.positions={rule!r}, expected one of {RULES}")
    if rule == "1d":
        return
    if not hasattr(llm.base_model, "get_rope_index"):
        raise ValueError(f"model.positions='mrope' needs an LLM that computes M-RoPE positions (get_rope_index, "
                         f"transformers' Qwen2-VL family); {type(llm).__name__} has none")
    vision = getattr(llm.config, "vision_config", None)
    size = getattr(vision, "spatial_merge_size", None)
    if size != merge:
        raise ValueError(f"model.positions='mrope': the LLM's vision_config.spatial_merge_size is {size}, but the "
                         f"merger merges {merge}×{merge}; the image grids would be placed wrongly")


def image_grid_thw(grid_hw: torch.Tensor, merge: int) -> torch.Tensor:
    """(n, 2) merged grids -> (n, 3) Qwen2-VL's (t, h, w) in patches before merging; t = 1 for images."""
    return torch.cat([torch.ones_like(grid_hw[:, :1]), grid_hw * merge], 1)  # (n, 3)


def position_ids(rule: str, llm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 image_token_id: int, grid_hw: torch.Tensor | None, merge: int) -> torch.Tensor | None:
    """The position ids to pass with the spliced embeddings: None for "1d" (the LLM counts), (3, B, L)
    for "mrope". grid_hw: (n, 2) the merged grid of each image, in the order of their tokens."""
    if rule == "1d":
        return None
    thw = None if grid_hw is None else image_grid_thw(grid_hw.to(input_ids.device), merge)
    pos, _ = llm.base_model.get_rope_index(input_ids, (input_ids == image_token_id).int(), image_grid_thw=thw,
                                           attention_mask=attention_mask)
    return pos  # (3, B, L)


def generation_inputs(rule: str, input_ids: torch.Tensor, image_token_id: int, grid_hw: torch.Tensor | None,
                      merge: int) -> dict:
    """What `llm.generate` needs beyond the embeddings to place the prompt's and each new token's
    positions: nothing for "1d"; the prompt's ids, its image tokens and their grids for "mrope"
    (the LLM computes the positions and keeps the offset)."""
    if rule == "1d" or grid_hw is None:
        return {}
    return {"input_ids": input_ids, "mm_token_type_ids": (input_ids == image_token_id).int(),
            "image_grid_thw": image_grid_thw(grid_hw.to(input_ids.device), merge)}
