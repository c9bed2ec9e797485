"""Checkpoints of a training run: written to a temporary folder and renamed when complete, so a
kill during a save never leaves a checkpoint that looks valid but is torn; only the newest
`keep` are kept. Each holds the optimiser, scheduler and RNG states (accelerate's `save_state`;
under FSDP2 the optimiser gathered whole, `save_sharded_state`), the full weights and a meta.json
(stage, step, evaluations), written last. Whole tensors in both: nothing in a checkpoint depends
on how the model was sharded."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_model, save_file

from .shard import full_optimizer_state, full_state_dict, load_optimizer_state, local


class _TiedWeightsNote(logging.Filter):
    """accelerate's `save_state` warns at every save that it stored a tied tensor once ("Removed
    shared tensor {'llm.lm_head.weight'}"). For an LLM with tied embeddings that is expected, and
    exact resume is tested, so the note is dropped; any other accelerate message still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


logging.getLogger("accelerate.utils.other").addFilter(_TiedWeightsNote())


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder counts only once renamed, with its meta.json)."""
    root = out / "checkpoints"
    done = [p for p in root.glob("step-*") if (p / "meta.json").is_file()] if root.is_dir() else []
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


TORN = (OSError, ValueError, KeyError, RuntimeError, SafetensorError)  # what reading a torn checkpoint raises


def checkpoint_meta(ckpt: Path) -> dict:
    """The meta.json of a checkpoint that is whole on disk, or an error naming what is torn: a
    meta.json that does not parse or lacks the step, no optimiser state, or a model.safetensors
    shorter than its header says (its tensors are not read here)."""
    meta = json.loads((ckpt / "meta.json").read_text())
    if not isinstance(meta, dict) or not {"stage_index", "step", "global_step"} <= set(meta):
        raise ValueError("meta.json lacks stage_index, step or global_step")
    if not (ckpt / "state").is_dir():
        raise FileNotFoundError(f"{ckpt / 'state'} is missing")
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:  # checks the file covers its header
        f.keys()
    return meta


def newest_usable(found: list[Path]) -> dict | None:
    """The meta of the newest of `found` that `checkpoint_meta` accepts (what a resume starts
    from, unless its weights then fail to load), or None."""
    for ckpt in reversed(found):
        try:
            return checkpoint_meta(ckpt)
        except TORN:
            continue
    return None


def load_checkpoint(model, found: list[Path], say) -> tuple[Path, dict]:
    """Load the newest usable checkpoint of `found` into `model`: -> (its folder, its meta). One
    that is torn (`checkpoint_meta`), or whose weights do not load, is named and passed over for
    the one before; none usable is an error naming each."""
    errors = []
    for ckpt in reversed(found):
        try:
            meta = checkpoint_meta(ckpt)
            load_model(model, str(ckpt / "model.safetensors"))  # reads the whole file before any weight is set
            if errors:
                say(f"resuming from {ckpt.name}, the newest usable checkpoint; passed over: " + "; ".join(errors))
            return ckpt, meta
        except TORN as e:
            errors.append(f"{ckpt}: {type(e).__name__}: {e}")
    raise RuntimeError("no usable checkpoint to resume from: " + "; ".join(errors))


def nonfinite_state(model, optimizer) -> list[str]:
    """Names of the parameters and optimiser-state tensors that hold a NaN or an infinity."""
    names = {id(p): n for n, p in model.named_parameters()}
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(local(p.detach())).all()]  # this rank's
    for p, state in optimizer.state.items():                                                     # shard, if sharded
        bad += [f"optimiser {k} of {names.get(id(p), '?')}" for k, v in state.items()
                if torch.is_tensor(v) and v.is_floating_point() and not torch.isfinite(local(v)).all()]
    return bad


def set_aside(ckpt: Path) -> Path:
    """Rename a checkpoint out of `checkpoints()`'s sight (kept for inspection): poisoned-step-…"""
    to = ckpt.with_name(f"poisoned-{ckpt.name}")
    shutil.rmtree(to, ignore_errors=True)
    ckpt.rename(to)
    return to


def save_model_state(state: dict, path: Path) -> None:
    """Weights to safetensors; a tensor shared by two names (tied embeddings) is stored once."""
    seen, out = set(), {}
    for k, v in state.items():
        key = (v.data_ptr(), v.shape, v.dtype) if v.device.type != "meta" else k
        if key not in seen:
            seen.add(key)
            out[k] = v.detach().cpu().contiguous()
    save_file(out, str(path))


def save_checkpoint(accelerator, model, out: Path, meta: dict, keep: int, sharded: tuple | None = None) -> Path:
    """sharded: (optimizer, scheduler) of an FSDP2 model (`minicomp.shard`), which accelerate did not
    prepare; else accelerate's prepared model, optimiser and scheduler are saved."""
    name = f"step-{meta['global_step']:07d}"
    final, tmp = out / "checkpoints" / name, out / "checkpoints" / f".tmp-{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "state").mkdir(parents=True)
    accelerator.wait_for_everyone()
    if sharded:
        save_sharded_state(accelerator, model, *sharded, tmp / "state")
        state = full_state_dict(model, tied_once=True)
    else:
        accelerator.save_state(str(tmp / "state"))  # optimiser, scheduler, RNG states (every rank)
        state = accelerator.get_state_dict(model)  # the full weights on the main process
    accelerator.wait_for_everyone()  # every rank's files are in `tmp` before the main process renames it
    if accelerator.is_main_process:
        save_model_state(state, tmp / "model.safetensors")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))  # written last: marks it complete
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoints(out)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def save_sharded_state(accelerator, model, optimizer, scheduler, folder: Path) -> None:
    """An FSDP2 run's optimiser (gathered whole, keyed by parameter name), schedule and each rank's
    RNG state. Every rank calls it."""
    opt = full_optimizer_state(model, optimizer)
    rng = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    torch.save(rng, folder / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        torch.save(opt, folder / "optimizer.pt")
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")


def load_sharded_state(accelerator, model, optimizer, scheduler, folder: Path) -> None:
    """Undo `save_sharded_state` into a sharded model's fresh optimiser and schedule (every rank)."""
    opt = torch.load(folder / "optimizer.pt", weights_only=True) if accelerator.is_main_process else {}
    load_optimizer_state(model, optimizer, opt)
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    rng_file = folder / f"rng-{accelerator.process_index}.pt"
    if rng_file.is_file():  # absent if this rank did not exist when it was saved: it keeps the seed's
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
