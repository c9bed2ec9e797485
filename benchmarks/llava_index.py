"""Paper-scale data start-up: today's loader against the memory-mapped index, side by side.

    python benchmarks/llava_index.py --records 1000000     # the issue's measurement
    python benchmarks/llava_index.py --records 20000       # seconds (the test suite runs a small one)

It writes a synthetic LLaVA JSONL (mid-stage-like conversations, every record pointing at one of
--images distinct small PNGs on local disk), then, each in a fresh process so that one cannot hide
another's memory:
- `LlavaDataset(file.jsonl)`: construction time, and the resident memory it adds;
- `minicomp data index` (`build_index`, --workers processes): the one-time cost;
- `LlavaDataset(index)`: construction time and the memory it adds, split into anonymous memory
  (private to the process) and file pages (the mapped index: shared by every process of a node);
and for both loaders the time to the first batch (the first --batch samples read and decoded).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_file(path: Path, root: Path, n: int, n_images: int) -> None:
    from PIL import Image
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n_images):
        Image.new("RGB", (64 + k % 32, 48 + k % 16), (k % 255, 90, 160)).save(root / f"img{k}.png")
    with open(path, "w") as f:
        for i in range(n):
            rec = {"id": f"r{i}", "image": f"img{i % n_images}.png",
                   "conversations": [{"from": "human", "value": "<image>\nDescribe the chart in detail."},
                                     {"from": "gpt", "value": f"A bar chart with {i % 7 + 2} bars; the tallest is "
                                                              f"labelled {chr(65 + i % 26)} and reaches {i % 97}."}]}
            f.write(json.dumps(rec) + "\n")


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(val.split()[0]) * 1024
    return out


def measure(args) -> None:
    """One loader in this process: prints a JSON line."""
    import pyarrow.ipc  # noqa: F401 (its libraries, ~25 MiB, are a fixed cost: loaded before the baseline in both)

    from minicomp.data import LlavaDataset
    before = _status()
    t = time.perf_counter()
    ds = LlavaDataset(args.measure, image_root=args.root)
    built = time.perf_counter() - t
    for i in range(args.batch):
        ds[i]
    first = time.perf_counter() - t
    after = _status()
    print(json.dumps({"construct_s": built, "first_batch_s": first, "len": len(ds),
                      "rss_added": after["VmRSS"] - before["VmRSS"], "peak_added": after["VmHWM"] - before["VmRSS"],
                      "anon_added": after.get("RssAnon", 0) - before.get("RssAnon", 0),
                      "file_added": after.get("RssFile", 0) - before.get("RssFile", 0)}))


def _child(target: str, root: Path, batch: int) -> dict:
    p = subprocess.run([sys.executable, __file__, "--measure", target, "--root", str(root), "--batch", str(batch)],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--workers", type=int, default=None, help="indexing processes (default: the cores, at most 8)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--dir", default=None, help="where to write the file and the index (default: a temporary folder)")
    ap.add_argument("--skip-direct", action="store_true", help="measure the index only (today's loader takes long)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        return measure(args)
    from minicomp.data.index import build_index

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.dir or tmp)
        base.mkdir(parents=True, exist_ok=True)
        path, root = base / "data.jsonl", base / "images"
        t = time.perf_counter()
        write_file(path, root, args.records, args.images)
        print(f"{args.records:,} records ({path.stat().st_size / 2**20:.0f} MiB), {args.images} distinct PNGs: "
              f"written in {time.perf_counter() - t:.1f} s")
        direct = None if args.skip_direct else _child(str(path), root, args.batch)
        t = time.perf_counter()
        meta = build_index(path, base / "index", image_root=root, workers=args.workers, progress=False)
        index_s = time.perf_counter() - t
        indexed = _child(str(base / "index"), root, args.batch)
        assert indexed["len"] == meta["kept"] == args.records
        size = (base / "index" / "records.arrow").stat().st_size
        mb = lambda b: f"{b / 2**20:,.0f} MiB"
        print(f"index built once in {index_s:.1f} s ({meta['read']:,} records read, {meta['kept']:,} kept); "
              f"records.arrow {mb(size)}")
        print(f"{'loader':<28}{'construct':>12}{'first batch':>14}{'memory added':>16}{'private':>12}{'file pages':>13}")
        for name, r in (("LlavaDataset(data.jsonl)", direct), ("LlavaDataset(index)", indexed)):
            if r is not None:
                print(f"{name:<28}{r['construct_s']:>11.2f}s{r['first_batch_s']:>13.2f}s{mb(r['rss_added']):>16}"
                      f"{mb(r['anon_added']):>12}{mb(r['file_added']):>13}")
        if direct:
            print(f"construction {direct['construct_s'] / indexed['construct_s']:,.0f}x faster, "
                  f"{direct['rss_added'] / max(indexed['rss_added'], 1):,.1f}x less memory added")


if __name__ == "__main__":
    main()
