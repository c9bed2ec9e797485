"""The float mode every minicomp process computes in: subnormals flushed to zero, on every thread,
with the same training bits as without."""
import os
import subprocess
import sys

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_flush_reaches_every_thread_when_called_first():
    code = """
import torch
from minicomp.environment import flush_denormals
{call}
torch.set_num_threads(2)
x = torch.full((1 << 20,), 1e-39)  # subnormal in fp32; large enough for both threads to take a part
y = x * 0.5
print(int((y != 0).sum()), int(y.numel()))
"""
    nonzero, n = map(int, _run(code.format(call="flush_denormals()")).split())
    assert nonzero == 0, f"{nonzero} of {n} results kept a subnormal: some thread did not flush"
    nonzero, n = map(int, _run(code.format(call="")).split())
    assert nonzero == n  # without it, the CPU keeps them: the check above can fail


STEPS = """
import hashlib, torch
import minicomp as mc
from minicomp.config import load_config
from minicomp.environment import flush_denormals
from minicomp.stage_data import StepBatches, build_dataset, sample_order
from minicomp.stages import apply_stage
{call}
torch.set_num_threads(1)
torch.manual_seed(0)
cfg = load_config("tiny")
stage = cfg.stage("II-native")
model = mc.CoMPModel.from_pretrained(pretrained=True, **cfg.model)
model.set_word_prior(torch.ones(model.llm.get_input_embeddings().num_embeddings))
opt = torch.optim.AdamW(apply_stage(model, stage, log_fn=lambda *_: None))
proc = model.processor(min_tokens=stage.min_tokens, max_tokens=stage.max_tokens, max_length=stage.max_length)
ds = build_dataset(cfg.data[stage.data], cfg.seed)
batches = StepBatches(ds, proc, sample_order(len(ds), 3 * 8, cfg.seed), 8, 8, 0, 1, model.tokenizer.pad_token_id)
for k in range(3):
    model(batches[k]).loss.backward()
    opt.step()
    opt.zero_grad()
h = hashlib.sha256()
for _, p in sorted(model.named_parameters()):
    h.update(p.detach().numpy().tobytes())
print(h.hexdigest())
"""


def test_training_steps_give_the_same_bits_with_subnormals_flushed():
    """Three tiny-preset steps at native resolution (where the ViT's attention makes subnormals)."""
    assert _run(STEPS.format(call="flush_denormals()")) == _run(STEPS.format(call=""))


def test_every_entry_point_flushes_first():
    """The CLI, a training worker (`python -m minicomp.train`) and a toy build process each leave
    their thread flushing (a subnormal times one is zero): removing a call fails here."""
    code = """
import os, torch
{call}
print(float(torch.tensor(1e-39) * 1.0))
"""
    calls = {"cli": "from minicomp.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
             "train": "from minicomp.train import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
             "toy build": "from minicomp.toy.build import _worker\n_worker(os.getppid())"}
    assert _run(code.format(call="")) != "0.0"  # not flushed by default
    for name, call in calls.items():
        assert _run(code.format(call=call)) == "0.0", name


def test_test_processes_run_without_wandb_as_the_main_install_does():
    """The root conftest.py's start-up hook (tests/site/sitecustomize.py) reaches subprocesses: timm
    imports there without wandb, which only the dev extra's lmms-eval installs."""
    code = "import sys, timm; print(sys.modules['wandb'])"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["None"]
