"""Decoding and the preprocessing policy: one image file or array in, working-size uint8 pixels out.

This module owns how an image becomes pixels, at ingest and at scoring time alike, so the
two can never disagree. It imports neither torch nor pyarrow, so decode workers start fast.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
import zlib
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from anomaly_ae.errors import ConfigError

RESIZE_METHODS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
    "nearest": Image.Resampling.NEAREST,
}
IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pgm", ".ppm", ".pbm",
)
EXIF_FORMATS = frozenset({"JPEG", "MPO", "TIFF", "WEBP", "HEIF", "AVIF"})
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
DEFAULT_MAX_PIXELS = 64_000_000
# Bumped whenever decoding changes what pixels or masks an image gives, so datasets ingested
# before are made again instead of being reported up to date.
DECODE_VERSION = 2
# A common image size is kept up to this side; beyond it, or when sizes differ, DEFAULT_SIZE applies.
MAX_KEPT_SIDE = 1024
DEFAULT_SIZE = (256, 256)


class Rejected(Exception):
    """An input that cannot be used; the message is the reason recorded in the rejects table."""


@dataclass(frozen=True)
class Preprocess:
    """How every image is turned into the model's input: working size, channels, resize method.

    Recorded in each dataset and checkpoint and applied again at scoring time.
    """

    height: int
    width: int
    channels: str = "L"
    resize: str = "bilinear"
    crop: tuple[int, int, int, int] | None = None  # (top, left, height, width) cut out before resizing
    # Bits a high bit-depth gray image (16-bit PNG or TIFF) holds: scaled to 8 bits from 0..2**bit_depth - 1.
    # None: from the full range of its type (0..65535).
    bit_depth: int | None = None

    def __post_init__(self):
        if self.channels not in ("L", "RGB"):
            raise ConfigError(f"channels must be 'L' or 'RGB', got {self.channels!r}.")
        if self.resize not in RESIZE_METHODS:
            raise ConfigError(
                f"resize must be one of {', '.join(RESIZE_METHODS)}, got {self.resize!r}."
            )
        if not (1 <= self.height <= 8192 and 1 <= self.width <= 8192):
            raise ConfigError(f"image size must be within 1..8192, got {self.height}x{self.width}.")
        if not is_crop(self.crop):
            raise ConfigError(f"crop must be (top, left, height, width) with height and width >= 1, got {self.crop}.")
        if not is_bit_depth(self.bit_depth):
            raise ConfigError(f"bit depth must be a whole number of bits within {BIT_DEPTHS[0]}..{BIT_DEPTHS[-1]}, "
                              f"got {self.bit_depth!r}.")

    @property
    def n_channels(self) -> int:
        """1 for grayscale, 3 for RGB."""
        return 1 if self.channels == "L" else 3

    @property
    def shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of the stored pixels."""
        return (self.height, self.width, self.n_channels)

    def to_dict(self) -> dict:
        """Plain dict for JSON metadata and checkpoints (``crop`` and ``bit_depth`` only when set)."""
        d = {"height": self.height, "width": self.width, "channels": self.channels,
             "resize": self.resize, "exif_orientation": True, "alpha": "composited on black"}
        if self.crop:
            d["crop"] = list(self.crop)
        if self.bit_depth:
            d["bit_depth"] = self.bit_depth
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        """Inverse of `to_dict` (unknown informational keys are ignored)."""
        crop = tuple(int(v) for v in d["crop"]) if d.get("crop") else None
        bits = int(d["bit_depth"]) if d.get("bit_depth") else None
        return cls(int(d["height"]), int(d["width"]), str(d["channels"]), str(d["resize"]), crop, bits)

    def ingest_options(self) -> str:
        """The `anomaly-ae ingest` options that make a dataset preprocessed by this policy."""
        opts = [f"--size {self.height}x{self.width}", f"--channels {self.channels}", f"--resize {self.resize}"]
        opts += [f"--crop {','.join(map(str, self.crop))}"] if self.crop else []
        return " ".join(opts + ([f"--bit-depth {self.bit_depth}"] if self.bit_depth else []))

    def differences(self, other: Preprocess) -> list[tuple[str, str, str]]:
        """(setting, this policy's value, `other`'s) for each setting that makes other pixels."""
        pairs = [("size", f"{self.height}x{self.width}", f"{other.height}x{other.width}"),
                 ("channels", self.channels, other.channels), ("resize", self.resize, other.resize),
                 ("crop", self.crop, other.crop), ("bit depth", self.bit_depth, other.bit_depth)]
        return [(name, setting_text(a, "none"), setting_text(b, "none")) for name, a, b in pairs if a != b]

    def cut(self, img: Image.Image) -> Image.Image:
        """The crop region of a decoded image (the image itself without one).

        Raises:
            Rejected: the image does not reach the crop region's far edges.
        """
        if self.crop is None:
            return img
        top, left, h, w = self.crop
        if img.height < top + h or img.width < left + w:
            raise Rejected(f"image is {img.width}x{img.height} (width x height), too small for the crop region "
                           f"of {w}x{h} (width x height) at left {left}, top {top}")
        return img.crop((left, top, left + w, top + h))


def is_crop(crop) -> bool:
    """True for None (no crop) or a region (top, left, height, width) of whole pixels with top and
    left >= 0 and height and width >= 1."""
    if crop is None:
        return True
    return (len(crop) == 4 and all(isinstance(v, int) and not isinstance(v, bool) for v in crop)
            and min(crop[:2]) >= 0 and min(crop[2:]) >= 1)


def setting_text(value, none: str = "not set") -> str:
    """A setting's value as messages show it: 10,20,30,40 for a region, `none` for None."""
    return none if value is None else ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


# The bit depths a high bit-depth image may be declared to hold (8: 8-bit data in a 16-bit file).
BIT_DEPTHS = tuple(range(8, 17))


def is_bit_depth(bits) -> bool:
    """True for None (the type's full range) or a whole number of bits in BIT_DEPTHS."""
    return bits is None or (isinstance(bits, int) and not isinstance(bits, bool) and bits in BIT_DEPTHS)


@dataclass(frozen=True)
class PolicyRequest:
    """What the user asked for; parts left as None are inferred from the data."""

    size: tuple[int, int] | None = None
    channels: str | None = None
    resize: str = "bilinear"
    crop: tuple[int, int, int, int] | None = None
    bit_depth: int | None = None

    @classmethod
    def of(cls, config) -> PolicyRequest:
        """The request an `IngestConfig` makes."""
        return cls(parse_size(config.size), config.channels, config.resize, config.crop, config.bit_depth)

    def resolve(self, height: int, width: int, gray: bool) -> Preprocess:
        """The policy for a dataset whose first image has this size (before any crop) and colour."""
        if self.crop:  # every image is cut to the same region: its size is the images' own size
            height, width = self.crop[2], self.crop[3]
        size = self.size or ((height, width) if max(height, width) <= MAX_KEPT_SIDE else DEFAULT_SIZE)
        channels = self.channels or ("L" if gray else "RGB")
        return Preprocess(size[0], size[1], channels, self.resize, self.crop, self.bit_depth)

    def revise(self, policy: Preprocess, height: int, width: int, gray: bool) -> Preprocess | None:
        """A corrected policy if an image contradicts an inferred part of `policy`, else None."""
        new = policy
        if self.size is None and not self.crop and (height, width) != (policy.height, policy.width):
            if (policy.height, policy.width) != DEFAULT_SIZE:
                new = replace(new, height=DEFAULT_SIZE[0], width=DEFAULT_SIZE[1])
        if self.channels is None and not gray and policy.channels == "L":
            new = replace(new, channels="RGB")
        return None if new == policy else new


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'256', '256x192' (height x width) or None -> (height, width)."""
    if text is None or str(text).strip().lower() in ("", "auto"):
        return None
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise ConfigError(f"size must look like 256 or 256x192 (height x width), got {text!r}.") from None
    if len(dims) == 1:
        dims = dims * 2
    if len(dims) != 2 or min(dims) < 1 or max(dims) > 8192:
        raise ConfigError(f"size must look like 256 or 256x192 within 1..8192, got {text!r}.")
    return dims[0], dims[1]


def read_file_bytes(path) -> bytes:
    """The file's bytes, or `Rejected` with a reason a user understands."""
    return read_file(path)[0]


def read_file(path) -> tuple[bytes, tuple[int, int]]:
    """The file's bytes and its (size, modification time in ns) as read, or `Rejected` with a
    reason a user understands. The two numbers are those a dataset's fingerprint holds, looked
    up on the open file (no second lookup by name)."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read()
    except FileNotFoundError:
        raise Rejected("file disappeared before it could be read (deleted or renamed)") from None
    except IsADirectoryError:
        raise Rejected("is a directory, not an image file") from None
    except PermissionError:
        raise Rejected("permission denied: the file is not readable") from None
    except OSError as exc:
        raise Rejected(f"could not read the file: {exc.strerror or exc}") from None
    if not data:
        raise Rejected("empty file (0 bytes)")
    return data, (st.st_size, st.st_mtime_ns)


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode the first frame of an encoded image, EXIF orientation applied.

    Raises:
        Rejected: unrecognised format, corrupt or truncated data, or more than `max_pixels`.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise Rejected(
                    f"too large: {w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} "
                    "(decompression-bomb guard; raise it with --max-pixels)"
                )
            img.load()
            if img.format in EXIF_FORMATS or "exif" in img.info:  # skip the EXIF parse where none can be
                img = ImageOps.exif_transpose(img)
            return img
    except Rejected:
        raise
    except UnidentifiedImageError:
        _reject_damaged_png(data)
        raise Rejected("not a recognised image format (unreadable header)") from None
    except Image.DecompressionBombError as exc:
        raise Rejected(f"too large (decompression-bomb guard): {exc}") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
        _reject_damaged_png(data)
        raise Rejected(f"corrupt or truncated image: {type(exc).__name__}: {exc}") from None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _reject_damaged_png(data: bytes) -> None:
    """Raise `Rejected` when the data is a PNG one of whose chunks fails its checksum (CRC).

    Pillow reports a bad checksum in a PNG's header as an unknown format; the checksum says
    the file is a PNG that was corrupted (in transfer or on disk), which is what to tell.
    """
    if not data.startswith(PNG_SIGNATURE):
        return
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        end = pos + 8 + length
        if end + 4 > len(data):
            return  # truncated: Pillow's own message says so
        kind = data[pos + 4:pos + 8]
        if zlib.crc32(data[pos + 4:end]) != int.from_bytes(data[end:end + 4], "big"):
            name = kind.decode("ascii", "backslashreplace")
            raise Rejected(f"damaged PNG file: the checksum (CRC) of its {name} chunk is wrong; the file was "
                           "corrupted in transfer or on disk") from None
        if kind == b"IEND":
            return
        pos = end + 4


def is_gray(img: Image.Image) -> bool:
    """True when the image carries no colour (gray modes, or a palette of grays only)."""
    if img.mode in GRAY_MODES:
        return True
    if img.mode in ("P", "PA"):
        palette = np.asarray(img.getpalette() or [0, 0, 0], dtype=np.int32).reshape(-1, 3)
        return bool((palette[:, 0] == palette[:, 1]).all() and (palette[:, 1] == palette[:, 2]).all())
    return False


def _to_8bit_gray(img: Image.Image, bit_depth: int | None = None) -> Image.Image:
    """High bit-depth and float gray images scaled to 8 bits: integer images from 0..2**bit_depth - 1
    (brighter values clipped), or from their type's full range without a bit depth."""
    a = np.asarray(img)
    if img.mode == "F":
        a = a * 255.0 if np.nanmax(a, initial=0) <= 1.0 else a
    elif bit_depth is not None:
        a = a * (255.0 / (2 ** bit_depth - 1))
    elif img.mode.startswith("I;16") or (img.mode == "I" and a.max(initial=0) > 255):
        a = a / 257.0
    a = np.nan_to_num(a, nan=0.0)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def _flatten(img: Image.Image, bit_depth: int | None = None) -> Image.Image:
    """Any mode -> 'L' or 'RGB'; transparency composited on black."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _to_8bit_gray(img, bit_depth)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(base, rgba).convert("RGB")
    if img.mode in ("L", "RGB"):
        return img
    return img.convert("RGB")


def read_bit_depth(img: Image.Image, policy: Preprocess) -> int | None:
    """The bits a high bit-depth image is scaled from: the policy's, except for PGM and PPM files,
    which declare their range (maxval) and are read to 0..65535 by Pillow already."""
    return 16 if img.format == "PPM" else policy.bit_depth


def to_pixels(img: Image.Image, policy: Preprocess) -> np.ndarray:
    """Apply the policy: crop, flatten, convert channels, resize. Returns (H, W, C) uint8 (read-only)."""
    return np.frombuffer(to_pixel_bytes(img, policy), np.uint8).reshape(policy.shape)


def to_pixel_bytes(img: Image.Image, policy: Preprocess) -> bytes:
    """`to_pixels`' values as bytes (H x W x C, row by row), taken from the image directly: an
    array in between made a decode worker about an eighth slower on small images."""
    img = _flatten(policy.cut(img), read_bit_depth(img, policy))
    if img.mode != policy.channels:
        img = img.convert(policy.channels)
    if img.size != (policy.width, policy.height):
        img = img.resize((policy.width, policy.height), RESIZE_METHODS[policy.resize])
    return img.tobytes()


def mask_pixels(data: bytes, policy: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A ground-truth mask resized (nearest) to the working size: (H, W) uint8, 255 = defect.

    Defects are small, so a mask whose bright part covers more than half the image is read as
    drawn the other way round (defects dark on white) and inverted.
    """
    img = _flatten(policy.cut(open_image(data, max_pixels))).convert("L")
    if img.size != (policy.width, policy.height):
        img = img.resize((policy.width, policy.height), Image.Resampling.NEAREST)
    on = np.asarray(img) > 127
    if on.mean() > 0.5:
        on = ~on
    return np.where(on, 255, 0).astype(np.uint8)


def array_to_pixels(arr: np.ndarray, policy: Preprocess) -> np.ndarray:
    """An in-memory uint8 image (H, W) or (H, W, C) -> working-size (H, W, C) uint8."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise Rejected(f"array images must be uint8, got {arr.dtype}")
    c = 1 if arr.ndim == 2 else arr.shape[2]
    if arr.shape[:2] == (policy.height, policy.width) and c == policy.n_channels and not policy.crop:
        return arr.reshape(policy.shape)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(c)
    if mode is None:
        raise Rejected(f"array images must have 1, 3 or 4 channels, got shape {arr.shape}")
    return to_pixels(Image.fromarray(arr.reshape(arr.shape[:2]) if c == 1 else arr, mode), policy)


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of bytes (the source file's, or an array's raw pixels)."""
    return hashlib.sha256(data).hexdigest()
