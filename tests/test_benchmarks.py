"""The training-step benchmark at smoke size: two trees, each as two ranks over gloo, taking turns;
what two ranks cost a step (--ranks); the kernel split; peers.py's paired lead (no time is asserted)."""
import os
import statistics
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_step_against_a_revision_with_two_ddp_ranks_each():
    if subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("--against takes the old tree from git, and this copy is not a git checkout")
    p = subprocess.run([sys.executable, "benchmarks/train_step.py", "--preset", "smoke", "--steps", "3", "--procs", "2",
                        "--against", "HEAD", "--old-procs", "2"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [line.strip() for line in p.stdout.splitlines() if "samples/s" in line]
    assert len(lines) == 2, p.stdout
    assert lines[0].startswith("HEAD (old)") and "2 x 1 thread(s)" in lines[0]
    assert lines[1].startswith("this tree") and "2 x 1 thread(s)" in lines[1]


def test_ranks_attributes_the_step_to_data_compute_waiting_and_the_all_reduce():
    """`train_step.py --ranks` at smoke size: both ranks' parts with and without the gradient
    all-reduce, each no longer than its step, and the two costs it names; the steps without it
    really skip it (the ranks' gradients differ then, and are equal with it)."""
    p = subprocess.run([sys.executable, "benchmarks/train_step.py", "--preset", "smoke", "--steps", "2", "--procs", "2",
                        "--ranks"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    rows = [line.split() for line in p.stdout.splitlines() if line.strip().startswith("rank ")]
    assert [r[1] for r in rows] == ["0", "1", "0", "1"], p.stdout  # with the all-reduce, then without
    for r in rows:
        data, compute, waiting, optimiser, step = map(float, r[2:])
        assert min(data, compute, waiting, optimiser) >= 0 and compute > 0
        assert max(data, compute, waiting, optimiser) <= step, r
    assert "the gradient all-reduce:" in p.stdout and "the ranks' imbalance:" in p.stdout
    assert "checked: the ranks' gradients were equal after every step with the all-reduce and differed" in p.stdout


def test_ranks_refuses_steps_whose_all_reduce_did_not_happen_as_labelled():
    check = _train_step().check_all_reduce
    rank = lambda w, wo: {"with": [{"grad": g} for g in w], "without": [{"grad": g} for g in wo]}  # noqa: E731
    check([rank([1.0, 2.0], [3.0, 4.0]), rank([1.0, 2.0], [3.5, 4.5])], 2)  # as it should be: passes
    with pytest.raises(SystemExit, match="all equal after 1 of 2 steps without the all-reduce"):
        check([rank([1.0, 2.0], [3.0, 4.0]), rank([1.0, 2.0], [3.0, 4.5])], 2)  # no_sync synced anyway
    with pytest.raises(SystemExit, match="not all equal after 2 of 2 steps with the all-reduce"):
        check([rank([1.0, 2.0], [3.0, 4.0]), rank([1.5, 2.5], [3.5, 4.5])], 2)  # no all-reduce at all


def test_ranks_needs_two_processes(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["train_step.py", "--ranks", "--procs", "1"])
    with pytest.raises(SystemExit, match="--ranks measures DDP ranks"):
        _train_step().main()


def _bench(name: str):
    """benchmarks/<name>.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def _train_step():
    return _bench("train_step")


def test_peers_lead_is_the_median_of_round_by_round_ratios():
    """benchmarks/peers.py's paired lead: per round, the peer's time over minicomp's, so rounds
    slowed for both (load) keep their ratio; their median and interval; rounds match one for one."""
    peers = _bench("peers")
    base, peer = peers.BASE, "a peer"
    mine = [1.0, 1.0, 4.0, 1.0, 1.0, 3.0, 1.0]  # rounds 3 and 6 slowed for both
    times = {base: mine, peer: [1.3 * t for t in mine]}
    lead = peers.paired_leads(times)[peer]
    assert lead["median"] == pytest.approx(1.3) and lead["low"] == pytest.approx(1.3) and lead["high"] == pytest.approx(1.3)
    assert base not in peers.paired_leads(times)
    # rounds 5-7 slowed for both, round 4 for the peer alone: the peer's median comes from a slow
    # round and minicomp's from a fast one (3.9 / 1.0), while the paired lead is 1.3 in six rounds of seven
    times = {base: [1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0], peer: [1.3, 1.3, 1.3, 3.9, 3.9, 3.9, 3.9]}
    assert statistics.median(times[peer]) / statistics.median(times[base]) == pytest.approx(3.9)
    assert peers.paired_leads(times)[peer]["median"] == pytest.approx(1.3)
    with pytest.raises(ValueError, match="a peer: 6 timed rounds"):
        peers.paired_leads({base: mine, peer: mine[:6]})


@pytest.mark.parametrize("flags, named", [(["--kernels", "--against", "HEAD"], "--kernels and --against"),
                                          (["--against", "HEAD", "--ranks"], "--against and --ranks")])
def test_two_measurements_at_once_are_refused(monkeypatch, capsys, flags, named):
    monkeypatch.setattr(sys, "argv", ["train_step.py", *flags])
    with pytest.raises(SystemExit) as e:
        _train_step().main()
    assert e.value.code == 2 and f"{named} are different measurements" in capsys.readouterr().err


def test_kernel_split_accounts_for_the_profiled_time_and_bounds_the_speed_up(capfd, monkeypatch):
    """`train_step.py --kernels` at smoke size: the three kinds' shares add up to the profiled CPU
    time, and the bound it prints is the step time over the products' and attention's time. The
    profiler's own start/stop markers stay off the terminal."""
    import argparse
    import re

    import torch

    monkeypatch.delenv("KINETO_LOG_LEVEL", raising=False)  # restored after the test
    bench = _train_step()
    threads = torch.get_num_threads()
    try:
        bench.kernels(argparse.Namespace(preset="smoke", stage="II-native", steps=1, set=[]))
    finally:
        torch.set_num_threads(threads)
    out, err = capfd.readouterr()
    assert "profiler_start" not in err and "gpuGetDeviceCount" not in err, err
    step = float(re.search(r"step (\d+) ms", out).group(1))
    kinds = {m.group(1).strip(): (float(m.group(2)), float(m.group(3)))
             for m in re.finditer(r"^  (matrix products.*?|attention \(SDPA.*?|everything else)\s+(\d+)\s+([\d.]+)%$",
                                  out, re.M)}
    assert len(kinds) == 3, out
    assert abs(sum(share for _, share in kinds.values()) - 100) < 0.5, out
    assert all(ms > 0 for ms, _ in kinds.values()), out  # every kind ran: this step has products and attention
    least, most = re.search(r"at least (\d+) ms: at most ([\d.]+)x faster", out).groups()
    must = kinds["matrix products (mm, addmm, bmm, baddbmm)"][0] + kinds["attention (SDPA kernels)"][0]
    assert abs(float(least) - must) <= 1 and abs(float(most) - step / float(least)) < 0.05 * float(most), out
    rest = re.search(r"the largest of everything else: (.*)$", out, re.M).group(1)
    assert not re.search(r"(^|, )(mm|addmm|bmm|baddbmm) |scaled_dot_product", rest), rest  # none misfiled as "else"
    assert re.search(r"flash [\d.]+ ms, written out [\d.]+ ms", out), out
