"""`minicomp reproduce`: the registry, the cache and resume, the table writer, one real row pair."""
import json
import os

import pytest
import torch
import yaml

from minicomp.config import config_differences
from minicomp.reproduce import list_rows
from minicomp.reproduce.rows import TABLES, Row, Table, chain, dotted, row_config
import minicomp.environment as machine_mod
from minicomp.reproduce import provenance
import minicomp.reproduce.suite as suite_mod
from minicomp.reproduce.suite import Job, Suite
from minicomp.reproduce.tables import accuracy, difference, direction, table_data, to_markdown
from minicomp.stats import student_t_quantile, wilson


# ---- the registry ---------------------------------------------------------------------------

ROWS = [(t, r) for t in TABLES.values() for r in t.rows]


@pytest.mark.parametrize("preset", ["tiny", "smoke"])
def test_every_row_resolves_to_a_valid_config(preset):
    for t, r in ROWS:
        cfg = row_config(t, r, preset, seed=2)
        assert cfg.seed == 2 and cfg.name == f"{t.name}-{r.key}"


def _covered(diff: str, named: set[str]) -> bool:
    return any(diff == k or diff.startswith(k + ".") or k.startswith(diff + ".") for k in named)


@pytest.mark.parametrize("table,row", [(t, r) for t, r in ROWS if r.compare_to], ids=lambda x: getattr(x, "key", None))
def test_a_row_differs_from_its_reference_only_in_what_it_names(table, row):
    ref = table.row(row.compare_to)
    mine, theirs = chain(table, row), chain(table, ref)
    named = {k for r in mine + theirs if (r in mine) != (r in theirs) for k in dotted(r.change)}
    diffs = [d for d in config_differences(row_config(table, ref).to_dict(), row_config(table, row).to_dict())
             if d != "name"]
    assert diffs, f"{table.name} row {row.key} equals its reference {ref.key}"
    assert all(_covered(d, named) for d in diffs), (diffs, named)


def test_relative_changes_follow_the_preset():
    t = TABLES["tab4"]
    for preset in ("tiny", "smoke"):
        six, seven = (row_config(t, t.row(k), preset) for k in ("6", "7"))
        assert [2 * s.steps if s.name in ("II-fixed", "II-native") else s.steps for s in six.stages] == [s.steps for s in seven.stages]


def test_list_prints_every_row_with_its_overrides():
    text = list_rows()
    for t, r in ROWS:
        assert f"== {t.name}" in text and f"   {r.key:<13} {r.label}" in text
    assert '"ape": false' in text and "×2" in text and "compared with row lpe-high" in text


def test_cli_names_an_unknown_table(capsys):
    from minicomp.cli import main
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "tab9", "--preset", "smoke", "--out", "/nonexistent"])
    assert e.value.code == 2 and "tab9" in capsys.readouterr().err


# ---- the table writer on synthetic results --------------------------------------------------

KINDS = ["document/title", "document/lines", "chart/longest", "chart/bars", "scene/colour", "scene/shapes"] * 10


def _result(row: str, seed: int, hits: list[int]) -> dict:
    final = {"hits": hits, "kinds": KINDS, "blank_hits": [0] * len(KINDS), "accuracy": sum(hits) / len(hits),
             "blank_accuracy": 0.0}
    return {"table": "t", "row": row, "seed": seed, "key": "k", "final": final, "by_resolution": {}}


def _hits(p: float, offset: int = 0) -> list[int]:
    n = len(KINDS)
    return [int(((i + offset) % n) < p * n) for i in range(n)]


def test_t_quantiles_match_the_tables():
    for df, t in ((1, 12.706), (2, 4.303), (10, 2.228), (30, 2.042)):
        assert student_t_quantile(0.975, df) == pytest.approx(t, abs=1e-3)


def test_accuracy_interval_is_wilson_for_one_seed_and_t_for_spread_seeds():
    one = accuracy([_result("a", 0, _hits(0.5))])
    assert (one["lo"], one["hi"]) == pytest.approx(wilson(30, 60)) and one["seeds"] == 1
    spread = [_result("a", s, _hits(p)) for s, p in enumerate((0.4, 0.5, 0.6))]
    acc = accuracy(spread)
    half = student_t_quantile(0.975, 2) * 0.1 / 3 ** 0.5  # sd of (0.4, 0.5, 0.6) is 0.1
    assert acc["mean"] == pytest.approx(0.5) and acc["hi"] - acc["mean"] == pytest.approx(half)


def test_differences_are_paired_and_directions_follow_the_intervals():
    ref = [_result("r", s, _hits(0.2, s)) for s in range(3)]
    up = [_result("u", s, _hits(0.8, s)) for s in range(3)]
    same = [_result("s", s, _hits(0.2, s + 1)) for s in range(3)]  # the same accuracy, other questions right
    d = difference(up, ref)
    assert d["mean"] == pytest.approx(0.6) and d["lo"] > 0
    assert direction(+3.0, d) == "agrees" and direction(-3.0, d) == "disagrees" and direction(None, d) == "—"
    assert direction(+3.0, difference(same, ref)) == "cannot tell"
    table = Table("t", "T", {}, (Row("r", "ref", {}, paper={"AI2D": 50, "ChartQA": 40, "DocVQA": 30}),
                                 Row("u", "up", {}, ref="r", paper={"AI2D": 51, "ChartQA": 45, "DocVQA": 35})), "m")
    data = table_data(table, {"r": ref, "u": up})
    row = data["rows"][1]
    assert row["vs_ref_all"]["paper"] == pytest.approx(11 / 3) and row["vs_ref_all"]["direction"] == "agrees"
    assert row["vs_ref_reading"]["paper"] == pytest.approx(5.0)
    md = to_markdown(data, "minicomp reproduce t", "tiny")
    assert "| u | up | 51 | 45 | 35 |" in md and "agrees" in md and "`minicomp reproduce t`" in md


def test_tables_name_the_machine_of_each_run():
    table = Table("t", "T", {}, (Row("r", "ref", {}), Row("u", "up", {}, ref="r")), "m")
    res = {"r": [_result("r", s, _hits(0.2, s)) for s in range(2)], "u": [_result("u", s, _hits(0.8, s)) for s in range(2)]}
    for rs in res.values():
        for r in rs:
            r["machine"] = "cpu A"
    assert "Machine: cpu A." in to_markdown(table_data(table, res), "c", "tiny")
    res["u"][1]["machine"] = "cpu B"
    del res["r"][1]["machine"]  # results written before machines were recorded
    md = to_markdown(table_data(table, res), "c", "tiny")
    assert "cpu A: r-s0, u-s0; not recorded: r-s1; cpu B: u-s1." in md
    assert machine_mod.machine().endswith(f"{os.cpu_count()} cores, torch {torch.__version__}")  # what a result records
    assert "Code: not recorded." in md  # results written before the code was recorded
    res["u"][0]["code"] = "abc"
    assert "not recorded: r-s0, r-s1, u-s1; abc: u-s0." in to_markdown(table_data(table, res), "c", "tiny")


def test_results_record_the_code_they_ran(monkeypatch):
    import subprocess
    from pathlib import Path

    root = Path(machine_mod.__file__).resolve().parents[1]
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    except OSError:
        top = None
    if top is not None and top.returncode == 0 and Path(top.stdout.strip()).resolve() == root:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        assert machine_mod.code() in (head, head + "+changes")
    else:
        assert machine_mod.code().endswith("(not a git checkout)")

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")
    monkeypatch.setattr(machine_mod.subprocess, "run", no_git)
    from minicomp import __version__
    assert machine_mod.code() == f"minicomp {__version__} (not a git checkout)"


def test_constraints_pin_the_libraries_that_results_record():
    from pathlib import Path

    import PIL
    pins = {}
    for line in (Path(__file__).parents[1] / "constraints.txt").read_text().splitlines():
        if line.split("#")[0].strip():
            name, version = line.split(";")[0].split("==")
            pins[name.strip().lower()] = version.strip()
    assert set(machine_mod.LIBRARIES) <= set(pins)  # every library a build log or result records is pinned
    libs = machine_mod.libraries()
    assert libs["torch"] == torch.__version__.split("+")[0] and libs["pillow"] == PIL.__version__


def test_compare_lists_effects_resolved_in_either_suite(tmp_path, capsys):
    from minicomp.cli import main
    from minicomp.reproduce.compare import compare
    table = Table("tab5b", "T", {}, (Row("r", "ref", {}), Row("u", "up", {}, ref="r"), Row("s", "same", {}, ref="r"),
                                     Row("d", "down", {}, ref="r")), "m")
    ref = [_result("r", s, _hits(0.5, s)) for s in range(3)]
    suites = {"full": {"u": 0.8, "s": 0.5, "d": 0.2}, "short": {"u": 0.8, "s": 0.5, "d": 0.5}}
    for name, ps in suites.items():
        res = {"r": ref, **{k: [_result(k, s, _hits(p, s)) for s in range(3)] for k, p in ps.items()}}
        out = tmp_path / name
        (out / "results" / "tab5b").mkdir(parents=True)
        (out / "tab5b.json").write_text(json.dumps({**table_data(table, res), "preset": name, "seeds": 3}))
        for s in range(2):
            (out / "results" / "tab5b" / f"r-s{s}.json").write_text(json.dumps({"stage_minutes": {"I": 1.5, "III": 2.0}}))
    data = compare(tmp_path / "short", tmp_path / "full", ["tab5b"])
    t = data["tables"][0]
    assert t["training_minutes"] == (7.0, 7.0) and t["preset"] == ("short", "full")
    seen = {(e["row"], e["metric"]): e["resolved"] for e in t["effects"]}
    assert seen[("u", "all")] == "both" and seen[("d", "all")] == f"only {(tmp_path / 'full').as_posix()}"
    assert not any(row == "s" for row, _ in seen)  # resolved in neither: not listed
    from minicomp.reproduce.compare import write_comparison
    md = write_comparison(tmp_path / "short", tmp_path / "full", ["tab5b"], "c")[1].read_text()
    assert "| tab5b | d | r | all |" in md and "| tab5b | short / full | 3 / 3 | 7 / 7 |" in md
    with pytest.raises(ValueError, match="tab4.json"):
        compare(tmp_path / "short", tmp_path / "full", ["tab4"])
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "--out", str(tmp_path / "short"), "--against", str(tmp_path / "full")])
    assert e.value.code == 2 and "tab4" in capsys.readouterr().err  # every table with rows, and tab4 is missing


def test_a_difference_needs_the_same_questions():
    a, b = _result("a", 0, _hits(0.5)), _result("b", 0, _hits(0.5))
    b["final"]["kinds"] = list(reversed(KINDS))
    with pytest.raises(ValueError, match="different questions"):
        difference([a], [b])


# ---- the suite: a real row pair at smoke size, its cache and resume --------------------------

SMOKE = {"eval_budgets": [8], "eval_samples": 4}
PAIR = Table("pair", "a pair", SMOKE, (Row("a", "reference", {}),
                                       Row("b", "Stage III changed", {"stages": {"III": {"lr": {"llm": 2e-3}}}},
                                           ref="a")), "test")


def _jobs(table=PAIR):
    return [Job(table, r, 0, row_config(table, r, "smoke", 0)) for r in table.rows]


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory):
    """The pair, each start of a run seeing a new commit (as a suite resumed after a pull would)."""
    out = tmp_path_factory.mktemp("reproduce")
    suite = Suite(out, "smoke", procs=1, progress=False, say=lambda *a: None)
    commits = iter(range(1, 100))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(machine_mod, "code", lambda: f"commit-{next(commits)}")
        mp.setattr(machine_mod, "machine", lambda: "cpu A")
        return suite, suite.run(_jobs())


def test_a_row_pair_runs_end_to_end_and_shares_its_prefix(suite_run):
    suite, (a, b) = suite_run
    assert a["row"] == "a" and b["row"] == "b" and len(a["final"]["hits"]) == 8
    log = (suite.out / "runs" / "pair-b-s0" / "train.log").read_text()
    assert "stages I, II-fixed, II-native from the cache" in log
    cached = [p for p in (suite.out / "cache").iterdir()]
    assert len(cached) == 3 and all(not any((p / "state").iterdir()) for p in cached)  # no optimiser state
    metrics = [json.loads(x) for x in (suite.out / "runs" / "pair-b-s0" / "metrics.jsonl").read_text().splitlines()]
    assert [m["stage"] for m in metrics] == ["I"] * 3 + ["II-fixed"] * 3 + ["II-native"] * 3 + ["III"] * 3
    assert not (suite.out / "runs" / "pair-a-s0" / "checkpoints").exists()  # only the final model is kept
    assert (suite.out / "runs" / "pair-a-s0" / "model" / "comp_config.json").is_file()


def test_a_result_names_the_code_of_every_start_that_trained_it(suite_run):
    """b's first three stages were trained by a's start (commit-1, carried by the cache), its Stage
    III by its own (commit-2): the result names both, in order, not the code at hand when written."""
    suite, (a, b) = suite_run
    assert (a["code"], a["machine"]) == ("commit-1", "cpu A")
    assert (b["code"], b["machine"]) == ("commit-1 → commit-2", "cpu A")
    assert [(s["global_step"], s["code"]) for s in b["starts"]] == [(0, "commit-1"), (9, "commit-2")]
    assert all([s["code"] for s in provenance.starts(c)] == ["commit-1"] for c in (suite.out / "cache").iterdir())
    assert provenance.chain([{"code": "x"}, {"code": "x"}, {"code": "y"}, {"code": "x"}], "code") == "x → y → x"
    assert provenance.chain([], "code") == "not recorded"


def test_a_row_from_a_cached_prefix_equals_the_row_from_scratch(suite_run, tmp_path):
    suite, (_, b) = suite_run
    alone = Suite(tmp_path, "smoke", procs=1, progress=False, say=lambda *a: None)
    (fresh,) = alone.run(_jobs()[1:])
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    assert fresh["key"] == b["key"] and fresh["final"] == b["final"]
    last = lambda s: (s.out / "runs" / "pair-b-s0" / "metrics.jsonl").read_text().splitlines()[-1]  # noqa: E731
    assert json.loads(last(alone))["loss"] == json.loads(last(suite))["loss"]


def test_finished_results_are_not_redone_and_a_changed_recipe_is_not_stale(suite_run, monkeypatch):
    suite, results = suite_run
    stamps = [os.stat(suite.result_path(j)).st_mtime_ns for j in _jobs()]
    monkeypatch.setattr(Suite, "_train", lambda *a: pytest.fail("a finished run was trained again"))
    assert suite.run(_jobs()) == results
    assert [os.stat(suite.result_path(j)).st_mtime_ns for j in _jobs()] == stamps
    changed = Table("pair", "a pair", SMOKE, (PAIR.rows[0], Row("b", "b", {"stages": {"III": {"lr": {"llm": 3e-3}}}})),
                    "test")
    plan = suite.plan(_jobs(changed))
    assert [(j.row.key, steps) for j, steps in plan] == [("b", 3)]  # b only, and only its own Stage III


def test_an_interrupted_suite_resumes_without_redoing_finished_runs(tmp_path, monkeypatch):
    from minicomp.train import train

    table = Table("pair", "a pair", SMOKE, (PAIR.rows[0], Row("c", "c", {"stages": {"III": {"lr": {"llm": 4e-3}}}})),
                  "test")
    jobs = _jobs(table)
    suite = Suite(tmp_path, "smoke", procs=1, progress=False, say=lambda *a: None)
    real = Suite._train

    def stop_at_c(self, job, bar):
        if job.row.key == "c":  # killed two steps into c's Stage II-fixed, its last checkpoint Stage I's end
            cfg = job.cfg.to_dict() | {"keep_checkpoints": 0, "save_every": 0}
            from minicomp.config import TrainConfig
            train(TrainConfig(**cfg), tmp_path / "runs" / job.slug, stop_after=5, progress=False)
            raise KeyboardInterrupt
        return real(self, job, bar)

    monkeypatch.setattr(Suite, "_train", stop_at_c)
    with pytest.raises(KeyboardInterrupt):
        suite.run(jobs)
    first = os.stat(suite.result_path(jobs[0])).st_mtime_ns
    monkeypatch.setattr(Suite, "_train", real)
    a, c = suite.run(jobs)
    assert os.stat(suite.result_path(jobs[0])).st_mtime_ns == first
    log = (tmp_path / "runs" / "pair-c-s0" / "train.log").read_text()
    assert "--resume" in log and "resuming from" in log
    assert c["row"] == "c" and len(c["final"]["hits"]) == 8
    # its Stage I ran outside the suite, with nothing recorded: the result says so
    assert a["code"] == machine_mod.code() and c["code"] == f"not recorded → {machine_mod.code()}"
    assert [s["global_step"] for s in c["starts"]] == [0, 3]  # from its checkpoint, not its last metrics
    assert yaml.safe_load((tmp_path / "runs" / "pair-c-s0" / "recipe.yaml").read_text())["save_every"] == \
        suite_mod.SAVE_EVERY  # a stop loses at most that much


def test_tab3_shows_each_original_once_and_the_trained_over_seeds(tmp_path):
    from minicomp.reproduce.probes import _path, tab3_data, tab3_markdown
    from minicomp.reproduce.suite import _write_json

    suite = Suite(tmp_path, "smoke", procs=1, progress=False)
    probes = lambda cls, seg: {"fixed 64px": {"mean": cls, "segment_miou": seg},  # noqa: E731
                               "native <=256 patches": {"mean": cls + 0.1, "segment_miou": seg}}
    _write_json(_path(suite, "original-siglip"), {"key": "k", "vfm": "siglip", "probes": probes(0.4, 0.5)})
    for s, cls in enumerate((0.5, 0.6, 0.9)):
        _write_json(_path(suite, f"8-s{s}"), {"key": "k" if s < 2 else "old", "vfm": "siglip", "seed": s,
                                              "probes": probes(cls, 0.5), "machine": "cpu A", "code": f"c{s}"})
    wanted = {"original-siglip": "k", "8-s0": "k", "8-s1": "k", "8-s2": "k"}
    data = tab3_data(suite, seeds=3, wanted=wanted)  # 8-s2's probes are of a replaced model: left out
    original, trained = data["rows"]
    assert (original["model"], original["seeds"], trained["model"], trained["seeds"]) == ("original", 1, "CoMP-trained", 2)
    assert trained["classification_own"]["mean"] == pytest.approx(0.55)
    assert trained["classification_higher"]["mean"] == pytest.approx(0.65)
    assert tab3_data(suite, seeds=3) == {**data, "rows": []}  # nothing here was probed under today's keys
    md = tab3_markdown(data, "minicomp reproduce tab3", "smoke")
    assert "| SigLIP → toy siglip | original | 87.1 / 88.2 | 40.0 [" in md and "| CoMP-trained | 86.5 / 87.4 | 55.0 [" in md
    # where each probe ran: the original's result predates the record, the trained seeds name theirs
    assert "siglip original-probe" in md and "cpu A: siglip CoMP-trained-s0, siglip CoMP-trained-s1" in md
    assert "c0: siglip CoMP-trained-s0; c1: siglip CoMP-trained-s1" in md and "not recorded" in md
    with pytest.raises(ValueError, match="unknown encoder"):
        from minicomp.assess import vfm_probes
        vfm_probes(None, which=("neither",))


def test_a_failed_run_names_its_log_and_a_torn_result_is_rerun(tmp_path, monkeypatch):
    suite = Suite(tmp_path, "smoke", procs=1, progress=False, say=lambda *a: None)
    job = _jobs()[0]
    suite.result_path(job).parent.mkdir(parents=True)
    suite.result_path(job).write_text('{"key": "')  # torn: not served, planned again
    assert suite.done(job) is None and [j.row.key for j, _ in suite.plan([job])] == ["a"]
    bad = Table("pair", "bad", {**SMOKE, "data": {"qa": {"synthetic": 64, "task": "qa"}}},
                (Row("a", "a", {"stages": {"III": {"lr": {"llm": 1e30}}}}),), "test")  # diverges: a NaN guard stop
    with pytest.raises(RuntimeError, match=r"(?s)pair-a-s0: training failed .*train.log ends.*FloatingPointError"):
        suite.run(_jobs(bad))


def test_runs_evaluate_only_what_the_tables_read_and_no_number_changes(suite_run, tmp_path, monkeypatch):
    """The suite evaluates the last stage only and sweeps only Fig. 3's rows; evaluating every stage
    and sweeping, as `minicomp train` does by default, gives the same final numbers."""
    suite, (a, _) = suite_run
    assert list(a["stages"]) == ["III"] and a["by_resolution"] == {}  # not a Fig. 3 row
    monkeypatch.setattr(suite_mod, "eval_settings", lambda job: {"eval_stages": "all", "eval_sweep": True})
    (full,) = Suite(tmp_path, "smoke", procs=1, progress=False, say=lambda *a: None).run(_jobs()[:1])
    assert list(full["stages"]) == ["I", "II-fixed", "II-native", "III"] and "native ≤8 tokens" in full["by_resolution"]
    assert full["key"] == a["key"] and full["final"] == a["final"] and full["stages"]["III"] == a["stages"]["III"]
    last = lambda s: (s.out / "runs" / "pair-a-s0" / "metrics.jsonl").read_text().splitlines()[-1]  # noqa: E731
    assert json.loads(last(Suite(tmp_path, "smoke")))["loss"] == json.loads(last(suite))["loss"]


def test_a_fig3_row_without_its_sweep_is_not_served(tmp_path):
    from minicomp.reproduce.rows import DERIVED, TABLES
    table, rows = DERIVED["fig3"]
    suite = Suite(tmp_path, "smoke", procs=1, progress=False)
    job = Job(TABLES[table], TABLES[table].row(rows[0]), 0, row_config(TABLES[table], TABLES[table].row(rows[0]), "smoke", 0))
    assert suite_mod.needs_sweep(job) and suite_mod.eval_settings(job)["eval_sweep"]
    path = suite.result_path(job)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"key": suite.key(job), "final": {}, "by_resolution": {}}))
    assert suite.done(job) is None  # rerun: Fig. 3 needs the sweep
    path.write_text(json.dumps({"key": suite.key(job), "final": {}, "by_resolution": {"native ≤8 tokens": {}}}))
    assert suite.done(job) is not None


def test_rows_that_train_the_same_run_share_one_result(tmp_path, monkeypatch):
    from minicomp.reproduce.suite import jobs_for
    jobs = {j.slug: j for j in jobs_for(["tab4", "tab5b"], 1, "tiny")}  # at smoke size their II-fixed differ
    row6, none = jobs["tab4-6-s0"], jobs["tab5b-none-s0"]
    assert config_differences(row6.cfg.to_dict(), none.cfg.to_dict()) != ["name"]  # a fixed size a native stage never reads
    suite = Suite(tmp_path, "tiny", procs=1, progress=False, say=lambda *a: None)
    assert suite.key(row6) == suite.key(none) and suite.keys(row6)[1] != suite.keys(none)[1]
    monkeypatch.setattr(Suite, "_train", lambda self, job, bar: pytest.fail(f"{job.slug} trained"))
    suite_mod._write_json(suite.result_path(row6), {"table": "tab4", "row": "6", "seed": 0, "key": suite.keys(row6)[1],
                                                    "final": {"accuracy": 0.5, "blank_accuracy": 0.1},
                                                    "stage_minutes": {"I": 0.2, "III": 4.0}})
    assert suite.plan([none]) == [(none, 0)]
    (got,) = suite.run([none])
    assert got["same_run_as"] == "tab4-6-s0" and got["table"] == "tab5b" and got["row"] == "none"
    assert got["final"] == {"accuracy": 0.5, "blank_accuracy": 0.1} and suite.done(none) == got
    assert got["stage_minutes"] == {"I": 0.0, "III": 0.0}  # trained once: its minutes count in one table


def test_the_committed_results_are_served_by_this_code():
    """A change to the keys that would silently rerun the committed suite (hours on 2 cores) fails here,
    and so does a committed result of a replaced model (the tables leave it out; it must not lie there).
    Seed 0 is complete; the README says how many of the other seeds' runs are."""
    from pathlib import Path

    from minicomp.reproduce.probes import _path, current_keys
    from minicomp.reproduce.suite import jobs_for
    out = Path(__file__).resolve().parents[1] / "reproduce"
    suite = Suite(out, "tiny", procs=2, progress=False)
    jobs = jobs_for(["tab4", "tab5a", "tab5b"], 3, "tiny")
    assert len(jobs) == 69
    assert [j.slug for j in jobs if suite.result_path(j).exists() and suite.done(j) is None] == []
    assert [j.slug for j in jobs if j.seed == 0 and suite.done(j) is None] == []
    wanted = current_keys(suite, 3)
    committed = sorted(p.stem for p in (out / "results" / "tab3").glob("*.json"))
    assert [n for n in committed if n not in wanted or json.loads(_path(suite, n).read_text())["key"] != wanted[n][0]] == []


def test_code_flags_changes_to_the_package_alone(tmp_path):
    """A checkout whose tracked minicomp/ files differ from HEAD is "<commit>+changes"; a change
    elsewhere in the repository, or a new untracked file, leaves the commit alone."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    src = Path(machine_mod.__file__).resolve().parent
    shutil.copytree(src, tmp_path / "minicomp", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (tmp_path / "notes.txt").write_text("a\n")
    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], capture_output=True, text=True,  # noqa: E731
                                    check=True).stdout.strip()
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x")
    head = git("rev-parse", "HEAD")
    code = lambda: subprocess.run(  # noqa: E731
        [sys.executable, "-c", "from minicomp.environment import code; print(code())"], cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, check=True).stdout.strip()
    assert code() == head
    (tmp_path / "notes.txt").write_text("b\n")  # outside the package
    (tmp_path / "minicomp" / "scratch.py").write_text("")  # untracked
    assert code() == head
    with open(tmp_path / "minicomp" / "packed.py", "a") as f:
        f.write("\n# edited\n")
    assert code() == head + "+changes"


def test_a_resumed_runs_recorded_step_passes_over_a_torn_checkpoint(tmp_path):
    """Provenance records a resume at the checkpoint the loop will load: a torn newest one is passed
    over, as `load_checkpoint` passes it over."""
    from safetensors.torch import save_file

    from minicomp.checkpoint import checkpoint_meta, checkpoints

    run = tmp_path / "run"
    for step in (3, 5):
        ckpt = run / "checkpoints" / f"step-{step:07d}"
        (ckpt / "state").mkdir(parents=True)
        save_file({"w": torch.zeros(64, 64)}, str(ckpt / "model.safetensors"))
        (ckpt / "meta.json").write_text(json.dumps({"stage_index": 1, "step": step, "global_step": step}))
    assert Suite._resume_step(run) == 5
    newest = checkpoints(run)[-1] / "model.safetensors"
    with open(newest, "r+b") as f:  # killed mid-write: shorter than its header says
        f.truncate(1000)
    with pytest.raises(Exception, match="incomplete metadata"):
        checkpoint_meta(checkpoints(run)[-1])
    assert Suite._resume_step(run) == 3
    (checkpoints(run)[0] / "meta.json").write_text("{}")  # and a meta.json without its step
    assert Suite._resume_step(run) == 0


def test_a_torn_stage_end_checkpoint_is_never_cached(tmp_path):
    """A finished run's stage-end checkpoints go to the cache for the rows that share the stage; a
    torn one is named and left out, so no row starts from it."""
    from safetensors.torch import save_file

    said = []
    suite = Suite(tmp_path, "smoke", procs=1, progress=False, say=said.append)
    jobs = _jobs()
    suite.shared = suite.shared_prefixes(jobs)  # a and b share every stage before III
    job, run = jobs[0], tmp_path / "runs" / jobs[0].slug
    assert {suite.key(job, 0), suite.key(job, 1)} <= suite.shared
    for k, step in ((1, 2), (2, 4)):  # the ends of the first and second stages
        ckpt = run / "checkpoints" / f"step-{step:07d}"
        (ckpt / "state").mkdir(parents=True)
        save_file({"w": torch.zeros(64, 64)}, str(ckpt / "model.safetensors"))
        (ckpt / "meta.json").write_text(json.dumps({"stage_index": k, "step": 0, "global_step": step}))
    with open(run / "checkpoints" / "step-0000004" / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    ev = {"hits": [1], "kinds": ["scene/shapes"], "accuracy": 1.0, "blank": {"hits": [0], "accuracy": 0.0}}
    (run / "results.json").write_text(json.dumps({"stage_minutes": {}, "evals": {job.cfg.stages[-1].name: ev}}))
    suite._collect(job, run, job.cfg, 1)
    assert (tmp_path / "cache" / suite.key(job, 0) / "meta.json").is_file()
    assert not (tmp_path / "cache" / suite.key(job, 1)).exists()
    assert any("step-0000004: not cached, torn" in s for s in said)
