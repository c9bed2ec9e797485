"""Learned absolute position embedding (APE) resampled to any patch grid (paper Eq. 1).

The paper writes bilinear interpolation; the authors' code uses bicubic without antialias.
Both are available; the resampling itself is timm's `resample_abs_pos_embed`. `resample_ape_matmul`
is the same linear map as two small matrix products, for CUDA, where PyTorch's bicubic kernel was
88% of the GPU time of a small encoder's step on an H200 (`benchmarks/peers.py --device cuda
--profile`); it equals timm's result to float32 rounding, not bit for bit. On a CPU,
`resample_ape_matmul_backward` keeps timm's forward bit for bit and takes only the gradient
through those matrices.

Antialias is off by default, as in the authors' code. Note that timm's own default (and its
`dynamic_img_size` ViTs) use ``antialias=True``, which for bicubic changes the result even when
upsampling (PyTorch's antialiased cubic kernel uses a = -0.5 instead of -0.75), so a timm
dynamic-size ViT and ``CRoPEViT(rope=False)`` differ slightly away from the pretrained grid.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
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


@lru_cache(maxsize=1024)
def axis_operator(n_src: int, n_dst: int, mode: str = "bicubic") -> torch.Tensor:
    """(n_dst, n_src) float64: the weights with which `F.interpolate` (align_corners=False, no
    antialias) makes each output row of one axis from the input rows. 2-D bilinear and bicubic
    resampling are separable, so the 2-D map is this operator along the rows times the one along
    the columns."""
    basis = torch.eye(n_src, dtype=torch.float64).view(n_src, 1, n_src, 1)  # (n_src, C=1, H=n_src, W=1)
    out = F.interpolate(basis, size=(n_dst, 1), mode=mode, align_corners=False)
    return out.view(n_src, n_dst).T.contiguous()  # (n_dst, n_src)


def resample_ape_matmul(pos_embed: torch.Tensor, grid_hw: tuple[int, int], src_grid: tuple[int, int] | None = None,
                        num_prefix_tokens: int = 0, mode: str = "bicubic", antialias: bool = False) -> torch.Tensor:
    """`resample_ape` as A_h · APE · A_wᵀ (float32, outside autocast, like timm's float32 resampling)."""
    n_patch = pos_embed.shape[1] - num_prefix_tokens
    (h0, w0), (h, w) = (tuple(src_grid) if src_grid is not None else infer_grid(n_patch)), grid_hw
    if (h, w) == (h0, w0) or antialias or mode not in APE_MODES or h0 * w0 != n_patch:  # identity, antialias (not
        # separable this way), or the checks of resample_ape: timm's path
        return resample_ape(pos_embed, grid_hw, src_grid, num_prefix_tokens, mode, antialias)
    dev = pos_embed.device
    a_h = axis_operator(h0, h, mode).to(dev, torch.float32)  # (h, h0)
    a_w = axis_operator(w0, w, mode).to(dev, torch.float32)  # (w, w0)
    grid = pos_embed[0, num_prefix_tokens:].float().view(h0, w0, -1)  # (h0, w0, D)
    with torch.autocast(dev.type, enabled=False):
        out = (a_h @ grid.flatten(1)).view(h, w0, -1)  # (h, w0, D): rows resampled
        out = (a_w @ out.transpose(0, 1).flatten(1)).view(w, h, -1).transpose(0, 1)  # (h, w, D): columns too
    patch = out.reshape(1, h * w, -1).to(pos_embed.dtype)  # (1, h*w, D), row-major
    return torch.cat([pos_embed[:, :num_prefix_tokens], patch], dim=1)


class _ResampleAPE(torch.autograd.Function):
    """`resample_ape`'s result (timm's, bit for bit), differentiated as the linear map it is."""

    @staticmethod
    def forward(ctx, pos_embed, grid_hw, src_grid, num_prefix_tokens, mode):
        ctx.meta = tuple(grid_hw), tuple(src_grid), num_prefix_tokens, mode, pos_embed.dtype
        return resample_ape(pos_embed, grid_hw, src_grid, num_prefix_tokens, mode)

    @staticmethod
    def backward(ctx, grad):  # grad: (1, n_prefix + h*w, D)
        (h, w), (h0, w0), n_prefix, mode, dtype = ctx.meta
        acc = torch.promote_types(grad.dtype, torch.float32)  # float32, as timm's resampling (float64 stays)
        a_h = axis_operator(h0, h, mode).to(grad.device, acc)  # (h, h0)
        a_w = axis_operator(w0, w, mode).to(grad.device, acc)  # (w, w0)
        g = grad[0, n_prefix:].to(acc).view(h, w, -1)  # (h, w, D)
        g = (a_h.T @ g.flatten(1)).view(h0, w, -1)  # (h0, w, D): rows back to the source grid
        g = (a_w.T @ g.transpose(0, 1).flatten(1)).view(w0, h0, -1).transpose(0, 1)  # (h0, w0, D): columns too
        patch = g.reshape(1, h0 * w0, -1).to(dtype)  # (1, h0*w0, D), row-major
        return torch.cat([grad[:, :n_prefix], patch], dim=1), None, None, None, None


def resample_ape_matmul_backward(pos_embed: torch.Tensor, grid_hw: tuple[int, int],
                                 src_grid: tuple[int, int] | None = None, num_prefix_tokens: int = 0,
                                 mode: str = "bicubic", antialias: bool = False) -> torch.Tensor:
    """`resample_ape` (timm's forward, bit for bit), whose gradient is computed as A_hᵀ · G · A_w
    instead of by PyTorch's bicubic backward kernel: equal to float32 rounding, and on a CPU about
    twice as fast forward + backward for the toy's grids (18.7 against 8.4 ms for eight grids of
    200 to 256 patches from an 8 × 8 APE at width 128, one thread). Identity and antialias take
    timm's path, gradient included."""
    n_patch = pos_embed.shape[1] - num_prefix_tokens
    src = tuple(src_grid) if src_grid is not None else infer_grid(n_patch)
    if (tuple(grid_hw) == src or antialias or mode not in APE_MODES or src[0] * src[1] != n_patch
            or not pos_embed.requires_grad):  # identity, antialias, bad input (timm's checks), or no gradient
        return resample_ape(pos_embed, grid_hw, src_grid, num_prefix_tokens, mode, antialias)
    return _ResampleAPE.apply(pos_embed, tuple(int(v) for v in grid_hw), src, num_prefix_tokens, mode)


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
