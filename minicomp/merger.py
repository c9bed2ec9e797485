"""The 2×2 patch merger of Eq. 5: the projection from the ViT's tokens to the LLM's input space.

LayerNorm over the vision width, then each merge×merge block of neighbouring patch tokens is
concatenated (merge²·D) and sent through Linear -> GELU -> Linear to the LLM width. A grid of
h×w patches becomes (h/m)×(w/m) LLM tokens, still row-major, so output token i is exactly the
i-th block in reading order. This is the layout of Qwen2-VL's merger and the authors' code.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .packed import Packed


def merge_blocks(x: torch.Tensor, h: int, w: int, merge: int = 2) -> torch.Tensor:
    """Row-major (h·w, D) tokens of one image -> (h/m · w/m, m·m·D): each row one m×m block,
    its tokens in row-major order within the block."""
    D = x.shape[-1]
    x = x.view(h // merge, merge, w // merge, merge, D)  # (h/m, m, w/m, m, D)
    return x.permute(0, 2, 1, 3, 4).reshape((h // merge) * (w // merge), merge * merge * D)  # (h/m·w/m, m²D)


class PatchMerger(nn.Module):
    """Eq. 5: `mc.Packed` of vision tokens (width vision_dim) -> `mc.Packed` of LLM tokens
    (width llm_dim) with every grid divided by `merge`."""

    def __init__(self, vision_dim: int, llm_dim: int, merge: int = 2, eps: float = 1e-6):
        super().__init__()
        self.vision_dim, self.llm_dim, self.merge = vision_dim, llm_dim, merge
        hidden = vision_dim * merge * merge
        self.norm = nn.LayerNorm(vision_dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, llm_dim))

    def forward(self, packed: Packed) -> Packed:
        if packed.tokens.shape[-1] != self.vision_dim:
            raise ValueError(f"PatchMerger: tokens have width {packed.tokens.shape[-1]}, expected {self.vision_dim}")
        grids = [tuple(g) for g in packed.grid_hw.tolist()]
        for i, (h, w) in enumerate(grids):
            if h % self.merge or w % self.merge:
                raise ValueError(f"image {i}: patch grid {h}x{w} is not divisible by merge={self.merge}; "
                                 f"resize images to multiples of patch × merge (minicomp.data does)")
        x = self.norm(packed.tokens)  # (ΣN_i, D)
        blocks = [merge_blocks(t, h, w, self.merge) for t, (h, w) in zip(x.split(packed.lengths), grids)]
        out = self.mlp(torch.cat(blocks))  # (ΣN_i / m², llm_dim)
        m = self.merge
        return Packed.from_list(list(out.split([(h // m) * (w // m) for h, w in grids])),
                                [(h // m, w // m) for h, w in grids])

    def extra_repr(self) -> str:
        return f"vision_dim={self.vision_dim}, llm_dim={self.llm_dim}, merge={self.merge}"
