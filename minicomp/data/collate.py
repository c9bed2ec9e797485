"""Examples -> one `Batch`: the documented input of `CoMPModel.forward`."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .tokenize import IGNORE


@dataclass
class Batch:
    """A padded batch of B examples.

    images:         list of (3, H_i, W_i) tensors, one per sample that has an image (for packing)
    image_index:    (n_images,) long, which sample each image belongs to
    input_ids:      (B, L) long, right-padded with pad_id; image positions hold the image token id
    attention_mask: (B, L) long, 1 on real tokens
    labels:         (B, L) long, token ids on supervised (assistant) positions, -100 elsewhere
    align_ids:      (B, La) long, the caption alone (no image, no template), right-padded
    align_mask:     (B, La) long
    ids:            list of B sample ids
    skipped:        records that failed when read and were replaced, as (reason, "record: error")
    """
    images: list[torch.Tensor]
    image_index: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    align_ids: torch.Tensor
    align_mask: torch.Tensor
    ids: list
    skipped: list = field(default_factory=list)

    def to(self, device) -> "Batch":
        return Batch([x.to(device) for x in self.images],
                     *(t.to(device) for t in (self.image_index, self.input_ids, self.attention_mask, self.labels,
                                              self.align_ids, self.align_mask)), self.ids, self.skipped)


def _pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), L), value, dtype=torch.long)
    mask = torch.zeros(len(rows), L, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
    return out, mask


def collate(examples: list[dict], pad_id: int) -> Batch:
    """Pad token rows, keep images as a list (they are packed, not padded)."""
    if not examples:
        raise ValueError("collate: empty list of examples")
    input_ids, attention = _pad([e["input_ids"] for e in examples], pad_id)
    labels, _ = _pad([e["labels"] for e in examples], IGNORE)
    align_ids, align_mask = _pad([e["align_ids"] for e in examples], pad_id)
    with_image = [i for i, e in enumerate(examples) if e["pixels"] is not None]
    return Batch([examples[i]["pixels"] for i in with_image], torch.tensor(with_image, dtype=torch.long),
                 input_ids, attention, labels, align_ids, align_mask, [e["id"] for e in examples])
