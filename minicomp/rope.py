"""2D rotary position embedding (RoPE-2D) for a grid of image patches (paper Eq. 3: (R q)ᵀ (R k)).

Layout (the authors' code, so that released CoMP weights load): with head dimension Dh,
each axis gets Dh/4 frequencies ``θ^(-2j/(Dh/2))``; the angles of one token are
``[row·f_0 … row·f_{Dh/4-1}, col·f_0 … col·f_{Dh/4-1}]`` (Dh/2 values), duplicated to Dh
and applied with *rotate-half* pairing: channel i rotates together with channel i + Dh/2.
Positions are integer patch indices from 0, row-major.
"""
from __future__ import annotations

from functools import lru_cache

import torch


def rope_frequencies(head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Per-axis inverse frequencies (head_dim/4,) in float32."""
    if head_dim % 4 != 0:
        raise ValueError(f"RoPE-2D needs head_dim divisible by 4, got {head_dim}")
    axis_dim = head_dim // 2  # channels given to one axis
    return 1.0 / theta ** (torch.arange(0, axis_dim, 2, dtype=torch.float32) / axis_dim)


def grid_positions(h: int, w: int) -> torch.Tensor:
    """Row-major (row, col) index of every patch: (h*w, 2) long."""
    rows = torch.arange(h).view(h, 1).expand(h, w)  # (h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)  # (h, w)
    return torch.stack([rows, cols], dim=-1).view(h * w, 2)  # (h*w, 2)


@lru_cache(maxsize=256)
def rope_angles_2d(h: int, w: int, head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Rotation angles of an (h, w) patch grid: (h*w, head_dim/2) float32, row-major.

    Cached per (grid, head_dim, θ); treat the result as read-only.
    """
    freqs = rope_frequencies(head_dim, theta)  # (Dh/4,)
    pos = grid_positions(h, w).to(torch.float32)  # (N, 2)
    angles = pos[:, :, None] * freqs[None, None, :]  # (N, 2, Dh/4): [row·f, col·f]
    return angles.reshape(h * w, head_dim // 2)  # (N, Dh/2) = [row freqs | col freqs]


def rope_cos_sin(h: int, w: int, head_dim: int, theta: float = 10000.0,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for `apply_rotary`, each (h*w, head_dim) float32, cached per grid and device."""
    return _cos_sin(h, w, head_dim, float(theta), str(torch.device(device or "cpu")))


@lru_cache(maxsize=256)
def _cos_sin(h: int, w: int, head_dim: int, theta: float, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    angles = rope_angles_2d(h, w, head_dim, theta)
    emb = torch.cat([angles, angles], dim=-1)  # (N, Dh): duplicated for rotate-half pairing
    return emb.cos().to(device), emb.sin().to(device)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dim, halves of size Dh/2."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., Dh) by tables cos/sin broadcastable to x; computed in float32.

    Eq. 3: R q and R k, with R block-diagonal 2×2 rotations.
    """
    xf = x.float()
    out = xf * cos + rotate_half(xf) * sin
    return out.to(x.dtype)


def apply_rope_2d(x: torch.Tensor, grid_hw: tuple[int, int] | torch.Tensor,
                  theta: float = 10000.0) -> torch.Tensor:
    """Apply RoPE-2D to the tokens of ONE image.

    x: (..., N, head_dim) with N = h*w in row-major order; grid_hw: (h, w).
    Returns a tensor of the same shape and dtype.
    """
    h, w = (int(v) for v in (grid_hw.tolist() if torch.is_tensor(grid_hw) else grid_hw))
    if x.shape[-2] != h * w:
        raise ValueError(f"apply_rope_2d: x has {x.shape[-2]} tokens, expected h*w = {h}*{w} = {h * w}")
    cos, sin = rope_cos_sin(h, w, x.shape[-1], theta, device=x.device)  # (N, Dh) each
    return apply_rotary(x, cos, sin)
