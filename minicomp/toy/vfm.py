"""The toy VFMs: small timm ViTs with a learned APE, pretrained at one fixed low resolution
(64×64, 8×8 patches) on the synthetic world, i.e. exactly the kind of model CoMP adapts.

Each sees two kinds of 64×64 input in pretraining, as real VFMs do:
- whole images squashed to 64×64, where layout survives but text does not;
- 64×64 crops of text images at the scale of the tiny preset's native budget, where the glyphs
  are legible (about a patch tall), as in the crops of a web image that hold some text.

- ``vision``: vision-only, in DINOv2's role (same timm architecture family: class token,
  layer scale, ImageNet mean/std). It never sees text. DINOv2's self-supervision does not fit a
  few CPU minutes: a masked-image-modelling version we tried gave linear probes no better than
  random weights. So it is pretrained like a supervised ViT: one head per layout attribute
  (`LAYOUT`) on the squashed images, and two per-patch heads on the crops, like a dense OCR
  objective: which character is centred in each patch, and which word the patch lies in.
- ``siglip``: image–text contrastive with SigLIP's sigmoid loss (same timm architecture family:
  no class token, attention-pool head, mean/std 0.5), against a small bag-of-words text tower
  over the toy tokenizer: squashed images with their captions, crops with the characters they
  show. As in CoMP, only the vision tower is kept.

Both are saved with timm's `save_for_hf` (config.json + model.safetensors), so they load with
``timm.create_model("local-dir:<path>", pretrained=True)``, the same call as a hub model.
Each build log holds the probes of `probes.measure_probes` at 64 px and at native resolution,
and the patch probes on held-out glyph crops at 64 px (`crop_probes`: the same glyph scale as
native, on the pretraining grid), against the same ViT with random weights, and where it was
made: the thread count, the machine, the library versions and a digest of its training images.

The vision VFM's reading emerges late. At a learning rate of 1e-3 its dense-OCR loss sat on a
plateau for about 1,500 steps before it fell, so the shipped model trained 2,400 steps (at 800,
its glyph probe at native resolution was 0.52 against 0.36 for random weights). At 2e-3, 1,200
steps read better in half the time (glyph 0.80 at native against 0.73; README), so that is the
recipe now (`STEPS`, `LR`).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import save_for_hf
from tqdm.auto import tqdm
from transformers import AutoTokenizer, get_cosine_schedule_with_warmup

from ..data.resize import resize_fixed, resize_to_budget
from ..data.labels import glyph_patch_labels, word_patch_labels
from ..data.synthetic import GLYPHS, VOCAB, make_sample
from ..environment import libraries, machine
from .probes import (ATTRIBUTES, NATIVE_PATCHES, READING_ATTRIBUTES, RESOLUTION, attribute, attributes,
                     measure_probes, pooled_features, probe_images)

TOY_VIT = dict(img_size=RESOLUTION, patch_size=8, embed_dim=128, depth=4, num_heads=4, mlp_ratio=3.0, num_classes=0)
TOY_VFMS = {"vision": "vit_small_patch14_dinov2", "siglip": "vit_base_patch16_siglip_224"}  # kind -> timm architecture
LAYOUT = tuple(a for a in ATTRIBUTES if a not in READING_ATTRIBUTES)  # what the squashed images are trained on

__all__ = ["ATTRIBUTES", "LAYOUT", "RESOLUTION", "TOY_VFMS", "attribute", "attributes", "build_toy_vfm",
           "create_toy_vit", "glyph_crops", "measure_probes", "pooled_features", "probe_images",
           "render_fixed"]


def create_toy_vit(kind: str) -> nn.Module:
    """A randomly initialised toy ViT of the given kind ("vision" or "siglip")."""
    if kind not in TOY_VFMS:
        raise ValueError(f"kind={kind!r}, expected one of {tuple(TOY_VFMS)}")
    pool = {"vision": "avg", "siglip": "map"}[kind]  # the embedding the objective trains
    return timm.create_model(TOY_VFMS[kind], pretrained=False, global_pool=pool, **TOY_VIT)


def _uint8(img) -> torch.Tensor:
    return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous()  # (3, H, W)


def render_fixed(split: str, n: int, size: int = RESOLUTION, seed: int = 0):
    """n samples of a split, squashed to size×size: (uint8 images (n, 3, size, size), captions, metas)."""
    imgs, caps, metas = [], [], []
    for i in tqdm(range(n), desc=f"render {split}", unit="img", leave=False):
        s = make_sample(seed, split, i)
        imgs.append(_uint8(resize_fixed(s.image, size)))
        caps.append(s.caption)
        metas.append(s.meta)
    return torch.stack(imgs), caps, metas  # (n, 3, size, size)


def glyph_crops(split: str, n: int, size: int = RESOLUTION, patch: int = 8, seed: int = 0):
    """n size×size crops of documents and charts resized to the native budget, each placed on a
    random glyph (patch-aligned; white padding where the image is smaller): (uint8 crops
    (n, 3, size, size), per-patch labels (n, 2, size/patch, size/patch): the glyph centred in the
    patch and the word the patch lies in (-1: none), the characters each crop shows in reading order)."""
    rng = np.random.default_rng([seed, 7])
    crops, labels, texts = [], [], []
    g = size // patch
    for i in tqdm(range(n), desc=f"crops {split}", unit="img", leave=False):
        s = make_sample(seed, split, i, family=("document", "chart")[i % 2])
        img = resize_to_budget(s.image, patch, 1, 1, NATIVE_PATCHES)
        hw = (img.height, img.width)
        lab = np.stack([glyph_patch_labels(s.meta, hw, patch), word_patch_labels(s.meta, hw, patch)])  # (2, h, w)
        canvas = np.full((max(img.height, size), max(img.width, size), 3), 255, dtype=np.uint8)
        canvas[:img.height, :img.width] = np.asarray(img)
        full = np.full((2, canvas.shape[0] // patch, canvas.shape[1] // patch), -1, dtype=np.int64)
        full[:, :lab.shape[1], :lab.shape[2]] = lab
        rows, cols = np.nonzero(full[0] >= 0)
        k = rng.integers(len(rows))  # a glyph to centre on, then a random shift that keeps it inside
        r0 = int(np.clip(rows[k] - rng.integers(g), 0, full.shape[1] - g))
        c0 = int(np.clip(cols[k] - rng.integers(g), 0, full.shape[2] - g))
        crop_lab = full[:, r0:r0 + g, c0:c0 + g]
        crops.append(torch.from_numpy(canvas[r0 * patch:(r0 + g) * patch, c0 * patch:(c0 + g) * patch]).permute(2, 0, 1))
        labels.append(torch.from_numpy(crop_lab.copy()))
        texts.append(" ".join(GLYPHS[j] for j in crop_lab[0].flatten() if j >= 0))
    return torch.stack(crops), torch.stack(labels), texts  # (n, 3, size, size), (n, 2, g, g)


def normalise(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """uint8 (n, 3, H, W) -> float, with the model's own mean and std (timm pretrained_cfg)."""
    cfg = model.pretrained_cfg
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


# ---- pretraining objectives -----------------------------------------------------------------

class AttributeHeads(nn.Module):
    """Vision-only supervised pretraining: one linear head per layout attribute on the ViT's
    pooled embedding of squashed images, and two linear heads on each patch token of the crops,
    dense-OCR style: the glyph centred in the patch and the word the patch lies in (class 0:
    none). The loss is the sum of the cross-entropies."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        self.heads = nn.ModuleDict({a: nn.Linear(vit.num_features, ATTRIBUTES[a]) for a in LAYOUT})
        self.glyph = nn.Linear(vit.num_features, len(GLYPHS) + 1)
        self.word = nn.Linear(vit.num_features, len(VOCAB) + 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor, crops: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = self.vit(x)  # (B, D): mean of the patch tokens, pre-logits
        cols = [list(ATTRIBUTES).index(a) for a in LAYOUT]
        loss = sum(F.cross_entropy(head(z), y[:, j], ignore_index=-1) for j, head in zip(cols, self.heads.values()))
        t = self.vit.forward_features(crops)[:, self.vit.num_prefix_tokens:]  # (B, g*g, D) patch tokens
        for head, lab in ((self.glyph, labels[:, 0]), (self.word, labels[:, 1])):
            weight = torch.ones(head.out_features, device=t.device)
            weight[0] = 0.1  # most patches hold no glyph: weigh them down so that reading is what is learned
            loss = loss + F.cross_entropy(head(t).flatten(0, 1), lab.flatten() + 1, weight=weight)
        return loss


class SigLIP(nn.Module):
    """SigLIP's pairwise sigmoid loss between the ViT's pooled output and a bag-of-words text tower."""

    def __init__(self, vit: nn.Module, vocab_size: int, dim: int = 128):
        super().__init__()
        self.vit = vit
        self.text = nn.EmbeddingBag(vocab_size, dim, mode="mean")
        self.text_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, vit.num_features))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # SigLIP's init: t = 10, b = -10
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    def embed_text(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text(ids, offsets)), dim=-1)  # (B, D)

    def forward(self, x: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.vit(x), dim=-1)  # (B, D): attention-pool head, pre-logits
        logits = img @ self.embed_text(ids, offsets).T * self.logit_scale.exp() + self.logit_bias  # (B, B)
        labels = 2 * torch.eye(len(x), device=x.device) - 1  # +1 on matching pairs, -1 elsewhere
        return -F.logsigmoid(labels * logits).sum() / len(x)


@torch.no_grad()
def retrieval_accuracy(objective: SigLIP, images: torch.Tensor, cap_ids: list[torch.Tensor], group: int = 100) -> float:
    """Zero-shot image -> caption top-1 accuracy among groups of `group` test pairs (chance 1/group)."""
    objective.eval()
    group, hits = min(group, len(images)), 0
    for i in range(0, len(images) - group + 1, group):
        img = F.normalize(objective.vit(images[i:i + group]), dim=-1)  # (group, D)
        txt = objective.embed_text(*_bag(cap_ids[i:i + group]))  # (group, D)
        hits += int((img @ txt.T).argmax(1).eq(torch.arange(group)).sum())
    return hits / (len(images) // group * group)


# ---- the build ------------------------------------------------------------------------------

@torch.no_grad()
def crop_probes(vit: nn.Module, n_train: int = 600, n_test: int = 300, seed: int = 1) -> dict[str, float]:
    """The per-patch glyph and word probes on held-out 64×64 glyph crops: reading at the VFM's own
    resolution and grid, with glyphs at the scale of the native budget. Against the native column
    (the same glyph scale on a larger grid, through the interpolated APE) it measures what
    leaving the pretraining grid costs. -> {"glyph": accuracy, "word": accuracy}."""
    from .probes import fit_probe

    feats, labs = [], []
    for split, n in (("train", n_train), ("test", n_test)):
        crops, labels, _ = glyph_crops(split, n, seed=seed)  # (n, 3, 64, 64), (n, 2, 8, 8)
        t = vit.eval().forward_features(normalise(crops, vit))[:, vit.num_prefix_tokens:]  # (n, 64, D) patch tokens
        feats.append(t.flatten(0, 1))  # (n * 64, D)
        labs.append(labels.flatten(2).transpose(1, 2).flatten(0, 1))  # (n * 64, 2): glyph, word per patch
    out = {}
    for j, name in enumerate(("glyph", "word")):
        tr, te = labs[0][:, j] >= 0, labs[1][:, j] >= 0
        probe = fit_probe(feats[0][tr], labs[0][tr, j])
        out[name] = float((probe(feats[1][te]).argmax(1) == labs[1][te, j]).float().mean())
    return out


def _probe_table(vit: nn.Module, train, test) -> dict:
    """Probes at the pretraining size, on glyph crops at that size, and at native resolution (the
    tiny budget, APE interpolation only)."""
    return {f"fixed {RESOLUTION}px": measure_probes(vit, train, test),
            f"crops {RESOLUTION}px": crop_probes(vit, min(600, len(train[0])), min(300, len(test[0]))),
            f"native <={NATIVE_PATCHES} patches": measure_probes(vit, train, test, size=None)}


STEPS = {"vision": 1200, "siglip": 800}  # pretraining steps per kind (the shipped vision VFM: 2,400 at 1e-3)
LR = {"vision": 2e-3, "siglip": 1e-3}  # peak learning rate per kind (AdamW, cosine)


def build_toy_vfm(kind: str, out: str | Path, tokenizer: str | Path | None = None, steps: int | None = None,
                  batch: int = 32, lr: float | None = None, n_train: int = 8000, n_probe: int = 1000,
                  n_test: int = 500, seed: int = 0, position: int = 0) -> dict:
    """Pretrain a toy VFM from scratch at 64×64 (squashed images and glyph crops, `batch` of each
    per step), measure its probes at 64 px and at native resolution (and, for siglip, zero-shot
    retrieval) against the same ViT with random weights, and save it to `out` (timm format) with
    a `build_log.json`. `tokenizer` (a saved tokenizer dir) is needed for siglip. `position`: the
    progress bar's row (builds side by side)."""
    t0 = time.time()
    steps = STEPS[kind] if steps is None else steps
    lr = LR[kind] if lr is None else lr
    if kind == "siglip" and tokenizer is None:
        raise ValueError("the siglip toy VFM needs `tokenizer` (the toy LLM's tokenizer directory)")
    torch.manual_seed(seed)
    vit = create_toy_vit(kind)
    random_vit = create_toy_vit(kind).eval()  # the baseline the probes are compared with
    random_vit.load_state_dict(vit.state_dict())
    images, captions, metas = render_fixed("train", n_train, seed=seed)
    crops, crop_glyphs, crop_texts = glyph_crops("train", n_train, seed=seed)
    x_all, c_all = normalise(images, vit), normalise(crops, vit)  # (n_train, 3, 64, 64) each
    if kind == "vision":
        objective, y_all = AttributeHeads(vit), attributes(metas)
    else:
        tok = AutoTokenizer.from_pretrained(tokenizer)
        tokens = lambda caps: [torch.tensor(tok(c or "none", add_special_tokens=False)["input_ids"]) for c in caps]
        cap_ids, crop_ids = tokens(captions), tokens(crop_texts)
        objective = SigLIP(vit, len(tok))
    opt = torch.optim.AdamW(objective.parameters(), lr=lr, weight_decay=0.05)
    sched = get_cosine_schedule_with_warmup(opt, max(1, steps // 20), steps)
    g = torch.Generator().manual_seed(seed)
    losses = []
    objective.train()
    for _ in tqdm(range(steps), desc=f"toy VFM ({kind})", unit="step", position=position):
        idx, cdx = torch.randint(0, n_train, (batch,), generator=g), torch.randint(0, n_train, (batch,), generator=g)
        if kind == "vision":
            loss = objective(x_all[idx], y_all[idx], c_all[cdx], crop_glyphs[cdx])
        else:
            loss = objective(x_all[idx], *_bag([cap_ids[i] for i in idx.tolist()])) + \
                objective(c_all[cdx], *_bag([crop_ids[i] for i in cdx.tolist()]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(objective.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    vit.eval()
    train, test = probe_images("train", n_probe, seed + 1), probe_images("test", n_test, seed + 1)
    log = {"kind": kind, "architecture": TOY_VFMS[kind], "resolution": RESOLUTION, "steps": steps,
           "batch": batch, "lr": lr, "train_images": n_train, "loss_first": sum(losses[:20]) / 20,
           "loss_last": sum(losses[-20:]) / 20, "probes": _probe_table(vit, train, test),
           "probes_random_init": _probe_table(random_vit, train, test)}
    if kind == "siglip":
        test_imgs, test_caps, _ = render_fixed("test", n_test, seed=seed + 1)
        log["retrieval_top1_of_100"] = retrieval_accuracy(objective, normalise(test_imgs, vit), tokens(test_caps))
    log.update(parameters=sum(p.numel() for p in vit.parameters()), minutes=(time.time() - t0) / 60, seed=seed,
               images_sha256=hashlib.sha256(images.numpy().tobytes() + crops.numpy().tobytes()).hexdigest(),
               threads=torch.get_num_threads(), machine=machine(), libraries=libraries())
    out = Path(out)
    save_for_hf(vit, out, safe_serialization=True, model_config={"pretrained_cfg": {
        "tag": f"minicomp_toy_{kind}", "license": "apache-2.0", "crop_pct": 1.0}})
    (out / "build_log.json").write_text(json.dumps(log, indent=2) + "\n")
    return log


def _bag(ids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of several texts as (flat ids, offsets) for nn.EmbeddingBag."""
    return torch.cat(ids), torch.tensor([0] + [len(t) for t in ids[:-1]]).cumsum(0)
