"""FSDP2 for a CoMPModel: parameters, gradients and optimiser state sharded across processes with
PyTorch's `fully_shard`, on GPUs (NCCL) and on CPU processes (gloo) alike.

Units, each gathered for its forward and backward and resharded after:
- the vision tower as one unit: CRoPEViT runs its blocks inside its own forward, not through their
  `__call__`, where FSDP's hooks sit;
- each LLM decoder layer (the classes the LLM lists in `_no_split_modules`);
- the root, the CoMPModel: embeddings, head, merger and norms, gathered for the whole forward,
  because the alignment loss reads the word embeddings and the chunked cross-entropy the head
  outside the LLM's own forward (tied embeddings are one parameter there).

Every rank must call the same units in the same order. A rank whose batch has no image still runs
the image path, on a blank image weighted 0 (`CoMPModel.uniform_calls`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard


def decoder_layers(llm: nn.Module) -> list[nn.Module]:
    """The LLM's repeated layers: modules whose class the LLM names in `_no_split_modules`."""
    names = set(getattr(llm, "_no_split_modules", None) or [])
    layers = [m for m in llm.modules() if type(m).__name__ in names and m is not llm]
    if not layers:
        raise ValueError(f"{type(llm).__name__} names no layer classes in _no_split_modules ({sorted(names)}) that "
                         f"it contains: cannot shard it layer by layer")
    return layers


def shard(model: nn.Module, mesh=None, bf16: bool = False, reshard_after_forward: bool = True) -> nn.Module:
    """Apply FSDP2 to a CoMPModel in place (under an initialised process group) and return it.
    bf16: compute in bf16 and reduce gradients in fp32 (GPUs); else everything in the parameters' dtype."""
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else MixedPrecisionPolicy()
    kw = dict(mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model.vision, **kw)
    for layer in decoder_layers(model.llm):
        fully_shard(layer, **kw)
    fully_shard(model, **kw)
    model.uniform_calls = True
    return model
