"""`Packed`: several images' tokens laid end to end in one tensor (NaViT-style packing)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def cu_seqlens_from_lengths(lengths: torch.Tensor) -> torch.Tensor:
    """Lengths (B,) -> cumulative offsets (B+1,) int32, starting at 0."""
    return torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)


@dataclass
class Packed:
    """Patch tokens of B images, concatenated in row-major order per image.

    tokens:     (ΣN_i, D) with N_i = h_i * w_i
    grid_hw:    (B, 2) long, the patch grid (h_i, w_i) of each image
    cu_seqlens: (B+1,) int32, image i owns tokens[cu_seqlens[i]:cu_seqlens[i+1]]
    prefix:     (B, n_prefix, D) prefix-token outputs (class/register), or None
    """

    tokens: torch.Tensor
    grid_hw: torch.Tensor
    cu_seqlens: torch.Tensor
    prefix: torch.Tensor | None = None

    @classmethod
    def from_list(cls, tokens: list[torch.Tensor], grid_hw: list[tuple[int, int]]) -> "Packed":
        """Pack a list of (h_i*w_i, D) tensors with their grids."""
        if len(tokens) == 0:
            raise ValueError("Packed.from_list: no images")
        device = tokens[0].device
        grid = torch.tensor(grid_hw, dtype=torch.long, device=device).view(-1, 2)  # (B, 2)
        lengths = grid[:, 0] * grid[:, 1]
        for i, (t, n) in enumerate(zip(tokens, lengths.tolist(), strict=True)):
            if t.shape[0] != n:
                raise ValueError(f"image {i}: {t.shape[0]} tokens, expected h*w = {n} for grid {grid_hw[i]}")
        return cls(torch.cat(tokens, 0), grid, cu_seqlens_from_lengths(lengths))

    @property
    def lengths(self) -> list[int]:
        """Token count per image, as Python ints."""
        return (self.grid_hw[:, 0] * self.grid_hw[:, 1]).tolist()

    def __len__(self) -> int:
        return self.grid_hw.shape[0]

    def split(self) -> list[torch.Tensor]:
        """List of B tensors, each (N_i, D)."""
        return list(self.tokens.split(self.lengths, dim=0))

    def grids(self) -> list[torch.Tensor]:
        """List of B tensors, each (h_i, w_i, D): the tokens back on their patch grid."""
        return [t.view(h, w, -1) for t, (h, w) in zip(self.split(), self.grid_hw.tolist())]  # (h, w, D)
