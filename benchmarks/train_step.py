"""Training-step throughput, measured on what the preset really trains.

    python benchmarks/train_step.py                        # tiny, Stage II-native: samples/s and the split by part
    python benchmarks/train_step.py --stage III            # another stage
    python benchmarks/train_step.py --against c216eef      # this tree and an older commit, interleaved in one run
    python benchmarks/train_step.py --kernels              # CPU time by kind of kernel, and the speed-up it leaves
    python benchmarks/train_step.py --ranks                # what running as DDP ranks costs: waits, all-reduce
    python benchmarks/train_step.py --paper                # CUDA: paper-1b-siglip's architecture (random
                                                           # weights), a native-resolution batch, with MFU

A step is what `minicomp train` runs: the stage's own data task, processor and micro-batch, the
`DataLoader` over `StepBatches` with the preset's `num_workers`, gradient accumulation to the
global batch, clipping and AdamW, in the processes `minicomp train --procs auto` starts on this
machine (on a CPU: DDP ranks over gloo with cores/procs threads each; `--procs N` to choose).
With --against, each tree runs in its own processes (the old one from `git archive REV`, as one
process by default, `--old-procs`: older trees had no CPU launcher), and the two take turns, a
few steps each, so that both see the same machine; medians and the ratio come from that one run.

The split by part times each part alone, in this process with one rank's threads, on one rank's
share of a step (vision, merger and LLM forward + backward, the caption pass for F_t, the
alignment loss, the optimiser, data preparation); their sum is printed beside the measured step,
so what is not attributed (the all-reduce, waiting for the slower rank) is visible. Then the
model's FLOP/s in the step beside a plain matmul at the ViT's MLP shape on the same threads: how
far the step is from what this CPU does at its best.

--ranks measures what the split leaves out: the preset's DDP ranks take steps with and without
the gradient all-reduce in turns (no_sync; in the order with, without, without, with, ...), and
each rank times its wait for data, its forward + backward, its wait at the reduce of the logged
losses and its optimiser. With the all-reduce, it and the wait for the slower rank happen inside
backward; without it, the faster rank waits at the reduce. The all-reduce costs the difference
between the two kinds of step (medians of the slower rank's); the two kinds see different batches,
so more --steps give a steadier figure. The ranks' imbalance is the median gap between their
forward + backward in the steps without it.

MFU (--paper) counts 6 FLOPs per parameter per token for the LLM and for the ViT's patches
(forward + backward), plus the attention score and value products, over the step time and the
GPU's dense bf16 peak (--peak-tflops, 989 for an H100 SXM).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import minicomp as mc
import minicomp.data as d
from minicomp.config import load_config
from minicomp.stages import apply_stage

ROOT = Path(__file__).resolve().parents[1]


def model_flops(model, batch) -> float:
    """Approximate training FLOPs of one forward + backward on `batch`."""
    vit_params = sum(p.numel() for p in model.vision.parameters())
    llm_params = sum(p.numel() for n, p in model.llm.named_parameters() if "embed_tokens" not in n)
    patches = [int(h * w) for h, w in (torch.tensor([x.shape[1:] for x in batch.images]) // model.vision.patch_size).tolist()]
    tokens = int(batch.attention_mask.sum())
    L, D = model.llm.config.num_hidden_layers, model.llm.config.hidden_size
    attn_llm = sum(4 * n * n * D * L for n in batch.attention_mask.sum(1).tolist())  # QKᵀ and AV
    attn_vit = sum(4 * n * n * model.vision.embed_dim * len(model.vision.blocks) for n in patches)
    return 3 * (2 * vit_params * sum(patches) + 2 * llm_params * tokens + attn_llm + attn_vit)


# ---- the tiny preset's step, as it trains ---------------------------------------------------

def _setup(preset: str, stage_name: str, steps: int, sets: list[str] = (), world: int = 1):
    """The preset's model, optimiser and step iterator for one stage (works on older trees too).
    world > 1: this process is one rank of a DDP group over gloo (accelerate, as `minicomp train`
    under its CPU launcher), with its share of every micro-batch step."""
    import contextlib
    from torch.utils.data import DataLoader
    from minicomp.stage_data import StepBatches, build_dataset, sample_order

    torch.manual_seed(0)
    cfg = load_config(preset, sets=sets)
    stage = cfg.stage(stage_name)
    model = mc.CoMPModel.from_pretrained(pretrained=True, **cfg.model)
    model.set_word_prior(torch.ones(model.llm.get_input_embeddings().num_embeddings))  # its value costs nothing
    groups = apply_stage(model, stage, log_fn=lambda *_: None)
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    G = stage.batch or cfg.global_batch
    ds = build_dataset(cfg.data[stage.data], cfg.seed)
    proc = model.processor(fixed_size=stage.fixed_size if stage.resolution == "fixed" else None,
                           min_tokens=stage.min_tokens, max_tokens=stage.max_tokens, max_length=stage.max_length)
    rank, wrapped, no_sync = 0, model, lambda: contextlib.nullcontext()
    if world > 1:  # as minicomp.loop: DDP through accelerate, every trainable parameter used in every step
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs
        acc = Accelerator(cpu=True, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
        rank = acc.process_index
        wrapped, opt = acc.prepare(model, opt)
        no_sync = lambda: acc.no_sync(wrapped)
    batches = StepBatches(ds, proc, sample_order(len(ds), steps * G, cfg.seed), G, cfg.micro_batch, rank, world,
                          model.tokenizer.pad_token_id)
    loader = iter(DataLoader(batches, batch_size=None, num_workers=cfg.num_workers))
    params = [p for g in groups for p in g["params"]]

    def step(sync: bool = True, parts: dict | None = None) -> float:
        """One optimiser step -> seconds. sync=False: no gradient all-reduce (every micro-batch under
        no_sync). parts: filled with this rank's seconds waiting for data, in forward + backward (with
        the all-reduce: it runs inside backward, and so does the wait for the slower rank), at the
        reduce of the logged losses (without it, where the faster rank waits) and in the optimiser,
        and with "grad", the sum of this rank's gradients (untimed): equal on every rank when they
        were all-reduced."""
        t = time.perf_counter()
        sums = torch.zeros(5)
        waited = computed = 0.0
        for a in range(batches.accum):
            t0 = time.perf_counter()
            b = next(loader)
            t1 = time.perf_counter()
            with contextlib.nullcontext() if sync and a == batches.accum - 1 else no_sync():
                out = wrapped(b)
                (out.loss / batches.accum).backward()
            sums += torch.stack([out.loss.detach(), out.loss_dec.detach(), out.loss_align.detach(), torch.tensor(0.0),
                                 b.attention_mask.sum().float()])
            waited, computed = waited + t1 - t0, computed + time.perf_counter() - t1
        t2 = time.perf_counter()
        if world > 1:
            torch.distributed.all_reduce(sums)  # minicomp.loop's per-step reduce of the logged losses
        t3 = time.perf_counter()
        if parts is not None:
            parts["grad"] = sum(p.grad.double().sum().item() for p in params if p.grad is not None)
        t4 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        end = time.perf_counter()
        if parts is not None:
            parts.update({"data": waited, "forward + backward": computed, "waiting": t3 - t2, "optimiser": end - t4,
                          "step": end - t - (t4 - t3)})
        return end - t - (t4 - t3)

    return cfg, stage, model, opt, batches, step, G


def worker(args) -> None:
    """Run steps on request: a line "N" on rank 0's stdin -> N step times (rank 0's, which wait for
    every rank at the gradient all-reduce) as one JSON line on its stdout."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cfg, stage, model, _, batches, step, G = _setup(args.preset, args.stage, args.steps, args.set, world)
    step(), step()  # warm-up
    rank0 = world == 1 or torch.distributed.get_rank() == 0
    if rank0:
        print(json.dumps({"ready": True, "global_batch": G, "micro_batch": cfg.micro_batch,
                          "num_workers": cfg.num_workers, "procs": world, "threads": torch.get_num_threads()}),
              flush=True)
    while True:
        n = [int(line) if (line := sys.stdin.readline().strip()) not in ("", "quit") else 0] if rank0 else [0]
        if world > 1:
            torch.distributed.broadcast_object_list(n, src=0)
        if not n[0]:
            break
        times = [step() for _ in range(n[0])]
        if rank0:
            print(json.dumps(times), flush=True)
    if world > 1:
        torch.distributed.destroy_process_group()


class _Ranks:
    """The processes of one worker group: rank 0's pipes, and a wait for all of them."""

    def __init__(self, procs: list[subprocess.Popen]):
        self.procs, self.stdin, self.stdout = procs, procs[0].stdin, procs[0].stdout

    def wait(self) -> None:
        for p in self.procs:
            p.wait()


def _spawn(tree: Path, args, sets: list[str], procs: int = 1, extra: tuple[str, ...] = ()) -> _Ranks:
    """A worker on `tree`: one process with the machine's threads, or `procs` DDP ranks over gloo
    with cores/procs threads each, as `minicomp train`'s CPU launcher starts them. extra: more
    worker flags (--ranks)."""
    from minicomp.launch import threads_per_process
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *extra, "--preset", args.preset,
           "--stage", args.stage, "--steps", str(args.steps + 4), *(["--set", *sets] if sets else [])]
    if procs == 1:
        return _Ranks([subprocess.Popen(cmd, cwd=tempfile.gettempdir(), env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(procs),
               OMP_NUM_THREADS=str(threads_per_process(procs)))
    return _Ranks([subprocess.Popen(cmd, cwd=tempfile.gettempdir(), env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                    stdin=subprocess.PIPE if r == 0 else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE if r == 0 else subprocess.DEVNULL, text=True)
                   for r in range(procs)])


def against(args) -> None:
    """This tree and `args.against` (a git revision), taking turns in one run."""
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.against, "minicomp"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        names = {f"{args.against} (old)": old, "this tree": ROOT}
        counts = dict(zip(names, (args.old_procs, args.procs or _launcher_procs(args))))  # name -> processes
        procs = {n: _spawn(t, args, args.set if t == ROOT else [], counts[n]) for n, t in names.items()}
        info = {n: json.loads(p.stdout.readline()) for n, p in procs.items()}
        times: dict[str, list[float]] = {n: [] for n in procs}
        per_turn = 3
        for r in range(args.steps // per_turn):
            for n in (list(procs) if r % 2 == 0 else list(procs)[::-1]):  # alternate who goes first
                time.sleep(0.5)  # the other process's OpenMP threads stop spinning before this turn
                procs[n].stdin.write(f"{per_turn}\n")
                procs[n].stdin.flush()
                times[n] += json.loads(procs[n].stdout.readline())
        for p in procs.values():
            p.stdin.write("quit\n")
            p.stdin.flush()
            p.wait()
    print(f"{args.preset}, stage {args.stage}, CPU fp32, {os.cpu_count()} cores; "
          f"{args.steps} steps each, taking turns {per_turn} at a time")
    base = None
    for n, ts in times.items():
        med = statistics.median(ts)
        i = info[n]
        base = base or med
        print(f"  {n:22s} {i.get('procs', 1)} x {i.get('threads', '?')} thread(s), micro-batch {i['micro_batch']:2d}, "
              f"workers {i['num_workers']}: step {med * 1000:6.0f} ms, {i['global_batch'] / med:5.1f} samples/s, "
              f"{base / med:.2f}x")


def _launcher_procs(args) -> int:
    """The processes `minicomp train --procs auto` starts on this machine for the preset."""
    from minicomp.launch import cpu_processes
    return cpu_processes(load_config(args.preset, sets=args.set), os.cpu_count() or 1)


def _run_group(args, procs: int) -> tuple[dict, list[float]]:
    """The step as `minicomp train` runs it here: `procs` DDP ranks (or one process) in their own
    processes -> (their info, args.steps step times)."""
    group = _spawn(ROOT, args, args.set, procs)
    info = json.loads(group.stdout.readline())
    group.stdin.write(f"{args.steps}\n")
    group.stdin.flush()
    times = json.loads(group.stdout.readline())
    group.stdin.write("quit\n")
    group.stdin.flush()
    group.wait()
    return info, times


def ranks_worker(args) -> None:
    """One DDP rank of --ranks: steps with and without the gradient all-reduce in turns (with,
    without, without, with, ...: neither kind always follows the other), after two warm-up steps;
    rank 0 prints every rank's parts of every step as one JSON line."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    n = args.steps - 4  # steps each way: the user's --steps (_spawn passes 4 more)
    cfg, stage, model, _, batches, step, G = _setup(args.preset, args.stage, 2 * n + 2, args.set, world)
    step(), step()  # warm-up
    mine: dict[str, list[dict]] = {"with": [], "without": []}
    for i in range(2 * n):
        parts: dict[str, float] = {}
        sync = i % 4 in (0, 3)
        step(sync=sync, parts=parts)
        mine["with" if sync else "without"].append(parts)
    every = [None] * world
    torch.distributed.all_gather_object(every, mine)
    if torch.distributed.get_rank() == 0:
        print(json.dumps({"global_batch": G, "micro_batch": cfg.micro_batch, "num_workers": cfg.num_workers,
                          "threads": torch.get_num_threads(), "stage": stage.name, "ranks": every}), flush=True)
    torch.distributed.destroy_process_group()


def check_all_reduce(ranks: list[dict], steps: int) -> None:
    """Did the steps without the all-reduce skip it, and only they? Every rank's gradient sums
    ("grad") must be equal after every step with it (bit for bit: each rank holds the same reduced
    buckets) and differ after every step without it (each rank's own micro-batches)."""
    for way, equal in (("with", True), ("without", False)):
        same = [len({repr(rk[way][i]["grad"]) for rk in ranks}) == 1 for i in range(steps)]  # repr: nan == nan
        if not all(s == equal for s in same):
            raise SystemExit(f"--ranks: the ranks' gradients were {'not ' if equal else ''}all equal after "
                             f"{same.count(not equal)} of {steps} steps {way} the all-reduce; "
                             f"the two kinds of step did not measure what they say")


def ranks(args) -> None:
    """What running as DDP ranks costs a step: each rank's parts, and the gradient all-reduce as
    the difference between steps with it and without it, taken in turns in one run."""
    procs = args.procs or _launcher_procs(args)
    if procs < 2:
        why = "--procs 1 asks for one" if args.procs else f"`minicomp train` runs {procs} process here"
        raise SystemExit(f"--ranks measures DDP ranks, and {why}: pass --procs 2 or more")
    group = _spawn(ROOT, args, args.set, procs, extra=("--ranks",))
    line = group.stdout.readline()
    group.wait()
    if not line:
        codes = [p.returncode for p in group.procs]
        raise SystemExit(f"--ranks: the ranks stopped without a result (exit codes {codes}); their errors are above")
    out = json.loads(line)
    check_all_reduce(out["ranks"], args.steps)
    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    keys = ("data", "forward + backward", "waiting", "optimiser", "step")
    print(f"{args.preset}, stage {out['stage']}, CPU fp32, {procs} DDP ranks over gloo x {out['threads']} thread(s): "
          f"global batch {out['global_batch']}, micro-batch {out['micro_batch']}, num_workers "
          f"{out['num_workers']}; {args.steps} steps with the gradient all-reduce and {args.steps} without, in turns "
          f"(medians, ms per step)")
    print(f"{'':16s}" + "".join(f"{k:>20s}" for k in keys))
    for way in ("with", "without"):
        print(f"{way} the all-reduce")
        for r, rows in enumerate(out["ranks"]):
            print(f"  rank {r:<9d}" + "".join(f"{med(rows[way], k) * 1000:20.1f}" for k in keys))
    step_with = statistics.median(max(rk["with"][i]["step"] for rk in out["ranks"]) for i in range(args.steps))
    step_without = statistics.median(max(rk["without"][i]["step"] for rk in out["ranks"]) for i in range(args.steps))
    compute = [[rk["without"][i]["forward + backward"] for rk in out["ranks"]] for i in range(args.steps)]
    spread = statistics.median(max(c) - min(c) for c in compute)
    print(f"the gradient all-reduce: {(step_with - step_without) * 1000:.1f} ms per step (the step {step_with * 1000:.0f} "
          f"ms with it, {step_without * 1000:.0f} without: {(step_with - step_without) / step_with:.1%})")
    print(f"the ranks' imbalance: their forward + backward differ by {spread * 1000:.1f} ms a step (median) "
          f"without the all-reduce ({spread / step_with:.1%} of the step), what the faster one waits")
    print("every rank also waits for its data and runs the optimiser over all the parameters (the columns above)")
    print("checked: the ranks' gradients were equal after every step with the all-reduce and differed after every "
          "step without it")


def gemm_rate(m: int, k: int, n: int, seconds: float = 2.0) -> float:
    """FLOP/s of an (m, k) @ (k, n) fp32 matmul in this process (its threads), over about `seconds`."""
    a, b = torch.randn(m, k), torch.randn(k, n)
    for _ in range(5):
        a @ b
    reps, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        for _ in range(20):
            a @ b
        reps += 20
    return 2 * m * k * n * reps / (time.perf_counter() - t)


def split(args) -> None:
    """Samples/s of the step as the preset trains it (its processes), then each part timed alone,
    here, with one process's threads, on one process's share of a step."""
    from minicomp.align import alignment_loss, pool_packed

    procs = args.procs or _launcher_procs(args)
    info, steps = _run_group(args, procs)
    med = statistics.median(steps)
    torch.set_num_threads(info["threads"])
    cfg, stage, model, opt, batches, step, G = _setup(args.preset, args.stage, args.steps + 2, args.set)
    micro = [batches[k] for k in range(args.steps * batches.accum, (args.steps + 2) * batches.accum)]
    share = batches.accum / procs  # micro-batches per process per step
    parts: dict[str, list[float]] = {}

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        parts.setdefault(name, []).append(time.perf_counter() - t)
        return out

    t_data = []
    for k in range(args.steps * batches.accum, (args.steps + 2) * batches.accum):
        t = time.perf_counter()
        batches[k]
        t_data.append(time.perf_counter() - t)
    for _ in range(2):
        parts.clear()
        for b in micro:
            if b.images:
                vis = timed("vision", lambda: _fwd_bwd(lambda: model.vision(b.images)))
                merged = timed("merger", lambda: _fwd_bwd(lambda: model.merger(vis)))
            with torch.no_grad():
                embeds, _ = model.embed(b.input_ids, b.images, b.image_index, b.ids)
            embeds.requires_grad_(True)

            def llm():
                h = model.llm.base_model(inputs_embeds=embeds, attention_mask=b.attention_mask,
                                         use_cache=False).last_hidden_state
                model.decoding_loss(h, b.labels)[0].backward()
            timed("LLM (decoding loss)", llm)
            if stage.align and b.images:
                idx = b.image_index
                f_t = timed("caption pass (F_t)", lambda: model.text_features(b.align_ids[idx], b.align_mask[idx]))
                f_v = pool_packed(merged).detach().requires_grad_(True)
                c = model.config
                protos = model.word_embeddings()
                timed("alignment loss", lambda: alignment_loss(f_v, f_t, protos, model.word_prior, c.eps, c.temp,
                                                               c.n_iters, c.sinkhorn_mode, c.variant).backward())
        model.zero_grad(set_to_none=True)
    per_step = {n: sum(v) / len(micro) * share for n, v in parts.items()}
    per_step["data (prepare + collate)"] = statistics.mean(t_data) * share
    opt_t = []
    for _ in range(3):
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
        t = time.perf_counter()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.grad_clip)
        opt.step()
        opt_t.append(time.perf_counter() - t)
    per_step["optimiser (clip + AdamW)"] = statistics.median(opt_t)
    b = micro[0]
    print(f"{args.preset}, stage {stage.name} ({cfg.data[stage.data].get('task', 'file')} data), CPU fp32, "
          f"{procs} process(es) x {info['threads']} thread(s){' (DDP over gloo)' if procs > 1 else ''}: "
          f"global batch {G} = {batches.accum} x micro-batch {cfg.micro_batch}, num_workers {cfg.num_workers}")
    print(f"step {med * 1000:.0f} ms (median of {len(steps)}), {G / med:.1f} samples/s; "
          f"LLM slots {b.attention_mask.numel()} for {int(b.attention_mask.sum())} real tokens (first micro-batch)")
    print(f"parts, each timed alone in one process with {info['threads']} thread(s), on one process's share of a step "
          f"({share:g} micro-batch(es)) (ms per step, share of the measured step):")
    for n, v in sorted(per_step.items(), key=lambda kv: -kv[1]):
        print(f"  {n:26s} {v * 1000:7.0f}  {v / med:6.1%}")
    total = sum(per_step.values())
    print(f"  {'sum of parts':26s} {total * 1000:7.0f}  {total / med:6.1%}"
          + ("  (data overlaps compute when num_workers > 0)" if cfg.num_workers else "")
          + ("; the rest: gradient all-reduce, waiting for the slower rank, the processes sharing the machine"
             if procs > 1 else ""))
    # How close to the machine's arithmetic the step already is: the model's FLOPs against a plain
    # matmul at the ViT's MLP shape, in this process alone with one process's threads.
    flops = statistics.mean(model_flops(model, m) for m in micro if m.images) * share
    fc1 = model.vision.blocks[0].mlp.fc1
    tokens = sum(int(x.shape[1] * x.shape[2]) // model.vision.patch_size ** 2 for x in b.images)
    rate = gemm_rate(tokens, fc1.in_features, fc1.out_features)
    print(f"model FLOPs {flops / 1e9:.1f} GFLOP per process per step -> {flops / med / 1e9:.0f} GFLOP/s per process "
          f"in the step, {flops / total / 1e9:.0f} in the parts alone; one ({tokens} x {fc1.in_features}) @ "
          f"({fc1.in_features} x {fc1.out_features}) matmul here: {rate / 1e9:.0f} GFLOP/s with {info['threads']} "
          f"thread(s)")


PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def kernels(args) -> None:
    """Where the step's CPU time goes by kind of kernel, and the speed-up that leaves at most.

    One process with one thread (what each rank of `--procs auto` has here) times --steps steps of
    the stage, then runs --steps more under torch.profiler. Matrix products and attention (every
    SDPA kernel: the ViT's, the LLM's, the caption pass's) are the arithmetic any faster step still
    does, at the same sizes; if everything else (elementwise passes, copies, the patch embedding's
    convolution, the optimiser, data, Python between operators) took no time at all, the step
    could be about (step time) / (their time) faster, and no more. (Their time is measured under
    the profiler, which adds its own cost to every call it times, and the step without it: the
    bound is approximate.) Then the ViT's
    attention, SDPA's CPU flash kernel against softmax(q kᵀ) v written out with matmuls, forward +
    backward, one call per image of the step's micro-batches (their lengths, the ViT's heads and
    head size)."""
    import math
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # else the profiler prints start/stop markers and a GPU count error
    torch.set_num_threads(1)
    cfg, stage, model, opt, batches, step, G = _setup(args.preset, args.stage, 2 * args.steps + 2, args.set)
    step(), step()  # warm-up
    wall = statistics.median(step() for _ in range(args.steps))  # the profiler's own cost stays out of this
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        for _ in range(args.steps):
            step()
    kinds = {"matrix products (mm, addmm, bmm, baddbmm)": 0.0, "attention (SDPA kernels)": 0.0, "everything else": 0.0}
    rest: dict[str, float] = {}
    product_flops = 0.0
    for e in prof.key_averages():
        kind = ("matrix products (mm, addmm, bmm, baddbmm)" if e.key in PRODUCTS else
                "attention (SDPA kernels)" if "scaled_dot_product" in e.key else "everything else")
        kinds[kind] += e.self_cpu_time_total / 1e6 / args.steps  # seconds per step
        product_flops += e.flops / args.steps if e.key in PRODUCTS else 0
        if kind == "everything else":
            rest[e.key] = e.self_cpu_time_total / 1e6 / args.steps
    cpu = sum(kinds.values())
    print(f"{args.preset}, stage {stage.name}, one process with 1 thread, global batch {G} = {batches.accum} x "
          f"micro-batch {cfg.micro_batch}: step {wall * 1000:.0f} ms (median of {args.steps}); then {args.steps} "
          f"steps under the profiler, CPU time by kind of kernel (ms per step, share of the profiled CPU time):")
    for name, v in kinds.items():
        print(f"  {name:42s} {v * 1000:7.0f}  {v / cpu:6.1%}")
    top = sorted(rest.items(), key=lambda kv: -kv[1])[:8]
    print("  the largest of everything else: " + ", ".join(f"{k.removeprefix('aten::')} {v * 1000:.0f}" for k, v in top))
    fc1 = model.vision.blocks[0].mlp.fc1
    tokens = sum(int(x.shape[1] * x.shape[2]) // model.vision.patch_size ** 2 for x in batches[0].images)
    print(f"  the products ran at {product_flops / kinds['matrix products (mm, addmm, bmm, baddbmm)'] / 1e9:.0f} GFLOP/s; "
          f"one ({tokens} x {fc1.in_features}) @ ({fc1.in_features} x {fc1.out_features}) matmul here: "
          f"{gemm_rate(tokens, fc1.in_features, fc1.out_features) / 1e9:.0f} GFLOP/s")
    must = kinds["matrix products (mm, addmm, bmm, baddbmm)"] + kinds["attention (SDPA kernels)"]
    print(f"with everything else at zero, the step would be at least {must * 1000:.0f} ms: "
          f"at most {wall / must:.2f}x faster than now (the step's median over the products' and attention's time)")
    # the attention kernel against the same maths written out, on this step's images
    vit = model.vision
    heads, dh = vit.blocks[0].attn.num_heads, vit.head_dim
    lengths = [int(x.shape[1] * x.shape[2]) // vit.patch_size ** 2 + (vit.num_prefix if vit.feeds_prefix else 0)
               for k in range(batches.accum) for x in batches[k].images]
    g = torch.Generator().manual_seed(0)
    qkv = [[torch.randn(1, heads, n, dh, generator=g).requires_grad_(True) for _ in range(3)] for n in lengths]

    def flash(q, k, v):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    def written_out(q, k, v):
        return ((q @ k.transpose(-1, -2)) / math.sqrt(dh)).softmax(-1) @ v  # (1, H, n, n) @ (1, H, n, Dh)

    times: dict[str, list[float]] = {"flash": [], "written out": []}
    for r in range(7):
        for name, fn in (("flash", flash), ("written out", written_out))[::1 if r % 2 else -1]:
            t = time.perf_counter()
            for q, k, v in qkv:
                fn(q, k, v).sum().backward()
            times[name].append(time.perf_counter() - t)
    f, w = (statistics.median(times[n]) for n in ("flash", "written out"))
    print(f"the ViT's attention, forward + backward, one layer, the step's {len(lengths)} images ({min(lengths)}-{max(lengths)} "
          f"tokens, {heads} heads of {dh}): flash {f * 1000:.1f} ms, written out {w * 1000:.1f} ms "
          f"({w / f:.2f}x the flash kernel's time)")


def _fwd_bwd(fn):
    """Forward fn() (a `Packed`), backward a fixed gradient from its tokens; return it detached."""
    out = fn()
    out.tokens.backward(torch.ones_like(out.tokens) / out.tokens.numel())
    out.tokens = out.tokens.detach()
    return out


def paper(args) -> None:
    """paper-1b-siglip's architecture, random weights, one native-resolution batch, CUDA bf16."""
    if not torch.cuda.is_available():
        raise SystemExit("--paper needs a CUDA GPU")
    device = "cuda"
    cfg = load_config("paper-1b-siglip")
    model = mc.CoMPModel.from_pretrained(pretrained=False, **cfg.model).to(device)
    stage, batch_size = cfg.stage("II-native"), args.batch or cfg.micro_batch  # no tokenizer offline: random ids below
    groups = apply_stage(model, stage, log_fn=lambda *_: None)
    opt = torch.optim.AdamW(groups)
    ds = d.SyntheticDataset("train", batch_size * (args.steps + 2), seed=1, task="caption")
    if model.tokenizer is not None:
        proc = model.processor(max_tokens=stage.max_tokens)
        batches = [d.collate([proc(ds[i]) for i in range(j, j + batch_size)], model.tokenizer.pad_token_id)
                   for j in range(0, len(ds), batch_size)]
    else:  # full scale offline: real images at native resolution, random caption ids
        batches = [_random_text_batch(model, [ds[i] for i in range(j, j + batch_size)], stage.max_tokens)
                   for j in range(0, len(ds), batch_size)]
    batches = [b.to(device) for b in batches]

    def step(b):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(b).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for b in batches[:2]:
        step(b)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for b in batches[2:]:
        t = time.perf_counter()
        step(b)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    b = batches[2]
    tokens = int(b.attention_mask.sum())
    vis = int((b.input_ids == model.config.image_token_id).sum()) / max(1, len(b.images))
    print(f"{'paper-1b-siglip (random weights), CUDA bf16' if args.paper else 'tiny preset, CPU fp32'}: "
          f"stage {stage.name}, batch {batch_size}, {vis:.0f} visual tokens per image, {tokens} tokens per batch")
    print(f"step {med * 1000:.0f} ms (median of {len(times)}), {batch_size / med:.1f} samples/s, {tokens / med:,.0f} tokens/s")
    if device == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
        print(f"MFU {model_flops(model, b) / med / (args.peak_tflops * 1e12):.1%} of {args.peak_tflops:g} TFLOPs")
        for name, t in _alignment_parts(model, b, device).items():
            print(f"{name} {t * 1000:.1f} ms, {t / med:.1%} of the step")
    else:
        print(f"peak process memory {max(rss0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024:.0f} MB "
              f"(max RSS, whole process)")
        print(f"model FLOPs per step {model_flops(model, b) / 1e9:.1f} GFLOP -> {model_flops(model, b) / med / 1e9:.1f} GFLOP/s")


def _alignment_parts(model, b, device, reps: int = 5) -> dict[str, float]:
    """Median times of the alignment's two extra parts on batch b, each alone: the caption pass
    for F_t (no grad) and the loss itself (Eq. 8-10, forward + backward, at the LLM's vocabulary)."""
    from minicomp.align import alignment_loss
    c, idx = model.config, b.image_index
    D = model.llm.config.hidden_size
    f_v = torch.randn(len(b.images), D, device=device, requires_grad=True)

    def caption():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            return model.text_features(b.align_ids[idx], b.align_mask[idx])

    def loss():
        f_t = caption_out
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            alignment_loss(f_v, f_t, model.word_embeddings(), model.word_prior, c.eps, c.temp, c.n_iters,
                           c.sinkhorn_mode, c.variant).backward()

    caption_out = caption()
    out = {}
    for name, fn in (("caption pass (F_t)", caption), ("alignment loss", loss)):
        times = []
        for _ in range(reps):
            if device == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times)
    return out


def _random_text_batch(model, samples, max_tokens):
    from minicomp.data.resize import resize_to_budget, to_tensor
    cfg, p = model.vision.pretrained_cfg, model.vision.patch_size
    f = p * model.config.merge
    images, ids, labels = [], [], []
    for s in samples:
        img = resize_to_budget(s.image, p, model.config.merge, max_tokens // 2, max_tokens)  # as the mid-stage's large images
        images.append(to_tensor(img, cfg["mean"], cfg["std"]))
        n = (img.height // f) * (img.width // f)
        text = torch.randint(0, 150_000, (64,)).tolist()
        row = text[:8] + [model.config.image_token_id] * n + text[8:]
        ids.append(row)
        labels.append([-100] * (8 + n) + text[8:])
    L = max(map(len, ids))
    pad = lambda rows, v: torch.tensor([r + [v] * (L - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (L - len(r)) for r in ids])
    align = torch.randint(0, 150_000, (len(samples), 48))
    return d.Batch(images, torch.arange(len(samples)), pad(ids, 0), mask, pad(labels, -100), align,
                   torch.ones_like(align), [s.meta["id"] for s in samples])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--stage", default="II-native")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides, as minicomp train (with --against: this tree only)")
    ap.add_argument("--against", metavar="REV", help="also run this git revision, taking turns with this tree")
    ap.add_argument("--procs", type=int, default=None,
                    help="DDP processes for this tree (default: as `minicomp train --procs auto` starts them here)")
    ap.add_argument("--old-procs", type=int, default=1,
                    help="with --against: DDP processes for the old revision (default 1: it had no CPU launcher)")
    ap.add_argument("--kernels", action="store_true",
                    help="CPU time by kind of kernel (one 1-thread process, torch.profiler) and the speed-up it leaves")
    ap.add_argument("--ranks", action="store_true",
                    help="what running as DDP ranks costs a step: each rank's parts, and the gradient all-reduce")
    ap.add_argument("--paper", action="store_true", help="paper-1b-siglip's architecture on CUDA")
    ap.add_argument("--batch", type=int, default=None, help="--paper: images per step (default: the preset's micro-batch)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="--paper: dense bf16 peak of the GPU")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    modes = [f"--{m}" for m in ("kernels", "paper", "against", "ranks") if getattr(args, m)]
    if len(modes) > 1 and not args.worker:
        ap.error(f"{' and '.join(modes)} are different measurements: choose one")
    try:  # each tree's processes compute as its `minicomp train` does (older trees did not flush)
        from minicomp.environment import flush_denormals
        flush_denormals()
    except ImportError:
        pass
    if args.worker:
        ranks_worker(args) if args.ranks else worker(args)
    elif args.ranks:
        ranks(args)
    elif args.kernels:
        kernels(args)
    elif args.paper:
        paper(args)
    elif args.against:
        against(args)
    else:
        split(args)


if __name__ == "__main__":
    main()
