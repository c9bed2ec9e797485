"""Per-patch ground truth and legibility of toy-world samples, at whatever size an image is
resized to: how large its glyphs are in patches (`glyph_patches`), which glyph or word each patch
holds (`glyph_patch_labels`, `word_patch_labels`), and which part of the image (`segment_patch_labels`:
text, bar, a shape, background). Probes of a VFM's patch tokens are trained on these labels."""
from __future__ import annotations

import numpy as np

from .synthetic import GLYPHS, SEGMENTS, VOCAB, segmentation


def glyph_size(meta: dict) -> tuple[float, float]:
    """Median (height, width) in native pixels of the sample's drawn glyph boxes; (0, 0) without text."""
    g = meta.get("glyphs") or []
    if not g:
        return 0.0, 0.0
    return float(np.median([b[4] - b[2] for b in g])), float(np.median([b[3] - b[1] for b in g]))


def glyph_patches(meta: dict, size_hw: tuple[int, int], patch: int) -> tuple[float, float]:
    """Median glyph (height, width) in patches once the image is resized to size_hw = (H, W)."""
    gh, gw = glyph_size(meta)
    W, H = meta["size"]
    return gh * size_hw[0] / H / patch, gw * size_hw[1] / W / patch


def glyph_patch_labels(meta: dict, size_hw: tuple[int, int], patch: int) -> np.ndarray:
    """(h, w) int per-patch labels for an image resized to size_hw: the index in GLYPHS of the
    glyph whose box centre lies in that patch (the largest box if several), -1 for none."""
    H, W = size_hw
    sx, sy = W / meta["size"][0], H / meta["size"][1]
    lab, area = np.full((H // patch, W // patch), -1, dtype=np.int64), np.zeros((H // patch, W // patch))
    for ch, x0, y0, x1, y1 in meta.get("glyphs") or []:
        r, c = int((y0 + y1) / 2 * sy // patch), int((x0 + x1) / 2 * sx // patch)
        a = (x1 - x0) * (y1 - y0)
        if 0 <= r < lab.shape[0] and 0 <= c < lab.shape[1] and a > area[r, c]:
            lab[r, c], area[r, c] = GLYPHS.index(ch), a
    return lab


def word_patch_labels(meta: dict, size_hw: tuple[int, int], patch: int) -> np.ndarray:
    """(h, w) int per-patch labels for an image resized to size_hw: the index in VOCAB of the word
    whose box holds the patch's centre, -1 for none."""
    H, W = size_hw
    h, w = H // patch, W // patch
    cy = (np.arange(h) + 0.5) * patch * meta["size"][1] / H  # patch centres in native pixels
    cx = (np.arange(w) + 0.5) * patch * meta["size"][0] / W
    lab = np.full((h, w), -1, dtype=np.int64)
    for word, x0, y0, x1, y1 in meta.get("words") or []:
        rows, cols = (cy >= y0) & (cy <= y1), (cx >= x0) & (cx <= x1)
        lab[np.ix_(rows, cols)] = VOCAB.index(word)
    return lab


def segment_patch_labels(meta: dict, size_hw: tuple[int, int], patch: int, mask: np.ndarray | None = None) -> np.ndarray:
    """(h, w) int per-patch segmentation for an image resized to size_hw: the commonest
    non-background class (SEGMENTS) among the patch's pixels, 0 (background) if it has none.
    `mask`: the sample's `segmentation(meta)`, if already rendered."""
    mask = segmentation(meta) if mask is None else mask
    H, W = size_hw
    h, w = H // patch, W // patch
    rows = (np.arange(h * patch) * mask.shape[0] / (h * patch)).astype(int)  # nearest native row per pixel
    cols = (np.arange(w * patch) * mask.shape[1] / (w * patch)).astype(int)
    grid = mask[np.ix_(rows, cols)].reshape(h, patch, w, patch).transpose(0, 2, 1, 3).reshape(h, w, -1)  # (h, w, p²)
    counts = np.stack([(grid == c).sum(-1) for c in range(len(SEGMENTS))], -1)  # (h, w, classes)
    counts[..., 0] = 0
    return np.where(counts.max(-1) > 0, counts.argmax(-1), 0)


def legibility(n: int = 150, split: str = "val", patch: int = 8, merge: int = 2, budgets: tuple[int, ...] = (16, 64, 256),
               squares: tuple[int, ...] = (64, 128), seed: int = 0) -> dict:
    """How large the world's glyphs are at each resolution, in patches: for n documents and n
    charts, the median glyph height and width and the fraction of images whose glyphs are below
    half a patch on at least one axis, at native token budgets (merged tokens) and fixed squares.
    -> {family: {"native ≤N tokens" | "fixed Spx": {"height", "width", "below_half"}}}."""
    from .resize import budget_size
    from .synthetic import make_sample

    out = {}
    for fam in ("document", "chart"):
        metas = [make_sample(seed, split, i, family=fam).meta for i in range(n)]
        sizes = {f"native ≤{b} tokens": lambda m, b=b: budget_size(m["size"][1], m["size"][0], patch, merge, 4, b)
                 for b in budgets}
        sizes.update({f"fixed {s}px": lambda m, s=s: (s, s) for s in squares})
        out[fam] = {}
        for label, size_of in sizes.items():
            g = np.array([glyph_patches(m, size_of(m), patch) for m in metas])  # (n, 2): height, width
            out[fam][label] = {"height": float(np.median(g[:, 0])), "width": float(np.median(g[:, 1])),
                               "below_half": float((g.min(1) < 0.5).mean())}
    return out
