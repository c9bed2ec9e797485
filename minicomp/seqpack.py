"""Padding-free LLM input: the right-padded rows of a batch, repacked into fewer rows that each
hold several whole sequences, with position ids that restart at 0 for every sequence.

transformers reads such position ids (with no attention mask and no cache) as packed sequences:
its SDPA and eager paths build a block-diagonal causal mask, and flash-attention-2 runs its varlen
kernel. So one code path serves the CPU and CUDA, and every token sees exactly the tokens it
would see in its own padded row: the losses equal the padded computation to float rounding
(tests/test_seqpack.py).

    padded (B=4, L=6)          packed (R=2, L=6), first-fit decreasing
    a a a a a .                a a a a a ~
    b b . . . .       ->       c c c b b ~        ~: filler, a sequence of its own, never a label
    c c c . . .
    . . . . . .  (empty rows are dropped)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def plan_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sequence indices per row, first-fit decreasing: every row's total length ≤ capacity.
    Deterministic (ties keep their order); sequences of length 0 are left out."""
    if lengths and max(lengths) > capacity:
        raise ValueError(f"a sequence of {max(lengths)} tokens does not fit rows of {capacity}")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        if lengths[i] == 0:
            continue
        r = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if r is None:
            rows.append([])
            room.append(capacity)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= lengths[i]
    return rows


@dataclass
class RowPacking:
    """Where each slot of the packed rows comes from.

    src:          (R, Lp) long, the slot's index into the flattened padded layout (B·L), -1 on filler
    position_ids: (R, Lp) long, 0, 1, … within each sequence; filler counts from 0 as one more sequence
    seq:          (R, Lp) long, the padded row (sample) the slot belongs to, -1 on filler
    """
    src: torch.Tensor
    position_ids: torch.Tensor
    seq: torch.Tensor

    @classmethod
    def from_mask(cls, attention_mask: torch.Tensor, capacity: int | None = None) -> "RowPacking":
        """attention_mask (B, L), 1 on real tokens, right-padded. capacity: the row length (default L,
        so no row is longer than the padded batch; pass the total for a single row)."""
        if attention_mask.ndim != 2:
            raise ValueError(f"attention_mask must be (batch, length), got {tuple(attention_mask.shape)}")
        B, L = attention_mask.shape
        lengths = attention_mask.sum(1).tolist()  # (B,)
        if (attention_mask != (torch.arange(L, device=attention_mask.device) < attention_mask.sum(1, keepdim=True))).any():
            raise ValueError("attention_mask is not right-padded (real tokens first in every row)")
        rows = plan_rows(lengths, capacity or L)
        Lp = max(sum(lengths[i] for i in r) for r in rows) if rows else 1
        src = torch.full((max(1, len(rows)), Lp), -1, dtype=torch.long)
        pos = torch.zeros_like(src)
        seq = torch.full_like(src, -1)
        for r, members in enumerate(rows):
            at = 0
            for i in members:
                n = lengths[i]
                src[r, at:at + n] = i * L + torch.arange(n)
                pos[r, at:at + n] = torch.arange(n)
                seq[r, at:at + n] = i
                at += n
            pos[r, at:] = torch.arange(Lp - at)  # filler: one sequence of its own, attending only to itself
        dev = attention_mask.device
        return cls(src.to(dev), pos.to(dev), seq.to(dev))

    def pack(self, x: torch.Tensor, fill=0) -> torch.Tensor:
        """(B, L, ...) padded -> (R, Lp, ...) packed; filler slots hold `fill`."""
        flat = x.reshape(-1, *x.shape[2:])  # (B·L, ...)
        out = flat[self.src.clamp(min=0)]  # (R, Lp, ...)
        keep = (self.src >= 0).view(*self.src.shape, *([1] * (x.ndim - 2)))
        return torch.where(keep, out, torch.as_tensor(fill, dtype=x.dtype, device=x.device))

    def labels(self, labels: torch.Tensor, ignore: int) -> torch.Tensor:
        """Packed labels for next-token loss: a sequence's first token is never a target (the
        token before it belongs to another sequence), and filler is never one."""
        out = self.pack(labels, ignore)  # (R, Lp)
        first = self.position_ids == 0
        return out.masked_fill(first | (self.src < 0), ignore)

    def mean_per_sequence(self, h: torch.Tensor, n_seq: int) -> torch.Tensor:
        """h (R, Lp, D) packed -> (n_seq, D), the mean over each sequence's tokens (0 where empty)."""
        D = h.shape[-1]
        keep = self.seq >= 0
        sums = h.new_zeros(n_seq, D).index_add_(0, self.seq[keep], h[keep])  # (n_seq, D)
        counts = torch.bincount(self.seq[keep], minlength=n_seq).clamp(min=1).to(h.dtype)  # (n_seq,)
        return sums / counts[:, None]
