"""minicomp data index: validated once, memory-mapped, the same dataset as reading the file."""
import json
import os

import pytest
from PIL import Image

from minicomp.cli import main as cli_main
from minicomp.data import BadImage, BadRecord, LlavaDataset
from minicomp.data.index import build_index, is_index
from test_llava import BAD, BOMB, FEWER, GOOD, root, write  # noqa: F401 (root is a fixture)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
@pytest.mark.parametrize("workers", [1, 2])
def test_index_equals_the_file_read_directly(tmp_path, root, suffix, workers, monkeypatch):  # noqa: F811
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # bomb.png is a decompression bomb (inherited by forks)
    records = (GOOD + list(BAD.values()) + [FEWER, BOMB]) * 3
    path = write(tmp_path, records, suffix)
    direct = LlavaDataset(path, image_root=root)
    meta = build_index(path, tmp_path / "idx", image_root=root, workers=workers, chunk=5, progress=False)
    assert is_index(tmp_path / "idx")
    ds = LlavaDataset(tmp_path / "idx")  # no image_root: the index holds resolved paths
    assert len(ds) == len(direct) == meta["kept"] and ds.skipped == direct.skipped
    assert len(ds) + sum(ds.skipped.values()) == meta["read"] == len(records) + (suffix == ".jsonl")
    for i in range(len(ds)):
        a, b = ds[i], direct[i]
        assert (a.caption, a.conversations, a.meta) == (b.caption, b.conversations, b.meta)
        assert (a.image is None and b.image is None) or a.image.tobytes() == b.image.tobytes()
        assert ds.where(i) == direct.where(i)  # the source file and record number, not the index folder
        assert ds.conversations(i) == direct.conversations(i)


def test_strict_index_names_the_record_and_an_image_gone_bad_fails_when_read(tmp_path, root):  # noqa: F811
    path = write(tmp_path, GOOD[:2] + [dict(BAD["image file missing"], id="gone")], ".json")
    with pytest.raises(BadRecord, match=r"record 2 \(id 'gone'\): image file missing"):
        build_index(path, tmp_path / "strict", image_root=root, strict=True, progress=False)
    assert not any((tmp_path / "strict").iterdir())  # no half-written index left behind
    build_index(path, tmp_path / "idx", image_root=root, workers=1, progress=False)
    os.remove(root / "gray.png")  # after indexing: counted and replaced by the training loader, never a crash here
    ds = LlavaDataset(tmp_path / "idx")
    with pytest.raises(BadImage, match="gray.png"):
        ds[1]
    assert ds[0].image is not None


def test_cli_index_and_errors(tmp_path, root, capsys):  # noqa: F811
    path = write(tmp_path, GOOD + [BAD["empty text"]], ".jsonl")
    assert cli_main(["data", "index", str(path), "--image-root", str(root), "--out", str(tmp_path / "i"),
                     "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "kept 7" in out and "'empty text': 1" in out and "'invalid JSON': 1" in out
    assert json.loads((tmp_path / "i" / "index.json").read_text())["read"] == 9
    with pytest.raises(SystemExit):  # an existing index is not overwritten without --force
        cli_main(["data", "index", str(path), "--out", str(tmp_path / "i")])
    assert "--force" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["data", "index", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "j")])
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "i" / "index.json").write_text(json.dumps({"version": 99}))
    with pytest.raises(ValueError, match="rebuild it"):
        LlavaDataset(tmp_path / "i")


def test_benchmark_runs_small(tmp_path):
    import subprocess
    import sys
    p = subprocess.run([sys.executable, "benchmarks/llava_index.py", "--records", "2000", "--images", "20", "--workers", "1",
                        "--dir", str(tmp_path)], capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert p.returncode == 0, p.stderr
    assert "LlavaDataset(index)" in p.stdout and "faster" in p.stdout
