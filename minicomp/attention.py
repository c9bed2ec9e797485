"""Self-attention over a packed sequence of several images, none attending across images.

All backends take q, k, v of shape (T, heads, head_dim), T = ΣN_i, and `cu_seqlens` (B+1,)
int32 offsets, and return (T, heads, head_dim):

- ``reference``:  plain softmax(q kᵀ · scale) v, one image at a time. The definition.
- ``sdpa``:       images grouped by length, one batched `F.scaled_dot_product_attention` per
                  group. The CPU default.
- ``flex``:       FlexAttention with a block-diagonal document mask (compiled on CUDA; on
                  CPU it runs unfused and forward-only, for checking).
- ``varlen``:     `torch.nn.attention.varlen.varlen_attn` (Flash, CUDA, fp16/bf16).
- ``flash_attn``: `flash_attn_varlen_func` when the flash-attn package is installed.
- ``auto``:       flash_attn → varlen on CUDA half precision, else sdpa.
"""
from __future__ import annotations

import importlib.util
import math
import warnings
from functools import lru_cache

import torch
import torch.nn.functional as F

BACKENDS = ("auto", "reference", "sdpa", "flex", "varlen", "flash_attn")


def _lengths(cu_seqlens: torch.Tensor) -> list[int]:
    return (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()


def attention_reference(q, k, v, cu_seqlens, scale=None, dropout_p=0.0):
    """softmax(q kᵀ · scale) v per image, written out. q, k, v: (T, H, Dh)."""
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    out = []
    for qi, ki, vi in zip(*(t.split(_lengths(cu_seqlens)) for t in (q, k, v))):
        scores = torch.einsum("nhd,mhd->hnm", qi, ki) * scale  # (H, N, N)
        probs = F.dropout(scores.softmax(dim=-1), p=dropout_p)
        out.append(torch.einsum("hnm,mhd->nhd", probs, vi))  # (N, H, Dh)
    return torch.cat(out, dim=0)


def attention_sdpa(q, k, v, cu_seqlens, scale=None, dropout_p=0.0):
    """Batched SDPA over groups of equal-length images. q, k, v: (T, H, Dh).

    Split, stack and cat (not index and scatter): in backward they cost one copy each, where an
    index_put would zero and fill a full (T, H, Dh) tensor per group, per q/k/v and per layer."""
    lengths = _lengths(cu_seqlens)
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    parts = [t.split(lengths) for t in (q, k, v)]  # per image: (N_i, H, Dh)
    outs: list[torch.Tensor] = [q.new_empty(0)] * len(lengths)
    for members in groups.values():
        if len(members) == 1:  # a view, no copy
            qg, kg, vg = (p[members[0]].unsqueeze(0).transpose(1, 2) for p in parts)  # (1, H, n, Dh)
        else:
            qg, kg, vg = (torch.stack([p[i] for i in members]).transpose(1, 2) for p in parts)  # (G, H, n, Dh)
        og = F.scaled_dot_product_attention(qg, kg, vg, dropout_p=dropout_p, scale=scale)  # (G, H, n, Dh)
        for i, o in zip(members, og.transpose(1, 2).unbind(0)):  # (n, H, Dh) each
            outs[i] = o
    return torch.cat(outs)  # (T, H, Dh)


@lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=True)


def attention_flex(q, k, v, cu_seqlens, scale=None, dropout_p=0.0):
    """FlexAttention with a document mask. q, k, v: (T, H, Dh)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    if dropout_p:
        raise ValueError("backend 'flex' does not support attention dropout; use 'sdpa'")
    T = q.shape[0]
    doc = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1, device=q.device),
                                  torch.tensor(_lengths(cu_seqlens), device=q.device))  # (T,)

    def same_image(b, h, qi, ki):
        return doc[qi] == doc[ki]

    mask = create_block_mask(same_image, None, None, T, T, device=q.device)
    qb, kb, vb = (t.transpose(0, 1)[None] for t in (q, k, v))  # (1, H, T, Dh)
    if q.is_cuda:
        out = _compiled_flex()(qb, kb, vb, block_mask=mask, scale=scale)
    else:
        with warnings.catch_warnings():  # unfused on CPU is the point here: a check, not speed
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            out = flex_attention(qb, kb, vb, block_mask=mask, scale=scale)
    return out[0].transpose(0, 1)  # (T, H, Dh)


def attention_varlen(q, k, v, cu_seqlens, scale=None, dropout_p=0.0):
    """PyTorch's Flash varlen kernel (CUDA, fp16/bf16). q, k, v: (T, H, Dh)."""
    from torch.nn.attention.varlen import varlen_attn
    if dropout_p:
        raise ValueError("backend 'varlen' does not support attention dropout; use 'sdpa'")
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    n = max(_lengths(cu_seqlens))
    return varlen_attn(q, k, v, cu, cu, n, n, scale=scale)


def attention_flash_attn(q, k, v, cu_seqlens, scale=None, dropout_p=0.0):
    """flash-attn's varlen kernel (optional dependency). q, k, v: (T, H, Dh)."""
    from flash_attn import flash_attn_varlen_func
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    n = max(_lengths(cu_seqlens))
    return flash_attn_varlen_func(q, k, v, cu, cu, n, n, dropout_p=dropout_p, softmax_scale=scale)


_IMPLS = {"reference": attention_reference, "sdpa": attention_sdpa, "flex": attention_flex,
          "varlen": attention_varlen, "flash_attn": attention_flash_attn}


def resolve_backend(backend: str, q: torch.Tensor) -> str:
    """The concrete backend `auto` picks for tensors like q."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r} is not one of {BACKENDS}")
    if backend != "auto":
        return backend
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attn"
        return "varlen"
    return "sdpa"


def packed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                     backend: str = "auto", scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """Block-diagonal self-attention: q, k, v (T, H, Dh), cu_seqlens (B+1,) -> (T, H, Dh)."""
    if not (q.shape == k.shape == v.shape) or q.ndim != 3:
        raise ValueError(f"q, k, v must all be (T, heads, head_dim); got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if int(cu_seqlens[-1]) != q.shape[0]:
        raise ValueError(f"cu_seqlens ends at {int(cu_seqlens[-1])} but there are {q.shape[0]} tokens")
    return _IMPLS[resolve_backend(backend, q)](q, k, v, cu_seqlens, scale=scale, dropout_p=dropout_p)
