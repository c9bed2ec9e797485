"""Linear probes of a toy VFM's frozen features: what it knows, at its own 64 px and at native
resolution (APE interpolation alone, no RoPE), against the same ViT with random weights.

- attribute probes: one multinomial logistic regression per ground-truth attribute on the ViT's
  own pooled embedding. Four are layout (family, count, left_colour, longest_third) and two need
  reading (a document's title, the letter under a chart's longest bar).
- the glyph probe: logistic regression on single patch tokens, predicting which character's box
  centre lies in that patch (documents and charts). It measures legibility where it matters,
  in the tokens the merger passes on.
"""
from __future__ import annotations

from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.resize import resize_fixed, resize_to_budget, to_tensor
from ..data.synthetic import COLORS, FAMILIES, LABELS, WORDS, glyph_patch_labels, make_sample, word_patch_labels
from ..vision import CRoPEViT

RESOLUTION = 64  # the toy VFMs' pretraining size
NATIVE_PATCHES = 256  # the tiny preset's native budget: 64 merged tokens = 256 patches
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
def pooled_features(vit: nn.Module, images: list[torch.Tensor], batch: int = 64) -> torch.Tensor:
    """The ViT's own pooled embedding (timm's forward_head, pre-logits) of images of any size ->
    (n, D). `vit`: a timm ViT (run with RoPE off) or a `CRoPEViT` (run as it is)."""
    enc = _encoder(vit)
    vit = enc.timm_model.eval()
    out = []
    for i in range(0, len(images), batch):
        packed = enc(images[i:i + batch])
        for j, t in enumerate(packed.split()):  # (N_i, D)
            if packed.prefix is not None:  # timm's pooling expects the prefix tokens in front
                t = torch.cat([packed.prefix[j], t])  # (n_prefix + N_i, D)
            out.append(vit.forward_head(t[None], pre_logits=True)[0])  # "avg", "token" or "map" pooling, fc_norm
    return torch.stack(out)


def fit_probe(x: torch.Tensor, y: torch.Tensor, steps: int = 200, weight_decay: float = 1e-3) -> nn.Module:
    """Multinomial logistic regression on standardised features (full-batch L-BFGS)."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    lin = nn.Linear(x.shape[1], int(y.max()) + 1)
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


@torch.no_grad()
def patch_features(vit: nn.Module, images: list[torch.Tensor], batch: int = 64) -> list[torch.Tensor]:
    """Final-layer patch tokens of images of any size (CRoPEViT, RoPE off): list of (h_i * w_i, D)."""
    enc = _encoder(vit)
    return [t for i in range(0, len(images), batch) for t in enc(images[i:i + batch]).split()]


def glyph_probe(vit: nn.Module, train, test, size: int | None = RESOLUTION, max_patches: int = NATIVE_PATCHES,
                max_per_image: int = 24, target: str = "glyph") -> dict:
    """Reading from single patch tokens, with images squashed to size×size or (size=None) at
    native resolution within `max_patches`. `target`: "glyph" (which character is centred in the
    patch; only patches holding a centre count) or "word" (which word the patch lies in; only
    patches inside a word count). `train`, `test`: `probe_images` output.
    -> {"accuracy", "chance" (the commonest label), "n"}."""
    labeller = {"glyph": glyph_patch_labels, "word": word_patch_labels}[target]
    cfg, p = vit.pretrained_cfg, vit.patch_embed.patch_size[0]
    xs, ys = [], []
    for imgs, _, metas in (train, test):
        keep = [i for i, m in enumerate(metas) if m.get("glyphs")]
        sized = [_resize(imgs[i], p, size, max_patches) for i in keep]
        feats = patch_features(vit, [to_tensor(im, cfg["mean"], cfg["std"]) for im in sized])
        x, y = [], []
        for f, im, i in zip(feats, sized, keep):
            lab = torch.from_numpy(labeller(metas[i], (im.height, im.width), p)).flatten()  # (h*w,)
            idx = (lab >= 0).nonzero()[:max_per_image, 0]
            x.append(f[idx])
            y.append(lab[idx])
        xs.append(torch.cat(x))
        ys.append(torch.cat(y))
    probe = fit_probe(xs[0], ys[0])
    with torch.no_grad():
        acc = float((probe(xs[1]).argmax(1) == ys[1]).float().mean())
    top = Counter(ys[0].tolist()).most_common(1)[0][0]
    return {"accuracy": acc, "chance": float((ys[1] == top).float().mean()), "n": len(ys[1])}


def measure_probes(vit: nn.Module, train, test, size: int | None = RESOLUTION, max_patches: int = NATIVE_PATCHES,
                   glyphs: bool = True) -> dict:
    """Attribute probes (and the glyph probe) with images squashed to size×size, or (size=None)
    at native resolution within `max_patches` patches. `train`, `test`: `probe_images` output.
    The ViT sees other sizes through APE interpolation alone (CRoPEViT, RoPE off).
    -> {attribute: accuracy, "mean": mean over attributes, "glyph", "word": the per-patch probes}."""
    cfg, p = vit.pretrained_cfg, vit.patch_embed.patch_size[0]
    feats = [pooled_features(vit, [to_tensor(_resize(im, p, size, max_patches), cfg["mean"], cfg["std"])
                                   for im in imgs]) for imgs, _, _ in (train, test)]
    out = probe_accuracy(feats[0], train[1], feats[1], test[1])
    if glyphs:
        for target in ("glyph", "word"):
            out[target] = glyph_probe(vit, train, test, size, max_patches, target=target)["accuracy"]
    return out
