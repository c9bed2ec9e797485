"""Figures for position embeddings: the learned APE (ch. 01), RoPE-2D (ch. 02), C-RoPE in a
packed batch and the authors' APE-order quirk (ch. 03). Each returns arrays or a Figure."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from ..packed import Packed
from ..pos_embed import legacy_ape_permutation, resample_ape, window_order
from ..rope import apply_rope_2d, grid_positions, rope_frequencies


# ---- learned APE (chapter 01) ------------------------------------------------------------
def ape_similarity(pos_embed: torch.Tensor, grid_hw: tuple[int, int], src_grid: tuple[int, int] | None = None,
                   num_prefix_tokens: int = 0, mode: str = "bicubic") -> torch.Tensor:
    """Cosine similarity between every pair of patch APEs after resampling: (h*w, h*w)."""
    ape = resample_ape(pos_embed.detach().float(), grid_hw, src_grid, num_prefix_tokens, mode)
    patches = F.normalize(ape[0, num_prefix_tokens:], dim=-1)  # (N, D)
    return patches @ patches.T


def ape_similarity_map(pos_embed, grid_hw, patch: tuple[int, int], src_grid=None, num_prefix_tokens=0,
                       mode="bicubic") -> torch.Tensor:
    """Similarity of one patch's APE to all others, on the grid: (h, w)."""
    h, w = grid_hw
    r, c = min(patch[0], h - 1), min(patch[1], w - 1)
    ape = resample_ape(pos_embed.detach().float(), grid_hw, src_grid, num_prefix_tokens, mode)
    patches = F.normalize(ape[0, num_prefix_tokens:], dim=-1)  # (N, D)
    return (patches @ patches[r * w + c]).view(h, w)  # (h, w)


def plot_ape_similarity(pos_embed, grid_hw, patch=(0, 0), src_grid=None, num_prefix_tokens=0, mode="bicubic"):
    """Widget callback: the similarity map of one patch, that patch marked. Returns a Figure."""
    m = ape_similarity_map(pos_embed, grid_hw, patch, src_grid, num_prefix_tokens, mode)
    h, w = grid_hw
    r, c = min(patch[0], h - 1), min(patch[1], w - 1)
    fig, ax = plt.subplots(figsize=(4.5, 4.5 * h / max(w, 1) + 0.5))
    im = ax.imshow(m.numpy(), cmap="viridis", vmin=-1, vmax=1)
    ax.plot(c, r, "r+", ms=12, mew=2)
    ax.set_title(f"APE cosine similarity to patch ({r}, {c})\ngrid {h}×{w}, {mode}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig


def plot_ape_similarity_grid(pos_embed, grid_hw, src_grid=None, num_prefix_tokens=0, mode="bicubic", step=1):
    """The classic ViT figure: one small similarity map per patch (every `step`-th row/col)."""
    h, w = grid_hw
    sim = ape_similarity(pos_embed, grid_hw, src_grid, num_prefix_tokens, mode).view(h, w, h, w)
    rows, cols = range(0, h, step), range(0, w, step)
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(0.8 * len(cols), 0.8 * len(rows)), squeeze=False)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            axes[i][j].imshow(sim[r, c].numpy(), cmap="viridis", vmin=-1, vmax=1)
            axes[i][j].axis("off")
    fig.suptitle(f"APE similarity, grid {h}×{w} ({mode})")
    return fig


# ---- RoPE-2D (chapter 02) ------------------------------------------------------------------
def rope_spectrum(head_dim: int, theta: float = 10000.0) -> dict[str, np.ndarray]:
    """Per-axis frequencies (rad/patch) and wavelengths (patches) of RoPE-2D."""
    f = rope_frequencies(head_dim, theta).numpy()
    return {"frequency": f, "wavelength": 2 * np.pi / f}


def rope_relative_scores(head_dim: int = 64, theta: float = 10000.0, max_offset: int = 16,
                         q: torch.Tensor | None = None, k: torch.Tensor | None = None) -> torch.Tensor:
    """q·k after RoPE-2D for a key at every offset (Δrow, Δcol) in [-M, M]² from the query:
    (2M+1, 2M+1). The query sits at the centre of a (2M+1)² grid (only offsets matter).
    q and k default to all-ones vectors scaled to unit norm."""
    q = torch.ones(head_dim) / head_dim ** 0.5 if q is None else q
    k = torch.ones(head_dim) / head_dim ** 0.5 if k is None else k
    n = 2 * max_offset + 1
    qr = apply_rope_2d(q.expand(n * n, head_dim), (n, n), theta)  # (n*n, Dh), query placed at the centre below
    kr = apply_rope_2d(k.expand(n * n, head_dim), (n, n), theta)
    centre = max_offset * n + max_offset
    return (kr @ qr[centre]).view(n, n)  # score for key at centre + (Δrow, Δcol)


def rope_scores_at_offset(d_row: int, d_col: int, grid_hw=(8, 8), head_dim=64, theta=10000.0,
                          seed: int = 0) -> torch.Tensor:
    """q·k for a key at (r + Δrow, c + Δcol), with the query at every (r, c) of a grid: (h, w).

    Random unit-norm q, k. RoPE makes this map constant: the score sees only the offset."""
    g = torch.Generator().manual_seed(seed)
    q, k = F.normalize(torch.randn(2, head_dim, generator=g), dim=-1)
    h, w = grid_hw
    H, W = h + abs(d_row), w + abs(d_col)  # a grid large enough to hold both ends
    qr = apply_rope_2d(q.expand(H * W, head_dim), (H, W), theta).view(H, W, head_dim)
    kr = apply_rope_2d(k.expand(H * W, head_dim), (H, W), theta).view(H, W, head_dim)
    r0, c0 = max(0, -d_row), max(0, -d_col)
    qs = qr[r0:r0 + h, c0:c0 + w]  # (h, w, Dh)
    ks = kr[r0 + d_row:r0 + d_row + h, c0 + d_col:c0 + d_col + w]  # (h, w, Dh)
    return (qs * ks).sum(-1)


def plot_rope_scores(theta: float = 10000.0, d_row: int = 3, d_col: int = -2, head_dim: int = 64,
                     max_offset: int = 16):
    """Widget callback: score vs offset (left) and, at the chosen offset, across absolute
    positions (right, constant). Returns a Figure."""
    rel = rope_relative_scores(head_dim, theta, max_offset)
    at = rope_scores_at_offset(d_row, d_col, (8, 8), head_dim, theta)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    ext = (-max_offset - 0.5, max_offset + 0.5, max_offset + 0.5, -max_offset - 0.5)
    im = a.imshow(rel.numpy(), cmap="RdBu_r", extent=ext, vmin=-1, vmax=1)
    a.plot(d_col, d_row, "k+", ms=14, mew=2)
    a.set(title=f"q·k vs offset, θ={theta:g} (all-ones q, k)", xlabel="Δcol", ylabel="Δrow")
    fig.colorbar(im, ax=a, fraction=0.046)
    v = at.abs().max().item() or 1.0
    im = b.imshow(at.numpy(), cmap="RdBu_r", vmin=-v, vmax=v)
    b.set(title=f"random q·k at offset ({d_row}, {d_col})\nfor every query position: spread "
                f"{(at.max() - at.min()).item():.1e}", xlabel="query col", ylabel="query row")
    fig.colorbar(im, ax=b, fraction=0.046)
    fig.tight_layout()
    return fig


def plot_rope_spectrum(head_dim: int = 64, theta: float = 10000.0):
    """Wavelength (in patches) of each rotary frequency pair, per axis. Returns a Figure."""
    s = rope_spectrum(head_dim, theta)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy(s["wavelength"], "o-")
    ax.set(xlabel="frequency index j (same for rows and columns)", ylabel="wavelength 2π/f_j (patches)",
           title=f"RoPE-2D spectrum: head_dim={head_dim}, θ={theta:g}")
    ax.grid(True, which="both", alpha=0.3)
    return fig


# ---- C-RoPE in a packed batch (chapter 03) -----------------------------------------------
def packed_attention_mask(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Which token may attend to which in a packed sequence: (T, T) bool, block diagonal."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).cpu()
    doc = torch.repeat_interleave(torch.arange(len(lengths)), lengths)  # (T,)
    return doc[:, None] == doc[None, :]


def plot_packed_batch(images: list[torch.Tensor], packed: Packed, patch_size: int):
    """The images with their patch grids (top) and the packed attention mask (bottom)."""
    B = len(images)
    max_h, max_w = max(i.shape[1] for i in images), max(i.shape[2] for i in images)
    fig = plt.figure(figsize=(3 * B, 6.5))
    for i, img in enumerate(images):
        ax = fig.add_subplot(2, B, i + 1)
        x = img.detach().float()
        x = (x - x.min()) / (x.max() - x.min() + 1e-8)
        ax.imshow(x.permute(1, 2, 0).numpy())
        h, w = packed.grid_hw[i].tolist()
        H, W = img.shape[1:]
        ax.hlines([r * patch_size - 0.5 for r in range(1, h)], -0.5, W - 0.5, color="k", lw=0.3, alpha=0.4)
        ax.vlines([c * patch_size - 0.5 for c in range(1, w)], -0.5, H - 0.5, color="k", lw=0.3, alpha=0.4)
        ax.set(xlim=(-0.5, max_w - 0.5), ylim=(max_h - 0.5, -0.5))  # same pixel scale in every panel
        ax.set_title(f"image {i}: H×W = {H}×{W} px\ngrid {h}×{w} = {h * w} tokens", fontsize=9)
        ax.axis("off")
    ax = fig.add_subplot(2, 1, 2)
    ax.imshow(packed_attention_mask(packed.cu_seqlens).numpy(), cmap="Greys", interpolation="nearest")
    ax.set(title=f"packed attention mask: {packed.tokens.shape[0]} tokens, no image sees another",
           xlabel="key token", ylabel="query token")
    fig.tight_layout()
    return fig


def legacy_ape_displacement(h: int, w: int, merge: int = 2) -> torch.Tensor:
    """Distance (in patches) between each patch and the position whose APE the authors' code
    gives it (2×2-window token order, raster-order APE): (h, w) float."""
    pos = grid_positions(h, w).float()  # (N, 2)
    return (pos[legacy_ape_permutation(h, w, merge)] - pos).norm(dim=-1).view(h, w)


def plot_legacy_ape_order(h: int = 6, w: int = 8, merge: int = 2):
    """Token order in 2×2 windows (left) and how far each patch's APE is from home (right)."""
    order = window_order(h, w, merge)
    slot = torch.empty_like(order)
    slot[order] = torch.arange(h * w)  # window slot of each row-major patch
    disp = legacy_ape_displacement(h, w, merge)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2 * h / w + 0.8))
    rows, cols = torch.arange(h)[:, None] // merge, torch.arange(w)[None, :] // merge
    a.imshow(((rows + cols) % 2).numpy(), cmap="Pastel1")  # checkerboard of merge×merge windows
    for r in range(h):
        for c in range(w):
            a.text(c, r, int(slot[r * w + c]), ha="center", va="center", fontsize=8)
    a.set_title("token order fed to the ViT (2×2 windows)\n= APE row each patch receives")
    im = b.imshow(disp.numpy(), cmap="magma")
    b.set_title(f"distance to the APE's true position (patches)\n"
                f"{(disp > 0).float().mean().item():.0%} of patches displaced")
    fig.colorbar(im, ax=b, fraction=0.046)
    for ax in (a, b):
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout()
    return fig
