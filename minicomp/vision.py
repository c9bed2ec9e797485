"""CRoPEViT: any timm VisionTransformer, run at native resolution on packed images (C-RoPE).

C-RoPE = the ViT's own learned APE, resampled to each image's patch grid (Eq. 1), plus 2D
rotary embedding of q and k in every attention layer (Eq. 3). The wrapper reuses the timm
model's modules and parameters, so its `state_dict()` keys are exactly timm's.

Prefix tokens (class / register), switch `prefix_tokens`:
- ``"keep"`` (default): each image's sequence starts with them, as in pre-training. They get
  their APE row where the ViT has one, no rotation (angle 0), and attend within their image.
  Their outputs are returned in `Packed.prefix`, not in `Packed.tokens`.
- ``"drop"``: they are not fed at all; every token of a sequence is a patch. Their parameters
  stay (timm's state dict is kept whole) but are frozen, since no gradient can reach them.
With ``rope=False``, ``"keep"`` and the pretrained input size, the patch tokens equal timm's
``forward_features`` exactly.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from .attention import BACKENDS, packed_attention
from .packed import Packed, cu_seqlens_from_lengths
from .pos_embed import APE_MODES, legacy_ape_permutation, resample_ape_matmul, resample_ape_matmul_backward
from .rope import apply_rotary, rope_cos_sin

PREFIX_MODES = ("keep", "drop")
SETTINGS_FILE = "crope.json"
_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
_ATTN_PARTS = ("qkv", "q_norm", "k_norm", "attn_drop", "norm", "proj", "proj_drop", "num_heads", "head_dim", "scale")


def _drop_path(x: torch.Tensor, module: nn.Module, seq_lens: list[int], training: bool) -> torch.Tensor:
    """timm's DropPath, but per image of a packed (T, D) sequence instead of per batch row."""
    p = getattr(module, "drop_prob", 0.0)
    if not training or not p:
        return x
    keep = x.new_empty(len(seq_lens)).bernoulli_(1 - p)  # (B,)
    if getattr(module, "scale_by_keep", True):
        keep = keep / (1 - p)
    return x * keep.repeat_interleave(torch.tensor(seq_lens, device=x.device))[:, None]  # (T, 1)


class CRoPEViT(nn.Module):
    """Native-resolution, packed vision encoder over a timm ViT. Build with `from_timm`."""

    def __init__(self, model: nn.Module, *, rope: bool = True, rope_theta: float = 10000.0,
                 prefix_tokens: str = "keep", ape_mode: str = "bicubic", legacy_ape_order: bool = False,
                 max_tokens: int | None = None, attn_backend: str = "auto", final_norm: bool = True,
                 ape: bool = True):
        super().__init__()
        _check_timm_vit(model)
        if prefix_tokens not in PREFIX_MODES:
            raise ValueError(f"prefix_tokens={prefix_tokens!r}, expected one of {PREFIX_MODES}")
        if ape_mode not in APE_MODES:
            raise ValueError(f"ape_mode={ape_mode!r}, expected one of {APE_MODES}")
        if attn_backend not in BACKENDS:
            raise ValueError(f"attn_backend={attn_backend!r}, expected one of {BACKENDS}")
        ph, pw = model.patch_embed.patch_size
        if ph != pw:
            raise ValueError(f"CRoPEViT needs square patches, got patch_size {(ph, pw)}")
        # the timm modules and parameters themselves, under timm's own names
        self.patch_embed = model.patch_embed
        self.pos_embed = model.pos_embed
        self.cls_token = getattr(model, "cls_token", None)
        self.reg_token = getattr(model, "reg_token", None)
        self.pos_drop = model.pos_drop
        self.norm_pre = model.norm_pre
        self.blocks = model.blocks
        self.norm = model.norm
        self.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.in_chans = int(model.patch_embed.proj.in_channels)
        self.embed_dim = int(model.embed_dim)
        attn = model.blocks[0].attn
        self.num_heads, self.head_dim = int(attn.num_heads), int(attn.head_dim)
        self.ape_grid = tuple(int(g) for g in model.patch_embed.grid_size)  # (h0, w0) of the APE
        self.num_prefix = int(model.num_prefix_tokens)  # class + register tokens
        self.ape_prefix = 0 if getattr(model, "no_embed_class", False) else self.num_prefix
        self.rope, self.rope_theta = rope, float(rope_theta)
        self.prefix_tokens, self.ape_mode = prefix_tokens, ape_mode
        self.legacy_ape_order, self.max_tokens = legacy_ape_order, max_tokens
        self.attn_backend = attn_backend
        self.final_norm = bool(final_norm)  # False: no norm after the last block (the authors' CoMP-SigLIP)
        self.ape = bool(ape)  # False: RoPE-2D alone, the learned APE removed (paper Tab. 5a; Qwen2-VL's encoder)
        if not self.ape:
            self.pos_embed.requires_grad_(False)  # unused: it must not wait for a gradient (DDP)
        self.grad_checkpointing = False
        object.__setattr__(self, "timm_model", model)  # the whole timm ViT (head too), unregistered: for saving
        if prefix_tokens == "drop":
            for t in (self.cls_token, self.reg_token):
                if t is not None:
                    t.requires_grad_(False)
        if rope and self.head_dim % 4:
            raise ValueError(f"RoPE-2D needs head_dim divisible by 4; this ViT has head_dim={self.head_dim}")

    @classmethod
    def from_timm(cls, model: nn.Module, rope: bool = True, rope_theta: float = 10000.0, **kwargs) -> "CRoPEViT":
        """Wrap a timm VisionTransformer, sharing (not copying) every weight on the token path.

        kwargs: prefix_tokens ("keep" | "drop"), ape_mode ("bicubic" | "bilinear"),
        legacy_ape_order, max_tokens (patches per image), attn_backend (see `minicomp.attention`),
        final_norm (False: skip the norm after the last block, as the authors' CoMP-SigLIP does),
        ape (False: no learned APE at all, RoPE-2D alone: the ablation of paper Tab. 5a).
        """
        return cls(model, rope=rope, rope_theta=rope_theta, **kwargs)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> "CRoPEViT":
        """Load a folder written by `save_pretrained` (or any timm `save_for_hf` folder, whose
        C-RoPE settings then come from kwargs). kwargs override the saved settings."""
        import timm

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: no config.json; expected a folder from CRoPEViT.save_pretrained "
                                    f"or timm's save_for_hf")
        settings = json.loads((path / SETTINGS_FILE).read_text()) if (path / SETTINGS_FILE).is_file() else {}
        vit = timm.create_model(f"local-dir:{path}", pretrained=True)
        return cls.from_timm(vit, **{**settings, **kwargs})

    def settings(self) -> dict:
        """The C-RoPE settings that define the model's function (saved beside the weights)."""
        return {"rope": self.rope, "rope_theta": self.rope_theta, "prefix_tokens": self.prefix_tokens,
                "ape_mode": self.ape_mode, "legacy_ape_order": self.legacy_ape_order, "final_norm": self.final_norm,
                "ape": self.ape}

    def save_pretrained(self, path: str | Path) -> None:
        """Write the whole timm ViT in timm's format (config.json + model.safetensors, loadable by
        ``timm.create_model("local-dir:<path>", pretrained=True)``) plus the C-RoPE settings."""
        from safetensors.torch import save_file
        from timm.models._hub import save_config_for_hf

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.timm_model.state_dict().items()}
        save_file(state, path / "model.safetensors")
        save_config_for_hf(self.timm_model, path / "config.json")
        (path / SETTINGS_FILE).write_text(json.dumps(self.settings(), indent=2) + "\n")

    @property
    def feeds_prefix(self) -> bool:
        return self.prefix_tokens == "keep" and self.num_prefix > 0

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    # ---- input checks ---------------------------------------------------------------------
    def check_images(self, images: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
        """Validate a list of (C, H, W) images; return each image's patch grid (h, w)."""
        if isinstance(images, torch.Tensor):
            raise ValueError("images must be a list of (C, H, W) tensors, not one tensor; use list(batch)")
        if len(images) == 0:
            raise ValueError("images is an empty list; expected at least one (C, H, W) image")
        p, grids = self.patch_size, []
        for i, img in enumerate(images):
            if not isinstance(img, torch.Tensor) or img.ndim != 3:
                shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
                raise ValueError(f"image {i}: expected a (C, H, W) tensor, got {shape}")
            C, H, W = img.shape
            if C != self.in_chans:
                raise ValueError(f"image {i}: has {C} channels, expected {self.in_chans}")
            if H == 0 or W == 0 or H % p or W % p:
                raise ValueError(f"image {i}: size {H}x{W} is not a positive multiple of the patch size {p}")
            h, w = H // p, W // p
            if self.max_tokens is not None and h * w > self.max_tokens:
                raise ValueError(f"image {i}: {h}x{w} = {h * w} patches exceeds max_tokens={self.max_tokens}")
            if self.legacy_ape_order and (h % 2 or w % 2):
                raise ValueError(f"image {i}: grid {h}x{w} must be even in both sides for legacy_ape_order")
            grids.append((h, w))
        return grids

    # ---- embedding (Eq. 1) ---------------------------------------------------------------
    def embed(self, images: Sequence[torch.Tensor], grids: list[tuple[int, int]]) -> list[torch.Tensor]:
        """Patch embedding + resampled APE (+ prefix tokens): list of (n_prefix + N_i, D)."""
        x, seq_lens = self._embed_packed(images, grids)
        return list(x.split(seq_lens))

    def _embed_packed(self, images: Sequence[torch.Tensor], grids: list[tuple[int, int]]) -> tuple[torch.Tensor, list[int]]:
        """`embed`, packed: (T, D) with T = Σ (n_prefix + N_i), and the per-image lengths.

        timm's patch embedding runs once per distinct image size (a Linear over unfolded patches
        measured 2x faster, but sums in another order than timm's conv, and exact parity with timm
        is worth more than its 1-2% of a training step); the APE is resampled once per distinct grid."""
        proj = self.patch_embed.proj
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, img in enumerate(images):
            by_size.setdefault(tuple(img.shape[1:]), []).append(i)
        tokens: list[torch.Tensor] = [proj.weight.new_empty(0)] * len(images)
        for idx in by_size.values():
            pixels = torch.stack([images[i] for i in idx]).to(proj.weight.dtype)  # (G, C, H, W)
            for i, t in zip(idx, proj(pixels).flatten(2).transpose(1, 2).unbind(0)):  # (G, h*w, D) -> (h*w, D)
                tokens[i] = t
        x = self.patch_embed.norm(torch.cat(tokens))  # (ΣN, D), row-major per image
        apes: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        # CPU: timm's resampling, bit for bit the authors', its gradient by matmuls (PyTorch's bicubic
        # backward took 5% of the toy encoder's forward + backward in a profile). CUDA: the same map as
        # two matmuls both ways (PyTorch's bicubic kernel took 88% of a small encoder's step on an
        # H200), equal to float32 rounding.
        resample = resample_ape_matmul if self.pos_embed.is_cuda else resample_ape_matmul_backward
        for h, w in dict.fromkeys(grids) if self.ape else ():
            ape = resample(self.pos_embed, (h, w), self.ape_grid, self.ape_prefix, self.ape_mode)[0]
            ape_prefix, ape_patch = ape[:self.ape_prefix], ape[self.ape_prefix:]  # (ape_prefix, D), (h*w, D)
            if self.legacy_ape_order:
                ape_patch = ape_patch[legacy_ape_permutation(h, w).to(x.device)]
            apes[(h, w)] = ape_prefix, ape_patch
        if self.ape:
            x = x + torch.cat([apes[g][1] for g in grids])  # (ΣN, D); under autocast the sum is fp32, as in timm
        lengths = [h * w for h, w in grids]
        if not self.feeds_prefix:
            return x, lengths
        prefix = torch.cat([t for t in (self.cls_token, self.reg_token) if t is not None], 1)[0]  # (n_prefix, D)
        parts: list[torch.Tensor] = []
        for g, xi in zip(grids, x.split(lengths)):
            parts += [(prefix + apes[g][0] if self.ape_prefix and self.ape else prefix).to(x.dtype), xi]
        return torch.cat(parts), [self.num_prefix + n for n in lengths]  # (T, D)

    # ---- transformer (Eq. 2–4) -------------------------------------------------------------
    def _attention(self, attn: nn.Module, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                   attend: Callable) -> torch.Tensor:
        """timm Attention's maths with RoPE on q, k; x (..., N, D), `attend`(q, k, v) over (..., N, heads, Dh)."""
        qkv = attn.qkv(x).unflatten(-1, (3, attn.num_heads, attn.head_dim))  # (..., N, 3, heads, head_dim)
        q, k, v = qkv.unbind(-3)  # each (..., N, heads, head_dim)
        q, k = attn.q_norm(q), attn.k_norm(k)
        if cos is not None:  # Eq. 3: (R q)ᵀ (R k)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        o = attn.norm(attend(q, k, v).flatten(-2))  # (..., N, heads*head_dim)
        if getattr(attn, "gate", None) is not None:
            o = o * attn.gate(x).sigmoid()
        return attn.proj_drop(attn.proj(o))

    def _block(self, blk: nn.Module, x: torch.Tensor, cos, sin, attend: Callable, seq_lens: list[int]) -> torch.Tensor:
        """One pre-norm block (Eq. 2–4: Eq. 3 with RoPE) on packed tokens x (T, D)."""
        y = blk.ls1(self._attention(blk.attn, blk.norm1(x), cos, sin, attend))
        x = x + _drop_path(y, blk.drop_path1, seq_lens, self.training)
        y = blk.ls2(blk.mlp(blk.norm2(x)))
        return x + _drop_path(y, blk.drop_path2, seq_lens, self.training)

    def _rope_tables(self, grids: list[tuple[int, int]], n_prefix: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin for the packed sequence: (T, 1, head_dim); prefix tokens get angle 0."""
        cos_l, sin_l = [], []
        for h, w in grids:
            c, s = rope_cos_sin(h, w, self.head_dim, self.rope_theta, device=device)  # (N, Dh)
            cos_l += [c.new_ones(n_prefix, self.head_dim), c]
            sin_l += [s.new_zeros(n_prefix, self.head_dim), s]
        return torch.cat(cos_l)[:, None], torch.cat(sin_l)[:, None]  # (T, 1, Dh)

    def forward(self, images: Sequence[torch.Tensor]) -> Packed:
        """images: list of (C, H_i, W_i), H_i and W_i multiples of the patch size -> `Packed`."""
        grids = self.check_images(images)
        n_prefix = self.num_prefix if self.feeds_prefix else 0
        x, seq_lens = self._embed_packed(images, grids)  # (T, D), n_prefix + N_i per image
        cu = cu_seqlens_from_lengths(torch.tensor(seq_lens))  # (B+1,) on the CPU: reading lengths from it never syncs
        x = self.norm_pre(self.pos_drop(x))  # (T, D)
        cos, sin = self._rope_tables(grids, n_prefix, x.device) if self.rope else (None, None)
        for blk in self.blocks:
            dropout = blk.attn.attn_drop.p if self.training else 0.0
            attend = partial(packed_attention, cu_seqlens=cu, backend=self.attn_backend,
                             scale=blk.attn.scale, dropout_p=dropout)
            if self.grad_checkpointing and self.training:
                x = checkpoint(self._block, blk, x, cos, sin, attend, seq_lens, use_reentrant=False)
            else:
                x = self._block(blk, x, cos, sin, attend, seq_lens)
        x = self.norm(x) if self.final_norm else x
        parts = x.split(seq_lens)  # each (n_prefix + N_i, D)
        out = Packed.from_list([t[n_prefix:] for t in parts], grids)
        out.prefix = torch.stack([t[:n_prefix] for t in parts]) if n_prefix else None  # (B, n_prefix, D)
        return out

    def extra_repr(self) -> str:
        return (f"rope={self.rope}, rope_theta={self.rope_theta}, prefix_tokens={self.prefix_tokens!r}, "
                f"ape_mode={self.ape_mode!r}, ape_grid={self.ape_grid}, patch_size={self.patch_size}, "
                f"attn_backend={self.attn_backend!r}, final_norm={self.final_norm}, ape={self.ape}")


def _check_timm_vit(model: nn.Module) -> None:
    """Clear errors for models CRoPEViT cannot wrap."""
    name = type(model).__name__
    for attr in ("patch_embed", "blocks", "norm", "pos_embed", "num_prefix_tokens"):
        if not hasattr(model, attr):
            raise TypeError(f"{name} is not a timm VisionTransformer: it has no `{attr}`")
    if model.pos_embed is None:
        raise ValueError(f"{name} has no learned absolute position embedding (pos_embed is None); "
                         "C-RoPE builds on a ViT with a learned APE")
    if len(model.blocks) == 0:
        raise ValueError(f"{name} has no transformer blocks (depth 0)")
    for i, blk in enumerate(model.blocks):
        missing = [a for a in _BLOCK_PARTS if not hasattr(blk, a)] + \
                  [f"attn.{a}" for a in _ATTN_PARTS if not hasattr(getattr(blk, "attn", None), a)]
        if missing:
            raise TypeError(f"block {i} ({type(blk).__name__}) lacks {missing}; CRoPEViT supports timm's "
                            "pre-norm `Block` with a fused-qkv `Attention`")
