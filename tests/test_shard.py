"""FSDP2 (minicomp.shard) on 2 CPU processes with gloo: the sharded step equals the 1-process step,
the ranks end with identical weights, and a rank whose batch has no image neither aborts nor hangs;
`minicomp train` with parallel=fsdp2: the whole smoke recipe equal to one process, checkpoints of
whole tensors, and kill-and-resume exact."""
import datetime
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import minicomp as mc
import minicomp.data as d
import minicomp.train as mtrain
from minicomp.config import load_config
from minicomp.shard import decoder_layers, shard

WORLD, TIMEOUT_S = 2, 240


def _model():
    torch.manual_seed(0)
    return mc.CoMPModel.from_preset("tiny")


def _batch(model, rank, text_only_rank):
    """Two samples per rank; on text_only_rank, their images and image tokens removed."""
    ds = d.SyntheticDataset("train", 16, seed=0)
    exs = [model.processor(fixed_size=64)(ds[i]) for i in (2 * rank, 2 * rank + 1)]
    if rank == text_only_rank:
        for e in exs:
            keep = [t != model.config.image_token_id for t in e["input_ids"]]
            e.update(pixels=None, input_ids=[t for t, k in zip(e["input_ids"], keep) if k],
                     labels=[t for t, k in zip(e["labels"], keep) if k])
    return d.collate(exs, model.tokenizer.pad_token_id)


def _step(model, batches):
    """One AdamW step on the mean of the batches' losses -> (losses, grads, weights)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for b in batches:
        out = model(b)
        (out.loss / len(batches)).backward()
        losses.append(out.loss.item())
    full = lambda t: t.full_tensor() if hasattr(t, "full_tensor") else t  # noqa: E731 (DTensor shards -> whole)
    grads = {n: full(p.grad).clone() for n, p in model.named_parameters() if p.grad is not None}
    opt.step()
    return losses, grads, {n: full(p.detach()).clone() for n, p in model.named_parameters()}


def _worker(rank, init, text_only_rank, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    torch.set_num_threads(1)
    model = shard(_model())
    torch.save(_step(model, [_batch(model, rank, text_only_rank)]), f"{out}.{rank}")
    dist.destroy_process_group()


def _spawn(tmp_path, text_only_rank):
    ctx = mp.spawn(_worker, args=(f"file://{tmp_path}/pg", text_only_rank, str(tmp_path / "out")), nprocs=WORLD,
                   join=False)
    t0 = time.time()
    while not ctx.join(timeout=5):
        if time.time() - t0 > TIMEOUT_S:  # a deadlock fails the test instead of hanging CI
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"FSDP2 ranks still running after {TIMEOUT_S} s: deadlocked collectives?")
    return [torch.load(tmp_path / f"out.{r}") for r in range(WORLD)]


@pytest.mark.parametrize("text_only_rank", [None, 1], ids=["images-on-both", "rank-1-text-only"])
def test_fsdp2_step_equals_one_process_and_ranks_agree(tmp_path, text_only_rank):
    ranks = _spawn(tmp_path, text_only_rank)
    model = _model()
    losses, grads, weights = _step(model, [_batch(model, r, text_only_rank) for r in range(WORLD)])
    assert [r[0][0] for r in ranks] == pytest.approx(losses, abs=1e-5)  # each rank's loss on its own batch
    for name, g in grads.items():  # FSDP2 averages the ranks' gradients: the 1-process mean
        torch.testing.assert_close(ranks[0][1][name], g, atol=1e-6, rtol=1e-5, msg=name)
    assert set(ranks[0][2]) == set(weights)
    for name, w in weights.items():
        assert torch.equal(ranks[0][2][name], ranks[1][2][name]), name  # gathered weights identical on both ranks
        torch.testing.assert_close(ranks[0][2][name], w, atol=1e-6, rtol=1e-5, msg=name)
    tied = model.llm.get_input_embeddings().weight is model.llm.get_output_embeddings().weight
    assert tied  # the toy LLM ties its embeddings: one parameter in the root unit


def test_units_are_the_vision_tower_and_the_decoder_layers():
    model = _model()
    assert len(decoder_layers(model.llm)) == model.llm.config.num_hidden_layers
    with pytest.raises(ValueError, match="_no_split_modules"):
        decoder_layers(torch.nn.Linear(2, 2))


# ---- minicomp train, parallel=fsdp2 -----------------------------------------------------------

def _train_cli(out, *extra, procs=2):
    """The smoke recipe sharded on 2 CPU processes (minicomp's launcher: torchrun, gloo; each worker
    gets cores/2 threads and dies with the launcher), or on one process with as many threads."""
    sharded = ["parallel=fsdp2"] if procs == 2 else []
    return [sys.executable, "-m", "minicomp.train", "--preset", "smoke", "--procs", str(procs), "--out", str(out),
            "--set", "save_every=1", *sharded, *extra]


_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2))}


def _run(cmd):
    r = subprocess.run(cmd, env=_ENV, capture_output=True, text=True, timeout=600)
    errors = [line for line in r.stderr.splitlines() if "Error" in line or "error:" in line]  # each rank's, first
    assert r.returncode == 0, "\n".join(errors[:20]) + "\n" + r.stdout[-2000:] + r.stderr[-3000:]


def _metrics(out):
    return {r["global_step"]: r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def fsdp2_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    _run(_train_cli(out / "one", procs=1))
    _run(_train_cli(out / "two"))
    return out / "two", out / "one"


def test_fsdp2_training_equals_one_process_through_every_stage(fsdp2_run):
    """All four stages (frozen and trainable parts changing, accumulation, clipping, the alignment
    loss reading the sharded word embeddings, tied embeddings) match the 1-process run: 2 processes
    × 1 micro-batch against 1 × 2 accumulated, the same global batch."""
    fsdp2_run, one = fsdp2_run
    cfg = load_config("smoke")
    a, b = _metrics(one), _metrics(fsdp2_run)
    assert sorted(a) == sorted(b) == list(range(1, sum(s.steps for s in cfg.stages) + 1))
    for step in a:
        for k in ("loss_dec", "loss_align", "grad_norm"):  # grad_norm: the total norm over all shards, before clipping
            assert b[step][k] == pytest.approx(a[step][k], rel=1e-5, abs=1e-6), (step, k)
    assert sum(a[step]["grad_norm"] > cfg.grad_clip for step in a) >= 3  # clipping engaged, so it was tested too
    wa = mc.CoMPModel.from_pretrained(one / "model").state_dict()  # saved from the gathered shards
    wb = mc.CoMPModel.from_pretrained(fsdp2_run / "model").state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-4, msg=k)  # 12 Adam steps of lr ~1e-3
    meta = json.loads((mtrain.checkpoints(fsdp2_run)[-1] / "meta.json").read_text())
    assert len(meta["rank_checksums"]) == 2 and len(set(meta["rank_checksums"])) == 1  # gathered weights identical
    ref = json.loads((mtrain.checkpoints(one)[-1] / "meta.json").read_text())
    for stage in ref["evals"]:  # evaluated on the main process from the gathered copy: the same answers
        assert meta["evals"][stage]["n"] == ref["evals"][stage]["n"] > 0
        assert meta["evals"][stage]["accuracy"] == ref["evals"][stage]["accuracy"], stage
    state = mtrain.checkpoints(fsdp2_run)[-1] / "state"
    assert sorted(p.name for p in state.iterdir()) == ["optimizer.pt", "rng-0.pt", "rng-1.pt", "scheduler.pt"]
    opt = torch.load(state / "optimizer.pt", weights_only=True)  # whole tensors, keyed by parameter name
    assert opt["state"]["merger.mlp.0.weight"]["exp_avg"].shape == wb["merger.mlp.0.weight"].shape


def test_fsdp2_sigkill_then_resume_equals_uninterrupted(fsdp2_run, tmp_path):
    fsdp2_run, _ = fsdp2_run
    out = tmp_path / "killed"
    p = subprocess.Popen(_train_cli(out), env=_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:  # kill inside stage II-fixed (global steps 4–6)
        if (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)  # the launcher; its workers die with it
    p.wait()
    before = mtrain.checkpoints(out)
    assert before and json.loads((before[-1] / "meta.json").read_text())["global_step"] < 12
    _run(_train_cli(out, "--resume"))
    ref, got = _metrics(fsdp2_run), _metrics(out)
    assert sorted(ref) == sorted(got)
    for step in ref:  # bit for bit: the optimiser's state and the schedule came back whole
        assert (ref[step]["loss_dec"], ref[step]["loss_align"]) == (got[step]["loss_dec"], got[step]["loss_align"]), step
    wa = mc.CoMPModel.from_pretrained(fsdp2_run / "model").state_dict()
    wb = mc.CoMPModel.from_pretrained(out / "model").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fsdp2_config_errors(tmp_path):
    with pytest.raises(ValueError, match="parallel: expected one of"):
        load_config("smoke", sets=["parallel=fsdp"])
    with pytest.raises(ValueError, match="fsdp2 shards across processes and this run has one"):
        mtrain.train(load_config("smoke", sets=["parallel=fsdp2"]), tmp_path / "run")
    assert load_config("paper-7b-siglip").parallel == "fsdp2" and load_config("paper-1b-siglip").parallel == "ddp"
