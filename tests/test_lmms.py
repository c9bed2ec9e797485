"""lmms-eval runs a saved CoMPModel through its own entry point, on the toy world as a local task,
and scores what `minicomp eval` scores on the same questions (skipped without `.[lmms]`)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lmms_eval")

import minicomp as mc  # noqa: E402
from minicomp.evaluate import exact_match  # noqa: E402
from minicomp.lmms import TASK, write_toy_task  # noqa: E402

N = 6  # test samples: 12 questions
SITE = Path(__file__).resolve().parent / "site"  # the conftest's no-wandb start-up hook


def test_lmms_eval_scores_a_saved_model_as_minicomp_eval_does(tmp_path):
    model = mc.CoMPModel.from_preset("tiny")
    model.save_pretrained(tmp_path / "model")
    write_toy_task(tmp_path / "task", n=N)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in env.get("PYTHONPATH", "").split(os.pathsep)  # with wandb, as
                                        if p and Path(p) != SITE)                                # its users run it
    hook = subprocess.run([sys.executable, "-c", "import sys; print('wandb' in sys.modules)"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert hook.stdout.split() == ["False"], hook.stderr  # the hook is really dropped: wandb is importable
    run = subprocess.run([sys.executable, "-m", "lmms_eval", "--model", "minicomp", "--model_args",
                          f"pretrained={tmp_path / 'model'},max_tokens=64", "--tasks", TASK, "--include_path",
                          str(tmp_path / "task"), "--output_path", str(tmp_path / "out"), "--log_samples",
                          "--batch_size", "1"], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (results,) = tmp_path.glob("out/*/*_results.json")
    (samples,) = tmp_path.glob(f"out/*/*_samples_{TASK}.jsonl")
    score = json.loads(results.read_text())["results"][TASK]["exact_match,none"]
    answers = [json.loads(line)["filtered_resps"] for line in samples.read_text().splitlines()]
    ours = exact_match(mc.CoMPModel.from_pretrained(tmp_path / "model"), n=N, max_tokens=64)
    assert answers == ours["answers"]  # the same questions, in order, answered the same
    assert score == pytest.approx(ours["accuracy"])


def test_bad_model_args_are_named(tmp_path):
    from minicomp.lmms import MinicompLMM

    mc.CoMPModel.from_preset("tiny").save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="unknown model_args.*max_token"):
        MinicompLMM(pretrained=str(tmp_path / "model"), max_token=64)
