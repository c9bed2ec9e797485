"""The three-stage recipe and the training loop: freezing, configs, a smoke run end to end,
kill-and-resume, torn checkpoints, the NaN guard and 2-process DDP on CPU."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import minicomp as mc
import minicomp.checkpoint as mckpt
import minicomp.train as mtrain
from minicomp.config import PRESETS, TrainConfig, load_config
from minicomp.launch import cpu_processes
from minicomp.report import stage_mode
from minicomp.stage_data import sample_order
from minicomp.stages import Stage, apply_stage, check_order

PART_NAMES = {"vision": "vision.", "merger": "merger.", "llm": "llm."}


@pytest.fixture(scope="module")
def tiny_model():
    return mc.CoMPModel.from_preset("tiny")


def test_every_stage_freezes_and_groups_exactly(tiny_model):
    model = tiny_model
    cfg = load_config("tiny")
    for stage in cfg.stages:
        groups = apply_stage(model, stage, log_fn=lambda *_: None)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        for part, prefix in PART_NAMES.items():
            names = {n for n, _ in model.named_parameters() if n.startswith(prefix)}
            if part == "vision" and not model.vision.feeds_prefix:
                names -= {"vision.cls_token", "vision.reg_token"}
            expected = names if stage.lr.get(part, 0) > 0 else set()
            assert trainable & names == expected, (stage.name, part)
        assert {g["name"]: g["lr"] for g in groups} == {k: v for k, v in stage.lr.items() if v > 0}
        grouped = {id(p) for g in groups for p in g["params"]}
        assert grouped == {id(p) for p in model.parameters() if p.requires_grad}  # no trainable part left out
        assert model.vision.rope == stage.rope and model.config.align == stage.align
    # the authors' Stage III bug: the merger must stay in an optimiser group
    iii = [g["name"] for g in apply_stage(model, cfg.stage("III"), log_fn=lambda *_: None)]
    assert "merger" in iii


def test_freezing_is_logged_one_line_per_part(tiny_model):
    lines = []
    apply_stage(tiny_model, load_config("tiny").stage("I"), log_fn=lines.append)
    assert len(lines) == 3 and "merger TRAINABLE" in lines[1] and "vision FROZEN" in lines[0]
    assert f"{sum(p.numel() for p in tiny_model.merger.parameters()):,}" in lines[1]


def test_presets_build_and_paper_presets_follow_table_11():
    for name in PRESETS:
        cfg = load_config(name)
        assert [s.name for s in cfg.stages] == ["I", "II-fixed", "II-native", "III"]
    p = load_config("paper-1b-siglip")
    assert p.global_batch == 256 and p.stage("III").batch == 128
    assert p.stage("I").lr == {"merger": 1e-3} and not p.stage("I").rope and p.stage("I").align
    assert p.stage("II-native").lr == {"vision": 1e-4, "merger": 5e-3, "llm": 2e-5}
    assert p.stage("II-native").max_tokens == 3000 and p.stage("II-native").max_length == 8000
    assert not p.stage("III").align and p.stage("III").max_length == 4096
    assert p.model == {"vision": "vit_so400m_patch14_siglip_384", "llm": "Qwen/Qwen2.5-0.5B"}
    assert load_config("paper-7b-siglip").model["llm"] == "Qwen/Qwen2.5-7B"


def test_tiny_variants_change_steps_alone():
    tiny = load_config("tiny").to_dict()
    for name, steps in (("tiny-long", [80, 100, 100, 3500]), ("tiny-short", [10, 12, 12, 75])):
        d = load_config(name).to_dict()
        assert [s["steps"] for s in d["stages"]] == steps
        strip = lambda c: {**c, "name": None, "stages": [{**s, "steps": None} for s in c["stages"]]}  # noqa: E731
        assert strip(d) == strip(tiny), name


def test_overrides_from_yaml_and_command_line(tmp_path):
    f = tmp_path / "o.yaml"
    f.write_text("global_batch: 32\nstages:\n  III:\n    lr: {llm: 2e-5}\n    max_tokens: 128\nmodel:\n  alpha: 0.1\n")
    cfg = load_config("tiny", [f], ["stages.I.steps=7", "seed=3"])
    assert cfg.global_batch == 32 and cfg.stage("III").lr["llm"] == 2e-5 and cfg.stage("III").max_tokens == 128
    assert cfg.stage("I").steps == 7 and cfg.seed == 3 and cfg.model["alpha"] == 0.1


def test_command_line_takes_several_overrides_per_set():
    args = mtrain.parser().parse_args(["--set", "stages.I.steps=7", "seed=3", "--set", "global_batch=32"])
    cfg = mtrain.config_from_args(args)
    assert (cfg.name, cfg.stage("I").steps, cfg.seed, cfg.global_batch) == ("tiny", 7, 3, 32)


@pytest.mark.parametrize("sets, match", [
    (["nope=1"], "unknown config key 'nope'"),
    (["stages.I.steps=1.5"], "stages.I.steps: expected int"),
    (["stages.I.rope=3"], "stages.I.rope: expected bool"),
    (["stages.III.lr.llm=fast"], "stages.III.lr.llm: expected float"),
    (["stages.IV.steps=1"], r"unknown stage\(s\) \['IV'\]"),
    (["stages.III.lr.brain=1e-3"], "unknown part"),
    (["model.alpah=0.1"], "unknown CoMPConfig field"),
    (["stages.III.data=elsewhere"], "data 'elsewhere' is not in"),
    # ranges (issue 15, point 8): each was accepted, then crashed mid-run or trained wrongly
    (["grad_clip=-1"], r"grad_clip: expected a finite number > 0"),
    (["grad_clip=0"], r"grad_clip: expected a finite number > 0"),
    (["model.alpha=lots"], r"model.alpha: expected a finite number >= 0"),
    (["model.eps=0"], r"model.eps: expected a finite number > 0"),
    (["model.n_iters=0"], r"model.n_iters: expected an integer >= 1"),
    (["global_batch=0"], r"global_batch: expected an integer >= 1"),
    (["micro_batch=0"], r"micro_batch: expected an integer >= 1"),
    (["log_every=0"], r"log_every: expected an integer >= 1"),
    (["warmup_ratio=2"], r"warmup_ratio: expected a finite number >= 0 and <= 1"),
    (["eval_budgets=[16, 0]"], r"eval_budgets\[1\]: expected an integer >= 1"),
    (["stages.III.max_tokens=0"], r"stages.III.max_tokens: expected an integer >= 1"),
    (["stages.III.lr.llm=.nan"], r"stages.III.lr.llm: expected a finite number"),
    (["stages.III.lr.llm=.inf"], r"stages.III.lr.llm: expected a finite number"),
    (["stages.II-fixed.fixed_size=-64"], r"stages.II-fixed.fixed_size: expected a positive integer"),
    (["word_prior_rule=counts"], r"word_prior_rule: expected one of \('frequency', 'softmax'\)"),
])
def test_bad_config_errors_name_the_key(sets, match):
    with pytest.raises(ValueError, match=match):
        load_config("tiny", sets=sets)


def test_list_form_stages_with_a_scalar_lr_and_a_fixed_size_off_the_token_grid(tmp_path):
    d = load_config("smoke").to_dict()
    d["stages"][0]["lr"] = 1e-3  # a scalar, not {part: rate}: was "TypeError: '<' not supported"
    with pytest.raises(ValueError, match=r"stages.I.lr: expected a mapping of part to learning rate"):
        TrainConfig(**d)
    cfg = load_config("smoke", sets=["stages.I.fixed_size=72", "eval_samples=0"])  # 72 % (8 × 2) != 0
    with pytest.raises(ValueError, match=r"stages.I.fixed_size: 72 px is not a multiple of patch × merge = 16"):
        mtrain.train(cfg, tmp_path / "run")


def test_stage_order_and_missing_data_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="out of order"):
        check_order([Stage("III", {"llm": 1e-5}), Stage("I", {"merger": 1e-3})])
    d = load_config("tiny").to_dict()
    d["stages"] = d["stages"][::-1]
    with pytest.raises(ValueError, match="out of order"):
        TrainConfig(**d)
    cfg = load_config("paper-1b-siglip", sets=["pretrained=false"])
    with pytest.raises(FileNotFoundError, match="blip_laion_cc_sbu_558k.json does not exist"):
        mtrain.train(cfg, tmp_path / "run", data_root=tmp_path)  # before any model is built or downloaded
    with pytest.raises(ValueError, match="pass --data DIR"):
        mtrain.train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def _metrics(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["global_step"]: r for r in rows}  # the last record of each step


def test_smoke_run_end_to_end(smoke_run):
    out, cfg, meta = smoke_run
    rows = _metrics(out)
    assert len(rows) == sum(s.steps for s in cfg.stages) == meta["global_step"]
    for r in rows.values():
        assert {"stage", "step", "loss", "loss_dec", "loss_align", "grad_norm", "tokens", "tokens_per_s",
                "visual_tokens_per_image"} <= set(r)
        assert all(torch.isfinite(torch.tensor(r[k])) for k in ("loss", "loss_dec", "loss_align", "grad_norm"))
    caption = [r for r in rows.values() if r["stage"] != "III"]  # stages I–II share the captioning task
    assert caption[-1]["loss_dec"] < caption[0]["loss_dec"]
    assert all(r["loss_align"] == 0 for r in rows.values() if r["stage"] == "III")
    assert set(meta["evals"]) == {"I", "II-fixed", "II-native", "III"}
    for ev in meta["evals"].values():  # each stage is evaluated with real images and the blank control
        assert ev["n"] == ev["blank"]["n"] == 2 * cfg.eval_samples and 0 <= ev["blank"]["accuracy"] <= 1
    modes = {stage_mode(s) for s in cfg.stages} | {f"native ≤{b} tokens" for b in cfg.eval_budgets}
    assert set(meta["by_resolution"]) == modes and all("blank" in ev for ev in meta["by_resolution"].values())
    report = (out / "report.md").read_text()  # per kind: real / blank, with n and chance in the header
    assert "blank images" in report and report.count(" / ") >= 8 * (len(meta["evals"]) + len(modes))
    assert all(f"| {m} | " in report for m in modes) and "chance" in report and "95% interval" in report
    assert "real − blank" in report and "native − fixed 64px" in report  # the two claims, paired, with z
    from minicomp.environment import code, machine
    assert f"Code: {code()}; machine: {machine()}" in report  # which code and machine wrote it
    assert (out / "losses.png").is_file() and (out / "sweep.png").is_file()
    assert len(mtrain.checkpoints(out)) == cfg.keep_checkpoints  # bounded
    assert sorted(p.name for p in (out / "stages").iterdir()) == sorted(meta["evals"])
    assert list((out / "runs").rglob("events.out.tfevents*")) or list(out.rglob("events.out.tfevents*"))


def test_smoke_final_model_reloads_to_identical_outputs(smoke_run):
    out, _, _ = smoke_run
    a, b = mc.CoMPModel.from_pretrained(out / "model").eval(), mc.CoMPModel.from_pretrained(out / "stages" / "III").eval()
    ckpt = load_file(str(mtrain.checkpoints(out)[-1] / "model.safetensors"))
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
        if k in ckpt:
            assert torch.equal(v, ckpt[k]), k
    proc = a.processor(max_tokens=16)
    from minicomp import data
    batch = data.collate([proc(data.SyntheticDataset("val", 3)[i]) for i in range(3)], a.tokenizer.pad_token_id)
    with torch.no_grad():
        assert torch.equal(a(batch).loss, b(batch).loss)


def test_existing_run_needs_resume(smoke_run):
    out, cfg, _ = smoke_run
    with pytest.raises(FileExistsError, match="--resume"):
        mtrain.train(cfg, out)


def _cli(out, *extra):
    return [sys.executable, "-m", "minicomp.train", "--preset", "smoke", "--out", str(out), "--procs", "1",
            "--set", "save_every=1", *extra]


def test_sigkill_mid_stage_then_resume_equals_uninterrupted(smoke_run, tmp_path):
    ref_out, _, _ = smoke_run
    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.Popen(_cli(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill inside stage II-fixed (global steps 4–6)
        if (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    before = mtrain.checkpoints(out)
    assert before and json.loads((before[-1] / "meta.json").read_text())["global_step"] < 12
    resume = [sys.executable, "-m", "minicomp.train", "--out", str(out), "--procs", "1", "--resume"]  # no preset: the saved config
    r = subprocess.run(resume, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    assert r.returncode == 0, r.stderr[-3000:]  # resumed at once, while the killed run's worker may live on
    ref, got = _metrics(ref_out), _metrics(out)
    assert sorted(ref) == sorted(got)
    for step in ref:  # the same loss trajectory ...
        assert (ref[step]["loss_dec"], ref[step]["loss_align"]) == (got[step]["loss_dec"], got[step]["loss_align"]), step
    a, b = load_file(str(ref_out / "model" / "merger.safetensors")), load_file(str(out / "model" / "merger.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # ... and the same final weights
    wa = mc.CoMPModel.from_pretrained(ref_out / "model").state_dict()
    wb = mc.CoMPModel.from_pretrained(out / "model").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_kill_during_a_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = load_config("smoke", sets=["save_every=1", "eval_samples=0"])
    real, calls = mckpt.save_model_state, []

    def dies_on_third(state, path):
        calls.append(path)
        if len(calls) == 3:
            real(state, path)
            with open(path, "r+b") as f:  # a torn file, then the process "dies"
                f.truncate(100)
            raise KeyboardInterrupt("killed during save")
        real(state, path)

    monkeypatch.setattr(mckpt, "save_model_state", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        mtrain.train(cfg, tmp_path / "run")
    ckpts = mtrain.checkpoints(tmp_path / "run")
    assert [c.name for c in ckpts] == ["step-0000001", "step-0000002"]  # the torn step-3 is not listed
    assert list((tmp_path / "run" / "checkpoints").glob(".tmp-*"))
    monkeypatch.setattr(mckpt, "save_model_state", real)
    meta = mtrain.train(cfg, tmp_path / "run", resume=True)  # loads step 2 and finishes
    assert meta["global_step"] == sum(s.steps for s in cfg.stages)


def test_nan_guard_stops_with_a_clear_message(tmp_path, monkeypatch):
    cfg = load_config("smoke", sets=["save_every=1", "eval_samples=0"])
    real_forward, n = mc.CoMPModel.forward, [0]

    def poisoned(self, batch):
        out = real_forward(self, batch)
        n[0] += 1
        if n[0] == 7:  # step 4 (2 micro-batches per step)
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(mc.CoMPModel, "forward", poisoned)
    with pytest.raises(FloatingPointError, match=r"stage II-fixed step 0: loss nan.*Last good checkpoint: .*step-0000002"
                                                 r".*set aside as poisoned-step-0000003"):
        mtrain.train(cfg, tmp_path / "run")  # step 3's weights gave the NaN: resuming from them would again
    assert [c.name for c in mtrain.checkpoints(tmp_path / "run")][-1] == "step-0000002"


def test_two_process_ddp_on_cpu_matches_one_process(tmp_path):
    """2 processes × 1 micro-batch vs 1 process × 2 accumulated micro-batches, same global batch.
    Compared after 2 optimiser steps: later, Adam's sign-like early updates and τ = 0.005 amplify
    float-rounding differences into visibly different trajectories (both are valid runs)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = ["-m", "minicomp.train", "--preset", "smoke", "--procs", "1", "--set", "save_every=1", "--max-steps", "2",
            "--out"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run([sys.executable, *args, str(one)], env=env, check=True, capture_output=True)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
                        *args, str(two)], env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in r.stderr.splitlines() if "Error" in line or "error:" in line]  # each rank's, first
    assert r.returncode == 0, "\n".join(errors[:20]) + "\n" + r.stderr[-3000:]
    a, b = _metrics(one), _metrics(two)
    assert sorted(a) == sorted(b) == [1, 2]
    for step in a:
        for k in ("loss_dec", "loss_align"):
            assert abs(a[step][k] - b[step][k]) <= 1e-5 * abs(a[step][k]), (step, k)
        assert a[step]["tokens"] == b[step]["tokens"] > 0  # the step's tokens, summed over both processes
    wa = load_file(str(mtrain.checkpoints(one)[-1] / "model.safetensors"))
    wb = load_file(str(mtrain.checkpoints(two)[-1] / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)
    trained = [k for k in wa if k.startswith("merger.")]  # Stage I trains the merger: it did move
    init = mc.CoMPModel.from_preset("tiny").state_dict()
    assert not all(torch.equal(wa[k], init[k]) for k in trained if k in init)


def test_eval_command_on_the_smoke_run(smoke_run, tmp_path, capsys):
    out, _, _ = smoke_run
    from minicomp.cli import main
    assert main(["eval", str(out), "--samples", "3", "--budgets", "8", "16", "--probe-images", "40", "20",
                 "--probe-steps", "20", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    r = json.loads((tmp_path / "eval.json").read_text())
    assert set(r) >= {"qa", "sweep", "probes", "native_vs_fixed"}
    assert r["qa"]["n"] == 6 and {"ci", "chance", "n"} <= set(r["qa"]["by_question"]["reading"])
    assert set(r["sweep"]) == {"fixed 64px", "fixed 128px", "native ≤8 tokens", "native ≤16 tokens", "native ≤64 tokens"}
    assert set(r["probes"]) == {"original toy VFM", "CoMP-trained"}
    assert {"glyph", "word", "segment", "segment_miou", "title", "mean"} <= set(r["probes"]["CoMP-trained"]["native <=256 patches"])
    assert (tmp_path / "sweep.png").is_file() and "Resolution sweep" in printed and "blank images" in printed


def test_eval_and_ask_errors_name_the_path(smoke_run, tmp_path, capsys):
    from minicomp.cli import main
    with pytest.raises(SystemExit) as e:
        main(["eval", str(tmp_path / "nothing")])
    assert e.value.code == 2 and "nothing: no such file" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        main(["ask", str(tmp_path / "empty"), "x.png", "What?"])
    assert "neither a saved CoMPModel" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["ask", str(smoke_run[0]), str(tmp_path / "missing.png"), "What?"])
    assert "missing.png: no such image file" in capsys.readouterr().err


def test_ask_answers_about_an_image_file(smoke_run, tmp_path, capsys):
    from minicomp.assess import ask
    from minicomp.cli import main
    s = mc.data.SyntheticDataset("test", 1)[0]
    s.image.save(tmp_path / "doc.png")
    assert main(["ask", str(smoke_run[0]), str(tmp_path / "doc.png"), "What is the title of the document?"]) == 0
    answer = capsys.readouterr().out.strip()
    model = mc.CoMPModel.from_pretrained(smoke_run[0] / "model")  # the same as generate on the same image
    assert answer == model.generate([s.image], ["What is the title of the document?"], max_tokens=64,
                                    max_new_tokens=16)[0]
    assert ask(smoke_run[0], tmp_path / "doc.png", "How many lines of text are there?") is not None


def _running(marker: str) -> list[int]:
    """Pids whose command line mentions `marker` (Linux /proc)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and marker in (d / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(d.name))
        except OSError:
            pass
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux's")
def test_cpu_launcher_trains_with_processes_and_takes_its_workers_down(tmp_path):
    """`--procs 2` re-executes the command under torchrun: one report, DDP metrics; and a SIGKILL to
    the pid the user started leaves no worker training on."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "two"
    base = [sys.executable, "-m", "minicomp.train", "--preset", "smoke", "--procs", "2", "--out"]
    r = subprocess.run([*base, str(out), "--max-steps", "3", "--set", "eval_samples=0"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "training with 2 processes" in r.stdout and r.stdout.count("done in") == 1
    assert sorted(_metrics(out)) == [1, 2, 3]
    assert cpu_processes(load_config("smoke"), 64) == 2 and cpu_processes(load_config("smoke"), 1) == 1

    killed = tmp_path / "killed"
    p = subprocess.Popen([*base, str(killed), "--set", "save_every=1"], env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not (killed / "metrics.jsonl").is_file():
        time.sleep(0.05)
    assert len(_running(str(killed))) >= 3  # the launcher (now torchrun) and its two workers
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.time() + 30
    while time.time() < deadline and _running(str(killed)):
        time.sleep(0.2)
    assert _running(str(killed)) == []


@pytest.mark.parametrize("content", ["", '{"id": "a", "image": "missing.png", "conversations": '
                                         '[{"from": "human", "value": "<image>\\nhi"}, {"from": "gpt", "value": "yo"}]}\n'])
def test_a_stage_with_no_usable_record_is_an_error_before_training(tmp_path, content):
    """It used to loop forever drawing from an empty permutation: run under a timeout, so that a
    regression fails instead of hanging."""
    f = tmp_path / "mid.jsonl"
    f.write_text(content)
    script = ("import sys; from minicomp.config import load_config; import minicomp.train as t; "
              "cfg = load_config('smoke', sets=['eval_samples=0']); "
              "cfg.data['mid'] = {'path': sys.argv[1], 'image_root': sys.argv[2]}; t.train(cfg, sys.argv[3])")
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-c", script, str(f), str(tmp_path), str(out)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode != 0
    assert "data.mid" in r.stderr and "no usable records" in r.stderr and "'II-fixed', 'II-native'" in r.stderr
    assert ("skipped" in r.stderr) == bool(content)
    assert not out.exists()  # nothing trained, nothing written
    with pytest.raises(ValueError, match="empty"):
        sample_order(0, 5, seed=0)


def test_a_run_directory_is_locked_by_one_run(tmp_path):
    """Two real processes: the holder's pid is named, and the lock goes with its process."""
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from minicomp.runlock import lock_run_dir; lock_run_dir(Path(sys.argv[1])); "
                               "print('held', flush=True); time.sleep(120)", str(out)],
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = load_config("smoke", sets=["eval_samples=0"])
        with pytest.raises(RuntimeError, match=rf"in use by another run \(pid {holder.pid}\)"):
            mtrain.train(cfg, out)
        assert not (out / "config.json").exists() and not (out / "metrics.jsonl").exists()  # nothing written
    finally:
        holder.kill()
        holder.wait()
    meta = mtrain.train(cfg, out, stop_after=1)  # the kernel released the dead holder's lock
    assert meta["global_step"] == 1


def test_a_killed_runs_forked_workers_do_not_hold_its_lock(tmp_path):
    """A DataLoader worker is forked after the lock is taken and outlives a SIGKILLed main process
    by a few seconds: a resume started at once must still get the directory (CI once failed so)."""
    from minicomp.runlock import lock_run_dir, unlock_run_dir

    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import os, sys, time; from pathlib import Path; "
                               "from minicomp.runlock import lock_run_dir; lock_run_dir(Path(sys.argv[1])); "
                               "pid = os.fork()\nif pid == 0: time.sleep(60); os._exit(0)\n"
                               "print(pid, flush=True); time.sleep(120)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    worker = int(holder.stdout.readline())
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        os.kill(worker, 0)  # the forked worker is still alive ...
        lock_run_dir(out)  # ... and the lock is free
        unlock_run_dir(out)
    finally:
        os.kill(worker, signal.SIGKILL)


def test_auto_word_prior_counts_stage_two_data_never_stage_three(tmp_path):
    from minicomp.stage_data import resolve_data, word_prior_counts
    cfg = load_config("smoke", sets=["stages.II-fixed=null", "stages.II-native=null"])
    said = []
    word_prior_counts(cfg, resolve_data(cfg, None), mc.CoMPModel.from_preset("tiny"), said.append, progress=False)
    assert "data 'caption'" in said[0]  # no Stage II: the first stage's data, not Stage III's ('qa')
    cfg = load_config("smoke")
    said.clear()
    word_prior_counts(cfg, resolve_data(cfg, None), mc.CoMPModel.from_preset("tiny"), said.append, progress=False)
    assert "data 'mid'" in said[0]
