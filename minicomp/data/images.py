"""Opening images safely: any PIL mode to RGB, and clear reasons for the ones we refuse."""
from __future__ import annotations

import io
import os
import stat
import warnings

import numpy as np
from PIL import Image

MIN_SIDE = 2  # a 1-pixel side carries no picture
MAX_ASPECT = 200


class BadImage(ValueError):
    """An image we refuse; `reason` is a short key for skip counters."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# the raster formats the pipeline supports; PIL would otherwise also try EPS (Ghostscript), PDF, …
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM", "TGA", "ICO")


def _open(src: str | bytes, path: str) -> Image.Image:
    """PIL's open, for regular files and bytes only, and only for FORMATS."""
    if isinstance(src, bytes):
        return Image.open(io.BytesIO(src), formats=FORMATS)
    try:
        mode = os.stat(src).st_mode
    except FileNotFoundError:
        raise
    except OSError as e:
        raise BadImage("image unreadable", f"{path}: {e}") from None
    if not stat.S_ISREG(mode):  # a FIFO would block the open forever; a device or folder is no image
        raise BadImage("not a regular file", path)
    return Image.open(src, formats=FORMATS)


def check_header(src: str | bytes, name: str | None = None) -> tuple[int, int]:
    """Open only the header of a file path or encoded bytes; return (width, height) or raise
    BadImage. Decompression bombs (PIL's pixel limit) are refused before any pixel is decoded."""
    path = name or (src if isinstance(src, str) else "<embedded image>")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with _open(src, path) as im:
                w, h = im.size
    except BadImage:
        raise
    except FileNotFoundError:
        raise BadImage("image file missing", path) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage("image too large (decompression bomb)", f"{path}: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage("image unreadable", f"{path}: {e}") from None
    if min(w, h) < MIN_SIDE:
        raise BadImage("image too small", f"{path}: {w}x{h}")
    if max(w, h) / min(w, h) > MAX_ASPECT:
        raise BadImage("extreme aspect ratio", f"{path}: {w}x{h}")
    return w, h


def to_rgb(im: Image.Image) -> Image.Image:
    """Any mode -> RGB: 16-bit and 32-bit grey rescaled (not clipped), transparency composited
    on white, palette and CMYK converted."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        im = Image.fromarray(np.clip(a / top * 255.0, 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA"):
        background = Image.new("RGB", im.size, "white")
        background.paste(im.convert("RGBA"), mask=im.convert("RGBA").getchannel("A"))
        return background
    return im.convert("RGB")


def load_image(src: str | bytes, name: str | None = None) -> Image.Image:
    """Decode a file path or encoded bytes fully and return RGB, or raise BadImage naming it."""
    check_header(src, name)
    path = name or (src if isinstance(src, str) else "<embedded image>")
    try:
        with _open(src, path) as im:
            im.load()
            return to_rgb(im)
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage("image unreadable", f"{path}: {e}") from None
