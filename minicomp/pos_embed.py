"""Learned absolute position embedding (APE) resampled to any patch grid (paper Eq. 1).

The paper writes bilinear interpolation; the authors' code uses bicubic without antialias.
Both are available; the resampling itself is timm's `resample_abs_pos_embed`.

Antialias is off by default, as in the authors' code. Note that timm's own default (and its
`dynamic_img_size` ViTs) use ``antialias=True``, which for bicubic changes the result even when
upsampling (PyTorch's antialiased cubic kernel uses a = -0.5 instead of -0.75), so a timm
dynamic-size ViT and ``CRoPEViT(rope=False)`` differ slightly away from the pretrained grid.
"""
from __future__ import annotations

import math

import torch
from timm.layers import resample_abs_pos_embed

APE_MODES = ("bilinear", "bicubic")


def infer_grid(num_tokens: int) -> tuple[int, int]:
    """Square grid (g, g) holding num_tokens patches, or an error."""
    g = math.isqrt(num_tokens)
    if g * g != num_tokens:
        raise ValueError(f"cannot infer the APE's grid from {num_tokens} tokens; pass src_grid=(h, w)")
    return g, g


def resample_ape(pos_embed: torch.Tensor, grid_hw: tuple[int, int], src_grid: tuple[int, int] | None = None,
                 num_prefix_tokens: int = 0, mode: str = "bicubic", antialias: bool = False) -> torch.Tensor:
    """Resample a learned APE to a new patch grid.

    pos_embed: (1, n_prefix + h0*w0, D); the first n_prefix rows belong to prefix tokens and are kept.
    grid_hw: target (h, w); src_grid: (h0, w0), inferred when square.
    Returns (1, n_prefix + h*w, D), row-major. Identity when grid_hw == src_grid.
    """
    if mode not in APE_MODES:
        raise ValueError(f"APE interpolation mode {mode!r} is not one of {APE_MODES}")
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must be (1, n_prefix + h*w, D), got {tuple(pos_embed.shape)}")
    n_patch = pos_embed.shape[1] - num_prefix_tokens
    src = tuple(src_grid) if src_grid is not None else infer_grid(n_patch)
    if src[0] * src[1] != n_patch:
        raise ValueError(f"src_grid {src} has {src[0] * src[1]} cells but pos_embed holds {n_patch} patch rows")
    h, w = (int(v) for v in grid_hw)
    if h < 1 or w < 1:
        raise ValueError(f"target grid must be positive, got {(h, w)}")
    return resample_abs_pos_embed(pos_embed, new_size=[h, w], old_size=list(src),
                                  num_prefix_tokens=num_prefix_tokens, interpolation=mode, antialias=antialias)


def window_order(h: int, w: int, merge: int = 2) -> torch.Tensor:
    """Row-major patch index of each token when tokens are ordered in merge×merge windows.

    This is the order the authors' code (like Qwen2-VL) feeds tokens in, so that the merger
    sees each window contiguously. Returns (h*w,) long; requires h, w divisible by merge.
    """
    if h % merge or w % merge:
        raise ValueError(f"grid {(h, w)} is not divisible by merge={merge}")
    idx = torch.arange(h * w).view(h // merge, merge, w // merge, merge)  # (h/m, m, w/m, m)
    return idx.permute(0, 2, 1, 3).reshape(-1)  # (h*w,): window by window, row-major inside


def legacy_ape_permutation(h: int, w: int, merge: int = 2) -> torch.Tensor:
    """Which APE row each row-major patch receives in the authors' code (h*w,) long.

    They reorder tokens into windows (`window_order`) but add the raster-order APE, so the
    token at window slot j (patch ``order[j]``) gets APE row j.
    """
    order = window_order(h, w, merge)
    perm = torch.empty_like(order)
    perm[order] = torch.arange(h * w)
    return perm
