import os
import subprocess
import sys

import torch

from minicomp.cli import main
from minicomp.demo import DEMO_GRIDS, run_demo


def test_demo_encodes_native_grids_and_checks_against_timm():
    lines = []
    res = run_demo("vit_small_patch14_reg4_dinov2", depth=1, print_fn=lines.append)
    assert res["grids"] == [[h, w] for w, h in DEMO_GRIDS]
    assert res["tokens"] == sum(w * h for w, h in DEMO_GRIDS)
    assert res["pack_diff"] < 1e-4 and res["timm_diff"] < 1e-4
    text = "\n".join(lines)
    assert "ONE packed sequence" in text and "forward_features" in text


def test_demo_loads_a_local_checkpoint(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    vit = timm.create_model("vit_base_patch16_siglip_224", pretrained=False, depth=1)
    path = tmp_path / "vit.safetensors"
    save_file(vit.state_dict(), str(path))
    lines = []
    res = run_demo("vit_base_patch16_siglip_224", depth=1, checkpoint=str(path), print_fn=lines.append)
    assert f"file {path}" in lines[0]
    for name, p in res["encoder"].state_dict().items():
        torch.testing.assert_close(p, vit.state_dict()[name], rtol=0, atol=0, msg=name)


def test_console_entry_point_runs():
    assert main(["demo", "--model", "vit_base_patch16_siglip_224", "--depth", "1"]) == 0
    r = subprocess.run([sys.executable, "-m", "minicomp.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "demo" in r.stdout


def test_cli_refuses_bad_values_and_overwrites_nothing(tmp_path, capsys):
    """Issue 15, point 11: each was an internal error, a silent overwrite or a NaN with exit 0."""
    import pytest

    from minicomp.toy import TOY_LLM_PATH
    out = tmp_path / "counts.safetensors"
    out.write_bytes(b"keep me")
    for argv, says in (
        (["prior", "--tokenizer", str(TOY_LLM_PATH), "--synthetic", "-5", "--out", str(tmp_path / "x")],
         "expected a positive integer"),
        (["prior", "--tokenizer", str(TOY_LLM_PATH), "--synthetic", "5", "--out", str(out)], "exists; pass --force"),
        (["prior", "--tokenizer", str(tmp_path / "no-such-tokenizer"), "--synthetic", "5", "--out",
          str(tmp_path / "y")], "no such folder"),
        (["demo", "--rope-theta", "nan"], "expected a finite number > 0"),
        (["toy", "build", "--out", str(tmp_path / "b"), "--jobs", "0"], "expected a positive integer"),
    ):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and says in capsys.readouterr().err, argv
    assert out.read_bytes() == b"keep me"
    assert main(["prior", "--tokenizer", str(TOY_LLM_PATH), "--synthetic", "5", "--out", str(out), "--force"]) == 0
    assert out.read_bytes() != b"keep me"


def test_the_command_line_starts_without_the_models_libraries(tmp_path):
    """`import minicomp`, `minicomp --help` and a launching `minicomp train` load neither timm,
    transformers nor the loop: a process that only launches workers waits on them without paying
    their imports (several seconds each). The launch itself is replaced by a report of what is
    loaded at that moment, reached through `main`'s own path."""
    heavy = "sorted(m for m in ('timm', 'transformers', 'accelerate', 'matplotlib', 'minicomp.loop') if m in sys.modules)"
    code = ("import sys, minicomp, minicomp.cli, minicomp.train as t\n"
            f"t.launch = lambda argv, procs, parallel: print(procs, {heavy}) or 0\n"
            f"sys.exit(t.main(['--preset', 'smoke', '--procs', '2', '--out', {str(tmp_path / 'run')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["2", "[]"], r.stdout


def test_the_lazy_packages_still_reach_every_submodule():
    """A lazy `__init__` must not lose what the eager one gave: `import minicomp` then `mc.data`,
    `toy.vfm` (chapter 05 reads `toy.vfm.LAYOUT` after `import minicomp.toy as toy`)."""
    import pkgutil
    import minicomp
    import minicomp.toy
    code = "import sys, minicomp, minicomp.toy\n"
    for pkg in (minicomp, minicomp.toy):
        for m in pkgutil.iter_modules(pkg.__path__):
            code += f"assert getattr({pkg.__name__}, {m.name!r}).__name__ == '{pkg.__name__}.{m.name}'\n"
    code += "print('ok')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.split() == ["ok"], r.stderr[-2000:]
