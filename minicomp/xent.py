"""The decoding loss's cross-entropy without the (n, V) logits in memory at once.

At paper scale the decoding loss (Eq. 6) is over tens of thousands of supervised tokens and a
151,936-word vocabulary: its float32 logits alone are n × V × 4 bytes (32K tokens: 19.9 GB), and
backward keeps as much again. `chunked_cross_entropy` takes the rows a chunk at a time, each under
activation checkpointing: forward keeps only the chunk's summed loss, and backward recomputes the
chunk's logits, so the peak is one chunk's logits and their gradient. The arithmetic per row is
the dense computation's (same matmul, same autocast dtype, same softcap), so the loss and the
gradients equal `F.cross_entropy` on the full logits up to the order of the final sum.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

# Rows per chunk are chosen so that one chunk's float32 logits take about this many bytes.
CHUNK_BYTES = 128 * 2**20


def logits_of(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
              softcap: float | None = None) -> torch.Tensor:
    """The output head's float32 logits for hidden states (n, D): (n, V)."""
    logits = F.linear(hidden, weight, bias).float()
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


def chunk_rows(vocab: int, chunk_bytes: int | None = None) -> int:
    """Rows whose float32 logits over `vocab` words fit in `chunk_bytes` (default CHUNK_BYTES; at least 1)."""
    return max(1, (chunk_bytes or CHUNK_BYTES) // (4 * vocab))


def _chunk_loss(hidden, target, weight, bias, softcap):
    return F.cross_entropy(logits_of(hidden, weight, bias, softcap), target, reduction="sum")


def chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                          bias: torch.Tensor | None = None, softcap: float | None = None,
                          chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of `target` (n,) under the logits hidden (n, D) @ weight (V, D)ᵀ (+ bias),
    computed `chunk` rows at a time (default: `chunk_rows(V)`). One chunk: the dense computation
    itself. Without grad (evaluation) the chunks are summed directly, with nothing to recompute."""
    n = hidden.shape[0]
    if hidden.dim() != 2 or target.shape != (n,):
        raise ValueError(f"chunked_cross_entropy: hidden must be (n, D) and target (n,), got "
                         f"{tuple(hidden.shape)} and {tuple(target.shape)}")
    chunk = chunk or chunk_rows(weight.shape[0])
    if n <= chunk:
        return F.cross_entropy(logits_of(hidden, weight, bias, softcap), target)
    if not torch.is_grad_enabled():
        return sum(_chunk_loss(hidden[s:s + chunk], target[s:s + chunk], weight, bias, softcap)
                   for s in range(0, n, chunk)) / n
    total = sum(checkpoint(_chunk_loss, hidden[s:s + chunk], target[s:s + chunk], weight, bias, softcap,
                           use_reentrant=False)
                for s in range(0, n, chunk))
    return total / n
