"""Linear probes of a toy VFM's frozen features: what it knows, at its own 64 px and at native
resolution (APE interpolation alone, no RoPE), against the same ViT with random weights.

- attribute probes: one multinomial logistic regression per ground-truth attribute on the ViT's
  own pooled embedding. Four are layout (family, count, left_colour, longest_third) and two need
  reading (a document's title, the letter under a chart's longest bar).
- patch probes: logistic regression on single patch tokens, predicting which character's box
  centre lies in that patch ("glyph"), which word the patch lies in ("word"), and which part of
  the image it shows ("segment": text, bar, a shape kind, background; rendered ground truth).
  They measure legibility where it matters, in the tokens the merger passes on.
- `AttentiveProbe`: attentive pooling over the patch tokens then a linear classifier, the
  paper's kind of probe, for the attributes (`measure_probes(attentive=True)`).
"""
from __future__ import annotations

from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.resize import resize_fixed, resize_to_budget, to_tensor
from ..data.labels import glyph_patch_labels, segment_patch_labels, word_patch_labels
from ..data.synthetic import COLORS, FAMILIES, LABELS, SEGMENTS, WORDS, make_sample
from ..vision import CRoPEViT

RESOLUTION = 64  # the toy VFMs' pretraining size
NATIVE_PATCHES = 256  # the tiny preset's native budget: 64 merged tokens = 256 patches
PROBE_STEPS = 200  # L-BFGS iterations per linear probe (read at each fit: a smoke test may lower it)
# attribute -> number of classes; each is probed. The vision-only VFM is pretrained on the layout
# ones (squashed to 64 px, where the reading ones are illegible) and reads glyphs on crops instead.
ATTRIBUTES = {"family": 3, "count": 7, "left_colour": len(COLORS), "longest_third": 3, "title": len(WORDS),
              "longest_label": len(LABELS)}
READING_ATTRIBUTES = ("title", "longest_label")



def attribute(meta: dict, name: str) -> int:
    """Ground-truth class of one attribute, -1 where it does not apply to the sample's family.

    family: document/chart/scene; count: lines, bars or shapes (2–6); left_colour: colour of a
    scene's leftmost shape; longest_third: which third of a chart holds its longest bar; title: a
    document's title word; longest_label: the letter under a chart's longest bar."""
    f = meta["family"]
    if name == "family":
        return FAMILIES.index(f)
    if name == "count":
        return len(meta["lines"] if f == "document" else meta["labels"] if f == "chart" else meta["objects"])
    if name == "left_colour":
        return list(COLORS).index(meta["objects"][0]["color"]) if f == "scene" else -1
    v = meta.get("lengths")
    if name == "longest_third":
        return min(2, 3 * max(range(len(v)), key=v.__getitem__) // len(v)) if f == "chart" else -1
    if name == "longest_label":
        return LABELS.index(meta["labels"][max(range(len(v)), key=v.__getitem__)]) if f == "chart" else -1
    if name == "title":
        return WORDS.index(meta["lines"][0]) if f == "document" else -1
    raise ValueError(f"attribute {name!r}, expected one of {tuple(ATTRIBUTES)}")


def attributes(metas: list[dict]) -> torch.Tensor:
    """(n, len(ATTRIBUTES)) long: every attribute of every sample (-1 where it does not apply)."""
    return torch.tensor([[attribute(m, a) for a in ATTRIBUTES] for m in metas])


def _encoder(vit: nn.Module) -> CRoPEViT:
    """A CRoPEViT as it is (a CoMP-trained encoder keeps its RoPE), or a timm ViT wrapped with
    RoPE off: other sizes then reach it through APE interpolation alone."""
    return (vit if isinstance(vit, CRoPEViT) else CRoPEViT.from_timm(vit, rope=False)).eval()


@torch.no_grad()
def encode(vit: nn.Module, images: list[torch.Tensor], batch: int = 64) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One forward of images of any size -> (the ViT's own pooled embedding (n, D): timm's
    forward_head, pre-logits; the final-layer patch tokens, a list of (h_i * w_i, D)). `vit`: a
    timm ViT (run with RoPE off) or a `CRoPEViT` (run as it is)."""
    enc = _encoder(vit)
    vit = enc.timm_model.eval()
    pooled, patches = [], []
    for i in range(0, len(images), batch):
        packed = enc(images[i:i + batch])
        for j, t in enumerate(packed.split()):  # (N_i, D)
            patches.append(t)
            if packed.prefix is not None:  # timm's pooling expects the prefix tokens in front
                t = torch.cat([packed.prefix[j], t])  # (n_prefix + N_i, D)
            pooled.append(vit.forward_head(t[None], pre_logits=True)[0])  # "avg", "token" or "map" pooling, fc_norm
    return torch.stack(pooled), patches


def pooled_features(vit: nn.Module, images: list[torch.Tensor], batch: int = 64) -> torch.Tensor:
    """The ViT's own pooled embedding of images of any size -> (n, D) (`encode`)."""
    return encode(vit, images, batch)[0]


def fit_probe(x: torch.Tensor, y: torch.Tensor, steps: int | None = None, weight_decay: float = 1e-3) -> nn.Module:
    """Multinomial logistic regression on standardised features (full-batch L-BFGS, `steps`
    iterations at most; default PROBE_STEPS)."""
    steps = PROBE_STEPS if steps is None else steps
    mean, std = x.mean(0), x.std(0) + 1e-6
    lin = nn.Linear(x.shape[1], int(y.max()) + 1)
    nn.init.zeros_(lin.weight)  # the problem is convex: start at zero, so the fit never depends on the global RNG
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")
    xs = (x - mean) / std

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(xs), y) + weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return nn.Sequential(_Standardise(mean, std), lin).eval()


class _Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x):
        return (x - self.mean) / self.std


def probe_accuracy(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                   test_y: torch.Tensor) -> dict[str, float]:
    """One linear probe per attribute (columns of y, as `attributes`), fitted on train features
    where the attribute applies; test accuracy per attribute and their mean."""
    out = {}
    for j, name in enumerate(ATTRIBUTES):
        tr, te = train_y[:, j] >= 0, test_y[:, j] >= 0
        probe = fit_probe(train_x[tr], train_y[tr, j])
        with torch.no_grad():
            out[name] = float((probe(test_x[te]).argmax(1) == test_y[te, j]).float().mean())
    out["mean"] = sum(out.values()) / len(ATTRIBUTES)
    return out


def probe_images(split: str, n: int, seed: int = 1):
    """n samples of a split: (native-size PIL images, attribute labels (n, A), metas)."""
    samples = [make_sample(seed, split, i) for i in range(n)]
    metas = [s.meta for s in samples]
    return [s.image for s in samples], attributes(metas), metas


def _resize(img, patch: int, size: int | None, max_patches: int):
    return resize_fixed(img, size) if size else resize_to_budget(img, patch, 1, 1, max_patches)


def probe_pixels(vit: nn.Module, images, size: int | None = RESOLUTION,
                 max_patches: int = NATIVE_PATCHES) -> list[torch.Tensor]:
    """PIL images as every probe feeds them to `vit`: squashed to size×size or (size=None) native
    within `max_patches` patches, normalised with the ViT's mean and std -> list of (3, H_i, W_i)."""
    p = vit.patch_embed.patch_size[0]
    return _normalise(vit, [_resize(im, p, size, max_patches) for im in images])


def _normalise(vit: nn.Module, sized) -> list[torch.Tensor]:
    """Already-sized PIL images -> (3, H_i, W_i) tensors with the ViT's mean and std."""
    cfg = vit.pretrained_cfg
    return [to_tensor(im, cfg["mean"], cfg["std"]) for im in sized]


def patch_features(vit: nn.Module, images: list[torch.Tensor], batch: int = 64) -> list[torch.Tensor]:
    """Final-layer patch tokens of images of any size: list of (h_i * w_i, D) (`encode`)."""
    return encode(vit, images, batch)[1]


def _labels(target: str, meta: dict, hw: tuple[int, int], patch: int) -> torch.Tensor:
    """(h*w,) per-patch labels of one target; -1 where a patch does not count."""
    if target == "segment":
        return torch.from_numpy(segment_patch_labels(meta, hw, patch)).flatten()
    return torch.from_numpy({"glyph": glyph_patch_labels, "word": word_patch_labels}[target](meta, hw, patch)).flatten()


def patch_probes(vit: nn.Module, train, test, size: int | None = RESOLUTION, max_patches: int = NATIVE_PATCHES,
                 targets: tuple[str, ...] = ("glyph", "word", "segment"), max_per_image: int = 24,
                 features: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None) -> dict:
    """Linear probes on single patch tokens, with images squashed to size×size or (size=None) at
    native resolution within `max_patches`. Targets: "glyph" (the character centred in the patch;
    patches holding a centre count), "word" (the word the patch lies in; patches inside a word
    count) and "segment" (text, bar, circle, square, triangle or background, from the rendered
    per-pixel ground truth; every patch counts). At most `max_per_image` patches per image
    (evenly spaced). -> {target: {"accuracy", "chance" (the commonest label), "n"} (+ "miou",
    the mean intersection over union over classes, for "segment")}. `features`: the patch tokens
    of train and test at these sizes where they were computed already (`encode`)."""
    p = vit.patch_embed.patch_size[0]
    data = {t: [None, None] for t in targets}  # target -> [train, test], each (features, labels)
    for split, (imgs, _, metas) in enumerate((train, test)):
        sized = [_resize(im, p, size, max_patches) for im in imgs]
        feats = features[split] if features is not None else \
            patch_features(vit, _normalise(vit, sized))  # the pixels of probe_pixels, resized once
        for t in targets:
            x, y = [], []
            for f, im, m in zip(feats, sized, metas):
                lab = _labels(t, m, (im.height, im.width), p)
                idx = (lab >= 0).nonzero()[:, 0]
                idx = idx[torch.linspace(0, len(idx) - 1, min(len(idx), max_per_image)).long()] if len(idx) else idx
                x.append(f[idx])
                y.append(lab[idx])
            data[t][split] = (torch.cat(x), torch.cat(y))
    out = {}
    for t in targets:
        (tr_x, tr_y), (te_x, te_y) = data[t]
        probe = fit_probe(tr_x, tr_y)
        with torch.no_grad():
            pred = probe(te_x).argmax(1)
        top = Counter(tr_y.tolist()).most_common(1)[0][0]
        out[t] = {"accuracy": float((pred == te_y).float().mean()), "chance": float((te_y == top).float().mean()),
                  "n": len(te_y)}
        if t == "segment":
            ious = [((pred == c) & (te_y == c)).sum() / ((pred == c) | (te_y == c)).sum()
                    for c in range(len(SEGMENTS)) if (te_y == c).any()]
            out[t]["miou"] = float(torch.stack(ious).mean())
    return out


def measure_probes(vit: nn.Module, train, test, size: int | None = RESOLUTION, max_patches: int = NATIVE_PATCHES,
                   glyphs: bool = True, attentive: bool = False, attentive_steps: int = 300) -> dict:
    """Attribute probes (and the patch probes) with images squashed to size×size, or (size=None)
    at native resolution within `max_patches` patches. `train`, `test`: `probe_images` output.
    A timm ViT sees other sizes through APE interpolation alone (CRoPEViT, RoPE off).
    `attentive`: attribute probes with attentive pooling over the patch tokens (`AttentiveProbe`,
    as the paper probes its VFMs) instead of logistic regression on the ViT's own pooled output.
    -> {attribute: accuracy, "mean": mean over attributes, "glyph", "word", "segment" (accuracy),
    "segment_miou"}."""
    pixels = [probe_pixels(vit, imgs, size, max_patches) for imgs, _, _ in (train, test)]
    pooled, patches = zip(*(encode(vit, px) for px in pixels))  # one forward per split serves every probe
    if attentive:
        out = attentive_probe_accuracy(patches[0], train[1], patches[1], test[1], steps=attentive_steps)
    else:
        out = probe_accuracy(pooled[0], train[1], pooled[1], test[1])
    if glyphs:
        pp = patch_probes(vit, train, test, size, max_patches, features=patches)
        out.update({t: r["accuracy"] for t, r in pp.items()})
        out["segment_miou"] = pp["segment"]["miou"]
    return out


class AttentiveProbe(nn.Module):
    """Attentive pooling then a linear classifier, on frozen patch tokens: one learned query attends
    over an image's tokens (multi-head), as in the probes of DINOv2/AIMv2 that the paper uses."""

    def __init__(self, dim: int, n_classes: int, heads: int = 4):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, tokens: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, D), pad (B, N) True where padding -> logits (B, n_classes)."""
        z, _ = self.attn(self.query.expand(len(tokens), -1, -1), tokens, tokens, key_padding_mask=pad)  # (B, 1, D)
        return self.head(self.norm(z[:, 0]))


def _pad(tokens: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (N_i, D) -> (B, N_max, D) zero-padded, and the (B, N_max) padding mask."""
    x = nn.utils.rnn.pad_sequence(tokens, batch_first=True)  # (B, N_max, D)
    lens = torch.tensor([len(t) for t in tokens])
    return x, torch.arange(x.shape[1])[None] >= lens[:, None]


def attentive_probe_accuracy(train_tokens: list[torch.Tensor], train_y: torch.Tensor, test_tokens: list[torch.Tensor],
                             test_y: torch.Tensor, steps: int = 300, batch: int = 128, lr: float = 1e-3,
                             seed: int = 0) -> dict[str, float]:
    """One `AttentiveProbe` per attribute (AdamW, `steps` minibatches), fitted where the attribute
    applies; test accuracy per attribute and their mean."""
    (xtr, ptr), (xte, pte) = _pad(train_tokens), _pad(test_tokens)
    mean, std = xtr[~ptr].mean(0), xtr[~ptr].std(0) + 1e-6  # standardise with the training tokens' statistics
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    out = {}
    for j, name in enumerate(ATTRIBUTES):
        tr, te = (train_y[:, j] >= 0).nonzero()[:, 0], (test_y[:, j] >= 0).nonzero()[:, 0]
        torch.manual_seed(seed)
        probe = AttentiveProbe(xtr.shape[-1], int(max(train_y[:, j].max(), test_y[:, j].max())) + 1)
        opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=1e-2)
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            b = tr[torch.randint(len(tr), (min(batch, len(tr)),), generator=g)]
            loss = F.cross_entropy(probe(xtr[b], ptr[b]), train_y[b, j])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            out[name] = float((probe(xte[te], pte[te]).argmax(1) == test_y[te, j]).float().mean())
    out["mean"] = sum(out.values()) / len(ATTRIBUTES)
    return out
