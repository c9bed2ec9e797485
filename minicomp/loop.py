"""The main job's loop: CoMP's three-stage recipe in one `accelerate` loop, on a CPU or on many GPUs.

    from minicomp.train import train      # or minicomp.loop; `minicomp train` is its command line
    meta = train(load_config("tiny"), "runs/tiny")

`parallel: fsdp2` shards parameters, gradients and optimiser state across the processes
(`minicomp.shard`, PyTorch's FSDP2), on GPUs and on CPU processes alike; the default is DDP.
Each stage starts from the previous stage's weights. Data order is a fixed function of the seed
and the step, so `resume` continues mid-stage exactly where the run stopped (checkpoints:
`minicomp.checkpoint`; the report: `minicomp.report`; the stage data: `minicomp.stage_data`).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .config import TrainConfig
from .evaluate import resolution_sweep, with_control
from .model import CoMPModel
from .checkpoint import checkpoints, load_checkpoint, load_sharded_state, nonfinite_state, save_checkpoint
from .report import stage_mode, write_report
from .resume import check_resume_config, poisoned_note, read_metrics
from .runlock import lock_run_dir, unlock_run_dir
from .shard import full_state_dict, shard, whole
from .stage_data import StepBatches, build_dataset, check_data, resolve_data, sample_order, word_prior_counts
from .stages import Stage, apply_stage

log = logging.getLogger(__name__)


# ---- the loop -------------------------------------------------------------------------------

def _log_line(path: Path, record: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def train(cfg: TrainConfig, out: str | Path, resume: bool = False, data_root: str | Path | None = None,
          stop_after: int | None = None, progress: bool = True, force: bool = False) -> dict:
    """Run every stage of `cfg`; write metrics, checkpoints, per-stage models, the final model and
    a report under `out`. `stop_after` (tests): return after that many optimiser steps in all.
    A resume must use the saved config; force=True lets the fields of RESUME_SAFE differ.
    progress=False: no progress bars (e.g. in a notebook executed for the web, where a bar's
    widget would be saved frozen); the per-stage lines still print."""
    out = Path(out)
    data = resolve_data(cfg, data_root)  # errors before any model loads
    check_data(cfg, data)  # so is a stage whose data has no usable record
    # Text-only records (LLaVA files) leave the vision encoder out of some batches, and "learnable"
    # prototypes are unused where the alignment loss is off: DDP must look for unused parameters
    # then. In the toy world every trainable parameter takes part in every step (and DDP warns
    # when asked to look in vain).
    unused = any("path" in d for d in data.values()) or cfg.model.get("variant") == "learnable"
    ddp = DistributedDataParallelKwargs(find_unused_parameters=unused)
    cuda = torch.cuda.is_available()
    accelerator = Accelerator(mixed_precision="bf16" if cuda else "no", cpu=not cuda, kwargs_handlers=[ddp],
                              log_with=_trackers(), project_dir=str(out),  # cpu=True: gloo under torchrun
                              step_scheduler_with_optimizer=False)  # our steps are global: one schedule step each
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world != accelerator.num_processes:
        raise RuntimeError(f"launched as {world} processes but accelerate sees {accelerator.num_processes}: "
                           f"every process would train alone. Check the launcher's settings.")
    if accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError("accelerate was launched with distributed_type FSDP; minicomp shards the model itself: "
                         "launch as multi-GPU (configs/accelerate/fsdp2.yaml) and set parallel: fsdp2")
    fsdp = cfg.parallel == "fsdp2"
    if fsdp and accelerator.num_processes < 2:
        raise ValueError("parallel: fsdp2 shards across processes and this run has one: launch two or more "
                         "(--procs 2 on a CPU, accelerate launch on GPUs), or set parallel: ddp")
    main = accelerator.is_main_process
    say = (tqdm.write if progress else print) if main else (lambda *a, **k: None)
    if main:
        lock_run_dir(out)  # before anything in `out` is read or written: one run per directory
    found = checkpoints(out)
    if not resume and found:
        raise FileExistsError(f"{out} already has checkpoints: pass --resume to continue, or choose another --out")
    if resume and found:
        check_resume_config(out, cfg, force)  # before anything in `out` is overwritten
    if main:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / "config.json.tmp"  # replaced whole: the other ranks may be reading it (the resume check)
        tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
        os.replace(tmp, out / "config.json")
        if not found and (out / "metrics.jsonl").is_file():  # a fresh run: no old metrics to append to
            say(f"{out}: no complete checkpoint, starting afresh (the old metrics.jsonl is replaced)")
            (out / "metrics.jsonl").unlink()
    set_seed(cfg.seed)
    model = CoMPModel.from_pretrained(pretrained=cfg.pretrained, **cfg.model)
    unit = model.vision.patch_size * model.config.merge
    for s in cfg.stages:  # a fixed square must cut into whole merged tokens
        if s.resolution == "fixed" and s.fixed_size % unit:
            raise ValueError(f"stages.{s.name}.fixed_size: {s.fixed_size} px is not a multiple of patch × merge "
                             f"= {unit} px for this model")
    counts = word_prior_counts(cfg, data, model, say, progress and main)  # before loading a checkpoint: it holds the prior too
    if counts is not None:
        model.set_word_prior(counts, cfg.word_prior_rule)
    meta = {"stage_index": 0, "step": 0, "global_step": 0, "evals": {}, "stage_minutes": {}, "skipped_when_read": {}}
    ckpt = None
    if resume and found:
        ckpt, meta = load_checkpoint(model, found, say)  # the newest that loads; torn ones are named
        if main and (out / "metrics.jsonl").is_file():  # drop records of steps after the checkpoint (they are
            keep = [rec for rec in read_metrics(out / "metrics.jsonl")  # redone) and a torn last line
                    if rec["global_step"] <= meta["global_step"]]
            (out / "metrics.jsonl").write_text("".join(json.dumps(rec) + "\n" for rec in keep))
        say(f"resuming from {ckpt}: stage {cfg.stages[meta['stage_index']].name if meta['stage_index'] < len(cfg.stages) else 'done'}, step {meta['step']}")
    plain = model  # the whole model: evaluated and saved by the main process
    if fsdp:  # from here on `model` holds this rank's shards; `plain` is refreshed from them when needed
        plain = copy.deepcopy(model) if main else None
        shard(model.to(accelerator.device), bf16=cuda)
    if main and _trackers():
        accelerator.init_trackers(cfg.name, config={"preset": cfg.name, "global_batch": cfg.global_batch,
                                                    "micro_batch": cfg.micro_batch, "seed": cfg.seed})
    metrics_file, steps_done = out / "metrics.jsonl", 0
    for si, stage in enumerate(cfg.stages):
        if si < meta["stage_index"]:
            continue
        start = meta["step"] if si == meta["stage_index"] else 0
        G = stage.batch or cfg.global_batch
        if G % (cfg.micro_batch * accelerator.num_processes):
            raise ValueError(f"stage {stage.name}: global batch {G} is not a multiple of micro_batch × processes "
                             f"= {cfg.micro_batch} × {accelerator.num_processes}")
        ds = build_dataset(data[stage.data], cfg.seed, cfg.strict_data)
        steps = stage.steps or len(ds) // G
        groups = apply_stage(model, stage, log_fn=say)
        if plain is not None and plain is not model:
            apply_stage(plain, stage, log_fn=lambda *a: None)  # RoPE and the alignment loss as trained
        opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        sched = get_cosine_schedule_with_warmup(opt, math.ceil(cfg.warmup_ratio * steps), steps)
        accelerator.free_memory()
        if fsdp:  # sharded by minicomp.shard: accelerate only launches, reduces and logs
            wrapped = model
            if start:
                load_sharded_state(accelerator, model, opt, sched, ckpt / "state")
        else:
            wrapped, opt, sched = accelerator.prepare(model, opt, sched)
            if start:
                accelerator.load_state(str(ckpt / "state"))  # the optimiser and schedule mid-stage
        proc = model.processor(fixed_size=stage.fixed_size if stage.resolution == "fixed" else None,
                               min_tokens=stage.min_tokens, max_tokens=stage.max_tokens, max_length=stage.max_length)
        batches = StepBatches(ds, proc, sample_order(len(ds), steps * G, cfg.seed + 1000 * si), G, cfg.micro_batch,
                              accelerator.process_index, accelerator.num_processes, model.tokenizer.pad_token_id,
                              strict=cfg.strict_data)
        loader = DataLoader(batches, batch_size=None, num_workers=cfg.num_workers,
                            sampler=range(start * batches.accum, len(batches)))
        it, t_stage = iter(loader), time.time()
        params = [p for g in groups for p in g["params"]]
        bar = tqdm(range(start, steps), desc=f"stage {stage.name}", unit="step", disable=not (main and progress))
        for step in bar:
            t0, sums, vis, n_img = time.time(), torch.zeros(5), 0, 0
            for a in range(batches.accum):
                batch = next(it).to(accelerator.device)
                for _, what in batch.skipped:  # failed when read, replaced by the next record
                    log.warning("stage %s step %d: skipped a record that failed when read, %s", stage.name, step + 1, what)
                last = a == batches.accum - 1  # FSDP2 reduce-scatters every micro-batch: sharded gradients accumulate
                sync = contextlib.nullcontext() if last or fsdp else accelerator.no_sync(wrapped)
                with sync, accelerator.autocast():
                    o = wrapped(batch)
                    accelerator.backward(o.loss / batches.accum)
                sums += torch.stack([o.loss.detach().float().cpu(), o.loss_dec.detach().float().cpu(),
                                     o.loss_align.detach().float().cpu(), torch.tensor(len(batch.skipped) * 1.0),
                                     batch.attention_mask.sum().float().cpu()])
                vis += int((batch.input_ids == model.config.image_token_id).sum())
                n_img += len(batch.images)
            totals = accelerator.reduce(sums.to(accelerator.device), "sum").cpu()  # over processes
            loss, loss_dec, loss_align = (totals[:3] / (batches.accum * accelerator.num_processes)).tolist()
            if totals[3] > 0:
                skips = meta.setdefault("skipped_when_read", {})
                skips[stage.name] = skips.get(stage.name, 0) + int(totals[3])
            if not all(map(math.isfinite, (loss, loss_dec, loss_align))):
                raise FloatingPointError(f"stage {stage.name} step {step}: loss {loss}, loss_dec {loss_dec}, loss_align "
                                         f"{loss_align}; stopped before the update. " + poisoned_note(accelerator, out, meta))
            clip = torch.nn.utils.clip_grad_norm_ if fsdp else accelerator.clip_grad_norm_  # fsdp: over every rank's shards
            norm = clip(params, cfg.grad_clip)  # the total norm before clipping
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            meta["step"], meta["global_step"], steps_done = step + 1, meta["global_step"] + 1, steps_done + 1
            rec = {"stage": stage.name, "step": step + 1, "global_step": meta["global_step"], "loss": loss,
                   "loss_dec": loss_dec, "loss_align": loss_align, "grad_norm": grad_norm,
                   **{f"lr_{g['name']}": g["lr"] for g in opt.param_groups},
                   "tokens": int(totals[4]), "tokens_per_s": float(totals[4]) / (time.time() - t0),  # every process's
                   "visual_tokens_per_image": vis / max(1, n_img)}
            if main and (step + 1) % cfg.log_every == 0:
                _log_line(metrics_file, rec)
                accelerator.log({k: v for k, v in rec.items() if k != "stage"}, step=meta["global_step"])
                bar.set_postfix(loss_dec=f"{loss_dec:.3f}", loss_align=f"{loss_align:.2f}")
            end = step + 1 == steps
            if end or (cfg.save_every and (step + 1) % cfg.save_every == 0):
                if end:
                    bar.update(1)  # this last step, then close the bar before the evaluation:
                    bar.close()  # its rate is the training steps' alone
                    meta["stage_minutes"][stage.name] = meta["stage_minutes"].get(stage.name, 0) + (time.time() - t_stage) / 60
                    meta["stage_index"], meta["step"] = si + 1, 0
                    _refresh(plain, model, fsdp)  # every rank takes part in gathering the shards
                    if cfg.eval_samples and main and (cfg.eval_stages == "all" or si == len(cfg.stages) - 1):
                        with _all_cores(accelerator), _on(plain, accelerator.device):
                            meta["evals"][stage.name] = _evaluate(plain, stage, cfg)
                        ev = meta["evals"][stage.name]
                        say(f"stage {stage.name}: exact match {ev['accuracy']:.3f} (blank images "
                            f"{ev['blank']['accuracy']:.3f}) on {ev['n']} held-out questions ({stage_mode(stage)}); "
                            "real (blank, chance): " + ", ".join(
                                f"{k} {v['accuracy']:.2f} ({ev['blank']['by_question'][k]['accuracy']:.2f}, "
                                f"{v['chance']:.2f})" for k, v in ev["by_question"].items() if k != "all"))
                    meta = _broadcast(accelerator, meta)
                    meta["rank_checksums"] = _rank_checksums(accelerator, model)
                bad = nonfinite_state(model, opt)  # only finite weights and optimiser state make a checkpoint
                if accelerator.reduce(torch.tensor([float(len(bad))], device=accelerator.device), "sum").item():
                    raise FloatingPointError(f"stage {stage.name} step {step + 1}: not finite after the update: "
                                             f"{', '.join(bad[:4])}{' …' if len(bad) > 4 else ''}; not saved. "
                                             + poisoned_note(accelerator, out, meta))
                save_checkpoint(accelerator, wrapped, out, meta, cfg.keep_checkpoints, sharded=(opt, sched) if fsdp else None)
                if end and main:
                    plain.save_pretrained(out / "stages" / stage.name)
            if stop_after is not None and steps_done >= stop_after:
                accelerator.end_training()
                unlock_run_dir(out)
                return meta
        bar.close()
    _refresh(plain, model, fsdp)
    if main:
        model = plain
        if cfg.eval_samples and cfg.eval_sweep:  # the final model at every stage's resolution and every budget of eval_budgets:
            sizes = {stage_mode(s): _size(s) for s in cfg.stages}  # what resolution alone changes
            sizes.update({f"native ≤{b} tokens": {"max_tokens": b} for b in cfg.eval_budgets})
            sizes = dict(sorted(sizes.items(), key=lambda kv: ("max_tokens" in kv[1], *kv[1].values())))  # squares,
            #                                                                          then budgets, small to large
            with _all_cores(accelerator), _on(model, accelerator.device):
                meta["by_resolution"] = resolution_sweep(model, sizes, cfg.eval_samples,
                                                         max_new_tokens=cfg.eval_max_new_tokens, seed=cfg.seed)
        model.save_pretrained(out / "model")
        write_report(out, cfg, meta)
        tmp = out / ".tmp-results.json"  # every evaluation, machine-readable (minicomp reproduce reads it)
        tmp.write_text(json.dumps({k: meta.get(k, {}) for k in ("evals", "by_resolution", "stage_minutes")}))
        os.replace(tmp, out / "results.json")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    unlock_run_dir(out)
    return meta


@contextlib.contextmanager
def _all_cores(accelerator):
    """Evaluation runs on the main process while the others wait in a collective: on a CPU, let
    it use the threads of every process of this machine meanwhile."""
    n = torch.get_num_threads()
    if accelerator.device.type == "cpu" and accelerator.num_processes > 1:
        local = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
        torch.set_num_threads(min(os.cpu_count() or n, n * local))
    try:
        yield
    finally:
        torch.set_num_threads(n)


@contextlib.contextmanager
def _on(model, device):
    """The model on `device` for a while: FSDP2's unsharded copy lives on the CPU between evaluations."""
    home = next(model.parameters()).device
    model.to(device)
    try:
        yield
    finally:
        model.to(home)


def _evaluate(model, stage: Stage, cfg: TrainConfig) -> dict:
    """Exact match at the stage's resolution, with the blank-image control under "blank"."""
    return with_control(model, cfg.eval_samples, **_size(stage), max_new_tokens=cfg.eval_max_new_tokens, seed=cfg.seed)


def _refresh(plain, model, fsdp: bool) -> None:
    """Under FSDP2, gather the shards of `model` into the main process's unsharded `plain` (every
    rank calls it); under DDP `plain` is `model` itself."""
    if fsdp:
        state = full_state_dict(model)
        if plain is not None:
            plain.load_state_dict(state)


def _size(stage: Stage) -> dict:
    return {"fixed_size": stage.fixed_size} if stage.resolution == "fixed" else {"max_tokens": stage.max_tokens}


def _rank_checksums(accelerator, model) -> list[str]:
    """A hash of every parameter's bytes, from each process: DDP ranks must agree exactly, and
    FSDP2's shards gathered whole on each rank."""
    import hashlib

    h = hashlib.sha256()
    for p in model.parameters():
        h.update(whole(p.detach()).float().cpu().numpy().tobytes())
    if accelerator.num_processes == 1:
        return [h.hexdigest()]
    from accelerate.utils import gather_object
    sums = gather_object([h.hexdigest()])
    if len(set(sums)) != 1:
        raise RuntimeError(f"the processes' weights differ after a stage: {sums}")
    return sums


def _broadcast(accelerator, obj):
    if accelerator.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list
    return broadcast_object_list([obj])[0]


def _trackers():
    try:
        import tensorboard  # noqa: F401
        return "tensorboard"
    except ImportError:
        return None
