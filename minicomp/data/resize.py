"""Image sizing for the ViT: native resolution within a token budget, or a fixed square; and
normalisation with the VFM's own mean and std."""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from .images import MAX_ASPECT


def budget_size(height: int, width: int, patch: int, merge: int = 2, min_tokens: int = 4,
                max_tokens: int = 3000) -> tuple[int, int]:
    """(H, W) closest to (height, width) with the aspect ratio kept, each side a multiple of
    patch × merge, and min_tokens ≤ (H / (patch·merge)) · (W / (patch·merge)) ≤ max_tokens
    (tokens counted after the merger), as in the authors' smart resize."""
    if height < 1 or width < 1:
        raise ValueError(f"image size {height}x{width} must be positive")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(f"image size {height}x{width}: aspect ratio above {MAX_ASPECT}:1")
    if not 1 <= min_tokens <= max_tokens:
        raise ValueError(f"need 1 <= min_tokens <= max_tokens, got {min_tokens}, {max_tokens}")
    f = patch * merge
    h, w = max(f, round(height / f) * f), max(f, round(width / f) * f)
    if h * w > max_tokens * f * f:  # too many: shrink by the same factor on both sides
        beta = math.sqrt(height * width / (max_tokens * f * f))
        h, w = max(f, math.floor(height / beta / f) * f), max(f, math.floor(width / beta / f) * f)
    elif h * w < min_tokens * f * f:  # too few: grow
        beta = math.sqrt(min_tokens * f * f / (height * width))
        h, w = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
    if not min_tokens <= (h // f) * (w // f) <= max_tokens:  # rounding left it just outside:
        h, w = _closest_grid(height / width, min_tokens, max_tokens)  # search the grids in budget
        h, w = h * f, w * f
    return h, w


def _closest_grid(aspect: float, min_tokens: int, max_tokens: int) -> tuple[int, int]:
    """The (rows, cols) with min ≤ rows·cols ≤ max whose rows/cols is closest to `aspect`."""
    best, target = None, math.log(aspect)
    for rows in range(1, max_tokens + 1):
        lo, hi = -(-min_tokens // rows), max_tokens // rows  # cols range for this many rows
        if lo > hi:
            continue
        cols = min(max(round(rows / aspect), lo), hi)
        err = abs(math.log(rows / cols) - target)
        if best is None or err < best[0]:
            best = (err, rows, cols)
    return best[1], best[2]


def resize_to_budget(image: Image.Image, patch: int, merge: int = 2, min_tokens: int = 4,
                     max_tokens: int = 3000) -> Image.Image:
    """Native-resolution resize: see `budget_size`. Returns an RGB PIL image."""
    H, W = budget_size(image.height, image.width, patch, merge, min_tokens, max_tokens)
    image = image.convert("RGB")
    return image if (image.height, image.width) == (H, W) else image.resize((W, H), Image.BICUBIC)


def resize_fixed(image: Image.Image, size: int) -> Image.Image:
    """Fixed square resize (Stage I and Stage II-fixed): the aspect ratio is not kept."""
    return image.convert("RGB").resize((size, size), Image.BICUBIC)


def to_tensor(image: Image.Image, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> torch.Tensor:
    """PIL -> (3, H, W) float32, normalised with the VFM's mean and std (timm's pretrained_cfg)."""
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
