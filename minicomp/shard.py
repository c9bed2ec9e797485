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


# ---- whole tensors from shards: checkpoints, checks and the unsharded copy that evaluates ------

_FULL = dict(full_state_dict=True, cpu_offload=True)  # gathered to rank 0, on its CPU; {} on the others


def full_state_dict(model: nn.Module, tied_once: bool = False) -> dict:
    """The whole model's weights and buffers on rank 0 (CPU tensors), {} elsewhere. A collective:
    every rank calls it. tied_once: a parameter shared by several names (tied embeddings) under its
    first name only, as a DDP checkpoint stores it (gathered, the names no longer share memory)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    state = get_model_state_dict(model, options=StateDictOptions(**_FULL))
    if tied_once:
        first: dict[int, str] = {}
        aliases = {n for n, p in model.named_parameters(remove_duplicate=False) if first.setdefault(id(p), n) != n}
        state = {k: v for k, v in state.items() if k not in aliases}
    return state


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimiser's whole state keyed by parameter name on rank 0, {} elsewhere (a collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(**_FULL))


def load_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Set a sharded optimiser from `full_optimizer_state`'s dict, read on rank 0 only (the others
    pass {}): rank 0 broadcasts it and each rank keeps its shard. A collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True,
                                                                              broadcast_from_rank0=True))


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor; a plain tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def whole(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor from a DTensor's shards (a collective); a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
