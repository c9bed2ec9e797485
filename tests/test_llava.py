import json

import numpy as np
import pytest
from PIL import Image

from minicomp.data import BadRecord, LlavaDataset, load_image, to_rgb


def conv(q="<image>\nDescribe the image.", a="A red square."):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "images"
    r.mkdir()
    Image.new("RGB", (64, 48), (200, 10, 10)).save(r / "ok.png")
    Image.new("L", (40, 30), 128).save(r / "gray.png")
    Image.new("RGBA", (40, 30), (0, 0, 255, 0)).save(r / "rgba.png")  # fully transparent -> white
    Image.new("P", (40, 30), 3).save(r / "palette.png")
    Image.fromarray(np.full((30, 40), 65535, dtype=np.uint16)).save(r / "gray16.png")
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(r / "cmyk.jpg")
    Image.new("RGB", (1, 1)).save(r / "tiny.png")
    Image.new("RGB", (1000, 2)).save(r / "line.png")
    Image.new("RGB", (100, 100)).save(r / "bomb.png")
    (r / "corrupt.jpg").write_bytes(b"not a jpeg at all")
    (tmp_path / "secret.png").write_bytes((r / "ok.png").read_bytes())
    return r


GOOD = [
    {"id": "cap", "image": "ok.png", "conversations": conv()},
    {"id": "sft", "image": "gray.png", "conversations": conv() + [{"from": "human", "value": "Colour?"},
                                                                   {"from": "gpt", "value": "red"}]},
    {"id": "text-only", "conversations": conv("What is 2 + 2?", "4")},
    {"id": "rgba", "image": "rgba.png", "conversations": conv()},
    {"id": "palette", "image": "palette.png", "conversations": conv()},
    {"id": "gray16", "image": "gray16.png", "conversations": conv()},
    {"id": "cmyk", "image": "cmyk.jpg", "conversations": conv()},
]
BAD = {
    "image file missing": {"image": "nope.png", "conversations": conv()},
    "image unreadable": {"image": "corrupt.jpg", "conversations": conv()},
    "image path escapes root": {"image": "../secret.png", "conversations": conv()},
    "missing field": {"image": "ok.png"},
    "bad conversations": {"image": "ok.png", "conversations": [{"role": "user", "content": "hi"}]},
    "image too small": {"image": "tiny.png", "conversations": conv()},
    "extreme aspect ratio": {"image": "line.png", "conversations": conv()},
    "empty text": {"image": "ok.png", "conversations": conv(a="   ")},
    "no assistant turn": {"image": "ok.png", "conversations": [{"from": "human", "value": "<image>\nHi"}]},
    "placeholder mismatch": {"image": "ok.png", "conversations": conv(q="<image>\n<image>\nTwo?")},
}
FEWER = {"image": "ok.png", "conversations": conv(q="No placeholder here")}
BOMB = {"image": "bomb.png", "conversations": conv()}


def write(tmp_path, records, suffix):
    path = tmp_path / f"data{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n{not json\n")
    return path


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_good_records_load_and_bad_ones_are_counted(tmp_path, root, suffix, monkeypatch, caplog):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # makes bomb.png (10,000 px) a decompression bomb
    records = GOOD + list(BAD.values()) + [FEWER, BOMB]
    ds = LlavaDataset(write(tmp_path, records, suffix), image_root=root)
    n_read = len(records) + (suffix == ".jsonl")  # the JSONL file also has one line of invalid JSON
    assert len(ds) == len(GOOD) and len(ds) + sum(ds.skipped.values()) == n_read
    expected = {reason: 1 for reason in BAD} | {"image too large (decompression bomb)": 1}
    expected["placeholder mismatch"] = 2  # more and fewer
    if suffix == ".jsonl":
        expected["invalid JSON"] = 1
    assert dict(ds.skipped) == expected
    assert "skipped" in caplog.text
    by_id = {ds[i].meta["id"]: ds[i] for i in range(len(ds))}
    assert by_id["text-only"].image is None and by_id["text-only"].caption == "4"
    assert by_id["sft"].caption == "A red square.\nred"
    for key in ("cap", "sft", "rgba", "palette", "gray16", "cmyk"):
        assert by_id[key].image.mode == "RGB"
    assert by_id["rgba"].image.getpixel((0, 0)) == (255, 255, 255)  # transparency on white
    assert by_id["gray16"].image.getpixel((0, 0)) == (255, 255, 255)  # 16-bit rescaled, not clipped to garbage
    assert by_id["cap"].image.getpixel((0, 0)) == (200, 10, 10)


@pytest.mark.parametrize("reason,record", list(BAD.items()))
def test_strict_raises_naming_the_record(tmp_path, root, reason, record):
    path = write(tmp_path, GOOD[:1] + [dict(record, id="the-bad-one")], ".json")
    with pytest.raises(BadRecord, match=rf"record 1 \(id 'the-bad-one'\): {reason}"):
        LlavaDataset(path, image_root=root, strict=True)


def test_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LlavaDataset(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        LlavaDataset(tmp_path / "x.json")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match=".json or .jsonl"):
        LlavaDataset(tmp_path / "x.csv")


def test_to_rgb_and_load_image(root):
    assert to_rgb(Image.new("LA", (4, 4), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(str(root / "cmyk.jpg")).mode == "RGB"


@pytest.mark.parametrize("fmt", ["parquet", "save_to_disk"])
def test_huggingface_datasets_with_embedded_images(tmp_path, fmt):
    import io

    datasets = pytest.importorskip("datasets")

    def png(img):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    rows = {
        "id": ["ok", "gray16", "text", "corrupt", "tiny"],
        "image": [png(Image.new("RGB", (40, 30), (1, 2, 3))),
                  png(Image.fromarray(np.full((30, 40), 65535, dtype=np.uint16))),
                  None,
                  {"bytes": b"garbage", "path": "x.png"},
                  png(Image.new("RGB", (1, 1)))],
        "conversations": [conv(), conv(), conv("2 + 2?", "4"), conv(), conv()],
    }
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features({
        "id": datasets.Value("string"), "image": datasets.Image(),
        "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}]}))
    if fmt == "parquet":
        path = tmp_path / "ov.parquet"
        ds.to_parquet(str(path))
    else:
        path = tmp_path / "ov"
        ds.save_to_disk(str(path))
    llava = LlavaDataset(path)
    assert len(llava) == 3 and dict(llava.skipped) == {"image unreadable": 1, "image too small": 1}
    by_id = {llava[i].meta["id"]: llava[i] for i in range(len(llava))}
    assert by_id["ok"].image.getpixel((0, 0)) == (1, 2, 3)
    assert by_id["gray16"].image.getpixel((0, 0)) == (255, 255, 255)
    assert by_id["text"].image is None and by_id["text"].caption == "4"
    with pytest.raises(BadRecord, match="record 3 \\(id 'corrupt'\\): image unreadable"):
        LlavaDataset(path, strict=True)


def test_only_regular_files_of_raster_formats_are_opened(tmp_path):
    """Issue 15, point 9: a FIFO blocked the open forever; an EPS file was handed to PIL's
    Ghostscript plugin. Run in a child under a timeout, so that a regression fails, not hangs."""
    import os
    import subprocess
    import sys
    fifo, eps = tmp_path / "pipe.png", tmp_path / "figure.eps"
    os.mkfifo(fifo)
    eps.write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    script = ("import sys; from minicomp.data.images import BadImage, check_header, load_image\n"
              "for f in sys.argv[1:]:\n"
              "    for fn in (check_header, load_image):\n"
              "        try:\n"
              "            fn(f); print('accepted', f)\n"
              "        except BadImage as e:\n"
              "            print(e.reason)\n")
    r = subprocess.run([sys.executable, "-c", script, str(fifo), str(eps)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:4] == ["not a regular file", "not a regular file", "image unreadable", "image unreadable"]
