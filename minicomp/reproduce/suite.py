"""Run the ablation rows: one training run per (row, seed), cached by what decides its result.

    out/
      results/<table>/<row>-s<seed>.json   each finished (row, seed), written atomically
      cache/<key>/                         a stage-end checkpoint, keyed on the config up to that stage
      runs/<table>-<row>-s<seed>/          the run directory (its report, metrics and final model)

- **Keys.** A result is keyed on the resolved config (every field that can change a number: all
  but the run's name and what is logged or kept), the model files' contents and the process
  count. A result whose key differs from the row's current one is stale and is run again.
- **Shared stage prefixes.** The checkpoint at the end of stage k is cached under the key of the
  config up to and including stage k, where two or more rows of the registry share that key. A
  row whose first k stages resolve to a cached key starts from it instead of training them again
  (the data order of a stage depends on the seed and the stage alone, so the continuation equals
  a run from scratch). The cache holds the weights and meta.json, not the optimiser state: each
  stage starts a new optimiser.
- **The same run twice.** Rows of two tables whose configs agree in every field that training reads
  (a native stage never reads `fixed_size`) are one run: the second takes the first's result.
- **Resume.** A run directory left by an interrupted suite, with the same config, is resumed
  from its last checkpoint; a finished result is never redone. Runs save every `SAVE_EVERY` steps
  (unkeyed: it changes no number), so a stop loses at most that much of a stage.
- **Provenance.** Each start of a run records the code and machine that train from its step on,
  and a cached stage carries the records of the starts that trained it (`provenance`): a result
  names them all, "A → B", not the code at hand when it is written.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from ..checkpoint import TORN, checkpoint_meta, checkpoints, newest_usable
from ..config import TrainConfig, config_differences
from ..launch import cpu_processes
from ..resume import read_metrics
from .keys import UNKEYED, config_key
from ..environment import libraries
from . import provenance
from .rows import DERIVED, TABLES, Row, Table, row_config

SAVE_EVERY = 200  # optimiser steps between a run's checkpoints: 2-4 minutes of the tiny recipe on 2 cores


@dataclass
class Job:
    table: Table
    row: Row
    seed: int
    cfg: TrainConfig

    @property
    def slug(self) -> str:
        return f"{self.table.name}-{self.row.key}-s{self.seed}"


def needs_sweep(job: Job) -> bool:
    """Fig. 3 reads the resolution sweep of its rows' final models; every other table the final
    model at its own resolution alone (the sweep is most of a run's evaluation time)."""
    table, rows = DERIVED["fig3"]
    return job.table.name == table and job.row.key in rows


def eval_settings(job: Job) -> dict:
    """The evaluations a run makes: what its tables read. Unkeyed: they change no number."""
    return {"eval_stages": "last", "eval_sweep": needs_sweep(job)}


def jobs_for(names: list[str], seeds: int, preset: str) -> list[Job]:
    """Every (row, seed) the named tables need, seed by seed (a whole first seed comes first),
    each row once; Tab. 3 and Fig. 3 need their Tab. 4 rows."""
    need: dict[str, list[str] | None] = {}
    for name in names:
        if name in TABLES:
            need[name] = None  # every row
        else:
            table, rows = DERIVED[name]
            if need.get(table, []) is not None:
                need[table] = list(dict.fromkeys([*(need.get(table) or []), *rows]))
    out = []
    for seed in range(seeds):
        for name, keys in need.items():
            t = TABLES[name]
            for r in t.rows:
                if keys is None or r.key in keys:
                    out.append(Job(t, r, seed, row_config(t, r, preset, seed)))
    return out


def _write_json(path: Path, obj) -> None:
    """Atomically: a reader sees the old file or the whole new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def read_result(path: Path) -> dict | None:
    try:
        r = json.loads(path.read_text())
        return r if isinstance(r, dict) and "key" in r else None
    except (OSError, ValueError):
        return None


def _compact(ev: dict) -> dict:
    """What the tables need of a `with_control` result: the 0/1 hits, real and blank, per question."""
    return {"hits": ev["hits"], "kinds": ev["kinds"], "blank_hits": ev["blank"]["hits"],
            "accuracy": ev["accuracy"], "blank_accuracy": ev["blank"]["accuracy"]}


class Suite:
    """`Suite(out, preset, procs).run(jobs)`. `procs`: training processes per run (None: as many
    as the cores allow, as `minicomp train --procs auto`)."""

    def __init__(self, out: str | Path, preset: str = "tiny", procs: int | None = None, progress: bool = True,
                 say=print):
        self.out, self.preset, self.progress, self.say = Path(out), preset, progress, say
        self.procs, self.shared = procs, set()

    def _procs(self, cfg: TrainConfig) -> int:
        return self.procs or cpu_processes(cfg, os.cpu_count() or 1)

    def result_path(self, job: Job) -> Path:
        return self.out / "results" / job.table.name / f"{job.row.key}-s{job.seed}.json"

    def key(self, job: Job, upto: int | None = None) -> str:
        return config_key(job.cfg, self._procs(job.cfg), upto)

    def keys(self, job: Job, upto: int | None = None) -> tuple[str, str]:
        """The key, and the legacy key that earlier results and caches were written under."""
        return self.key(job, upto), config_key(job.cfg, self._procs(job.cfg), upto, legacy=True)

    def _serves(self, job: Job, r: dict | None) -> bool:
        return r is not None and (bool(r.get("by_resolution")) or not needs_sweep(job))

    def done(self, job: Job) -> dict | None:
        r = read_result(self.result_path(job))
        return r if self._serves(job, r) and r["key"] in self.keys(job) else None

    def twin(self, job: Job) -> dict | None:
        """A finished result of another row of the registry (any table, same seed) whose config is this
        job's in everything that is read: the same run, so its result is this job's."""
        want = self.key(job)
        for other in jobs_for(list(TABLES), job.seed + 1, self.preset):
            if other.seed == job.seed and (other.table.name, other.row.key) != (job.table.name, job.row.key) \
                    and self.key(other) == want and self._serves(job, r := self.done(other)):
                return r
        return None

    def cached_prefix(self, job: Job) -> tuple[int, Path] | None:
        """The last stage k whose stage-end checkpoint is cached for this job's config: (k, folder)."""
        for k in reversed(range(len(job.cfg.stages))):
            for key in self.keys(job, k):
                folder = self.out / "cache" / key
                if (folder / "meta.json").is_file():
                    return k, folder
        return None

    def plan(self, jobs: list[Job]) -> list[tuple[Job, int]]:
        """The jobs still to run, each with the optimiser steps it will take: stages cached, or
        trained by an earlier job of the plan, are not counted."""
        have, out = set(), []
        for job in jobs:
            if self.done(job):
                continue
            steps = 0
            if self.key(job) not in have and self.twin(job) is None:
                for k, s in enumerate(job.cfg.stages):
                    key = self.key(job, k)
                    if key not in have and not any((self.out / "cache" / c / "meta.json").is_file()
                                                   for c in self.keys(job, k)):
                        steps += s.steps
                    have.add(key)
            out.append((job, steps))
        return out

    def shared_prefixes(self, jobs: list[Job]) -> set[str]:
        """Prefix keys that two or more rows share, of these jobs and of the registry's at the same
        seeds (a table run later then finds them): only these are cached."""
        seeds = 1 + max((j.seed for j in jobs), default=0)
        every = {(j.table.name, j.row.key, j.seed): j for j in [*jobs_for(list(TABLES), seeds, self.preset), *jobs]}
        seen: dict[str, int] = {}
        for job in every.values():
            for k in range(len(job.cfg.stages)):
                key = self.key(job, k)
                seen[key] = seen.get(key, 0) + 1
        return {k for k, n in seen.items() if n > 1}

    def run(self, jobs: list[Job]) -> list[dict]:
        """Run what is not done; -> every job's result, in order."""
        self.shared = self.shared_prefixes(jobs)
        todo = self.plan(jobs)
        total = sum(s for _, s in todo)
        shared = sum(s.steps for j, _ in todo for s in j.cfg.stages) - total
        self.say(f"{len(jobs)} runs: {len(jobs) - len(todo)} done, {len(todo)} to train: {total:,} optimiser steps"
                 + (f" ({shared:,} more are stages shared with other rows, trained once)" if shared else ""))
        bar = tqdm(total=total, unit="step", desc="reproduce", disable=not self.progress, smoothing=0)
        try:
            for i, (job, steps) in enumerate(todo):
                bar.set_description(f"{job.slug} ({i + 1}/{len(todo)})")
                t0 = time.time()
                twin = self.twin(job)
                if twin is not None:  # another table's row is this run: its result, relabelled
                    result = {**twin, "table": job.table.name, "row": job.row.key, "key": self.key(job),
                              "same_run_as": f"{twin['table']}-{twin['row']}-s{twin['seed']}",
                              "stage_minutes": {s: 0.0 for s in twin.get("stage_minutes", {})}}  # trained once
                else:
                    result = self._train(job, bar)
                _write_json(self.result_path(job), result)
                self.say(f"{job.slug}: exact match {result['final']['accuracy']:.3f} (blank "
                         f"{result['final']['blank_accuracy']:.3f}) in {(time.time() - t0) / 60:.1f} min"
                         + (f", the same run as {result['same_run_as']}" if twin is not None else ""))
        finally:
            bar.close()
        return [self.done(job) for job in jobs]

    # ---- one run ----------------------------------------------------------------------------

    def _train(self, job: Job, bar) -> dict:
        run = self.out / "runs" / job.slug
        procs = self._procs(job.cfg)
        cfg = TrainConfig(**{**job.cfg.to_dict(), "keep_checkpoints": 0,  # keep every stage's end, to cache
                             "save_every": SAVE_EVERY, **eval_settings(job)})
        resume = self._resumable(run, cfg)
        if not resume:
            shutil.rmtree(run, ignore_errors=True)
            prefix = self.cached_prefix(job)
            if prefix is not None:
                self._seed_from_cache(run, cfg, *prefix)
                resume = True
        run.mkdir(parents=True, exist_ok=True)
        (run / "recipe.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        cmd = [sys.executable, "-m", "minicomp.train", "--preset", self.preset, "--config", str(run / "recipe.yaml"),
               "--out", str(run), "--procs", str(procs)] + (["--resume", "--force"] if resume else [])
        start = self._global_step(run)
        provenance.record_start(run, self._resume_step(run) if resume else 0)
        with (run / "train.log").open("a") as log:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1"})
            try:
                while proc.poll() is None:
                    time.sleep(1)
                    step = self._global_step(run)
                    bar.update(max(0, step - start))
                    start = max(start, step)
            except BaseException:
                proc.terminate()
                proc.wait()
                raise
        if proc.returncode:
            tail = (run / "train.log").read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"{job.slug}: training failed (exit {proc.returncode}); {run / 'train.log'} ends:\n"
                               + "\n".join(tail))
        bar.update(max(0, self._global_step(run) - start))
        return self._collect(job, run, cfg, procs)

    @staticmethod
    def _global_step(run: Path) -> int:
        path = run / "metrics.jsonl"
        if not path.is_file():
            return 0
        recs = read_metrics(path)
        return recs[-1]["global_step"] if recs else 0

    @staticmethod
    def _resume_step(run: Path) -> int:
        """The global step a resumed run starts from: its newest checkpoint that is whole on disk
        (the metrics may run past it, to where the run was stopped; a torn one is passed over, as
        the loop passes it over)."""
        meta = newest_usable(checkpoints(run))
        return meta["global_step"] if meta else 0

    @staticmethod
    def _resumable(run: Path, cfg: TrainConfig) -> bool:
        if not checkpoints(run):
            return False
        try:
            saved = json.loads((run / "config.json").read_text())
        except (OSError, ValueError):
            return False
        return not [d for d in config_differences(saved, cfg.to_dict()) if d.split(".")[0] not in UNKEYED]

    def _seed_from_cache(self, run: Path, cfg: TrainConfig, k: int, folder: Path) -> None:
        """A fresh run directory that starts after stage k, from the cached checkpoint."""
        meta = json.loads((folder / "meta.json").read_text())
        (run / "checkpoints").mkdir(parents=True)
        shutil.copytree(folder, run / "checkpoints" / f"step-{meta['global_step']:07d}",
                        ignore=shutil.ignore_patterns("metrics.jsonl"))
        for name in ("metrics.jsonl", provenance.FILE):
            if (folder / name).is_file():
                shutil.copy(folder / name, run / name)
        (run / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        with (run / "train.log").open("a") as log:
            log.write(f"stages {', '.join(s.name for s in cfg.stages[:k + 1])} from the cache: {folder}\n")

    def _collect(self, job: Job, run: Path, cfg: TrainConfig, procs: int) -> dict:
        """Cache each stage-end checkpoint under its prefix key, drop the rest; -> the result."""
        found = checkpoints(run)
        meta = json.loads((run / "results.json").read_text())
        metrics = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
        starts = provenance.starts(run)
        for ckpt in found:
            try:
                m = checkpoint_meta(ckpt)
            except TORN as e:  # never cache a torn checkpoint: every row starting from it would inherit it
                self.say(f"{ckpt}: not cached, torn ({type(e).__name__}: {e}); rows that share it train it again")
                continue
            key = self.key(job, m["stage_index"] - 1) if m["step"] == 0 and m["stage_index"] >= 1 else None
            if key not in self.shared:
                continue
            dest = self.out / "cache" / key
            if not (dest / "meta.json").is_file():
                tmp = dest.with_name(f".tmp-{dest.name}")
                shutil.rmtree(tmp, ignore_errors=True)
                # a stage's end needs no optimiser state: the next stage starts a new optimiser
                shutil.copytree(ckpt, tmp, ignore=lambda d, names: names if Path(d).name == "state" else [])
                provenance.write_until(starts, tmp, m["global_step"])
                (tmp / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics
                                                           if r["global_step"] <= m["global_step"]))
                shutil.rmtree(dest, ignore_errors=True)
                os.replace(tmp, dest)
        for folder in ("checkpoints", "stages"):  # the final model stays in run/model
            shutil.rmtree(run / folder, ignore_errors=True)
        last = cfg.stages[-1].name
        return {"table": job.table.name, "row": job.row.key, "seed": job.seed, "key": self.key(job),
                "preset": self.preset, "procs": procs, "run": str(run.relative_to(self.out)),
                "machine": provenance.chain(starts, "machine"), "code": provenance.chain(starts, "code"),
                "starts": starts, "libraries": libraries(), "stage_minutes": meta["stage_minutes"],
                "final": _compact(meta["evals"][last]),
                "stages": {s: {"accuracy": e["accuracy"], "blank_accuracy": e["blank"]["accuracy"]}
                           for s, e in meta["evals"].items()},
                "by_resolution": {label: _compact(ev) for label, ev in meta.get("by_resolution", {}).items()}}
