"""Decoding and preprocessing: formats, modes, EXIF, bad files."""

import io

import numpy as np
import pytest
from PIL import Image

from anomaly_ae.errors import ConfigError
from anomaly_ae.imaging import (
    PolicyRequest,
    Preprocess,
    Rejected,
    array_to_pixels,
    open_image,
    parse_size,
    read_file_bytes,
    to_pixels,
)
from anomaly_ae.parallel import decode_chunks, decode_one

RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
RGB = RNG.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("text,expected", [("256", (256, 256)), ("64x32", (64, 32)), ("auto", None), (None, None)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["abc", "0", "10x10x10", "9000"])
def test_parse_size_rejects_nonsense(text):
    with pytest.raises(ConfigError, match="size"):
        parse_size(text)


def test_policy_validates_channels_and_resize():
    with pytest.raises(ConfigError, match="channels"):
        Preprocess(8, 8, "CMYK")
    with pytest.raises(ConfigError, match="resize"):
        Preprocess(8, 8, "L", "magic")


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_decode_exactly(fmt):
    kw = {"lossless": True} if fmt == "WEBP" else {}
    for arr, mode in ((GRAY, "L"), (RGB, "RGB")):
        img = open_image(encode(Image.fromarray(arr), fmt, **kw))
        out = to_pixels(img, Preprocess(20, 30, mode))
        assert np.array_equal(out.reshape(arr.shape), arr), (fmt, mode)


def test_jpeg_decodes_close_to_source():
    img = open_image(encode(Image.fromarray(RGB), "JPEG", quality=95))
    out = to_pixels(img, Preprocess(20, 30, "RGB"))
    direct = np.asarray(Image.open(io.BytesIO(encode(Image.fromarray(RGB), "JPEG", quality=95))))
    assert np.array_equal(out, direct)


def test_sixteen_bit_png_is_scaled_not_clipped():
    arr16 = (GRAY.astype(np.uint16) * 257)
    img = open_image(encode(Image.fromarray(arr16), "PNG"))
    out = to_pixels(img, Preprocess(20, 30, "L"))[..., 0]
    assert np.array_equal(out, GRAY)


def test_rgba_is_composited_on_black():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 0
    rgba[0, 0, 3] = 255
    out = to_pixels(open_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")), Preprocess(4, 4, "RGB"))
    assert out[0, 0].tolist() == [200, 200, 200] and out[1, 1].tolist() == [0, 0, 0]


def test_palette_with_transparency_and_gray_detection():
    from anomaly_ae.imaging import is_gray

    pal = Image.fromarray(GRAY).convert("P")
    assert is_gray(pal)
    color = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE)
    assert not is_gray(color)
    color.info["transparency"] = 0
    out = to_pixels(open_image(encode(color, "PNG", transparency=0)), Preprocess(20, 30, "RGB"))
    assert out.shape == (20, 30, 3)


def test_exif_orientation_is_applied():
    img = Image.fromarray(RGB)  # 30 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    data = encode(img, "JPEG", exif=exif.tobytes())
    shown = open_image(data)
    assert shown.size == (20, 30)


def test_resize_and_channel_conversion():
    img = Image.fromarray(RGB)
    out = to_pixels(img, Preprocess(10, 15, "L", "area"))
    assert out.shape == (10, 15, 1)
    expected = np.asarray(img.convert("L").resize((15, 10), Image.Resampling.BOX))
    assert np.array_equal(out[..., 0], expected)


def test_array_to_pixels_fast_path_and_resize():
    assert array_to_pixels(GRAY, Preprocess(20, 30, "L")).shape == (20, 30, 1)
    assert array_to_pixels(RGB, Preprocess(10, 10, "L")).shape == (10, 10, 1)
    with pytest.raises(Rejected, match="uint8"):
        array_to_pixels(GRAY.astype(float), Preprocess(20, 30, "L"))


@pytest.mark.parametrize("content,reason", [
    (b"", "empty file"),
    (b"hello, I am text pretending to be a PNG", "not a recognised image"),
])
def test_bad_bytes_are_rejected_with_reasons(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    d = decode_one(path, None, Preprocess(8, 8), 10**8)
    assert d.pixels is None and reason in d.reason


def test_truncated_png_is_rejected(tmp_path):
    data = encode(Image.fromarray(RGB), "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    d = decode_one(path, None, Preprocess(20, 30, "RGB"), 10**8)
    assert "corrupt or truncated" in d.reason


def test_too_many_pixels_is_rejected(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encode(Image.fromarray(RGB), "PNG"))
    d = decode_one(path, None, Preprocess(20, 30, "RGB"), max_pixels=100)
    assert "exceeds the limit of 100" in d.reason


def test_unreadable_paths(tmp_path):
    with pytest.raises(Rejected, match="disappeared"):
        read_file_bytes(tmp_path / "gone.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(Rejected, match="directory"):
        read_file_bytes(tmp_path / "dir.png")


def test_policy_request_infers_and_revises():
    req = PolicyRequest()
    p = req.resolve(28, 28, gray=True)
    assert p == Preprocess(28, 28, "L")
    assert req.revise(p, 28, 28, True) is None
    assert req.revise(p, 28, 28, False) == Preprocess(28, 28, "RGB")
    assert req.revise(p, 30, 28, True) == Preprocess(256, 256, "L")
    assert PolicyRequest(size=(28, 28)).revise(p, 30, 28, True) is None
    assert req.resolve(2000, 1500, gray=False) == Preprocess(256, 256, "RGB")


def test_parallel_decode_keeps_order_and_matches_serial(tmp_path):
    paths = []
    for k in range(80):
        paths.append(tmp_path / f"{k:03d}.png")
        Image.fromarray(np.full((6, 6), k, np.uint8)).save(paths[-1])
    paths.insert(40, tmp_path / "missing.png")
    policy = Preprocess(6, 6, "L")
    chunks = list(decode_chunks(((p, None) for p in paths), policy, workers=2, chunk=7, n_jobs=len(paths)))
    assert [len(jobs) for jobs, _ in chunks[:-1]] == [7] * (len(chunks) - 1)
    reasons = [r for _, c in chunks for r in c.reasons]
    assert len(reasons) == 81 and "disappeared" in reasons[40]
    values = [int(v) for _, c in chunks for v in c.pixel_array(policy.shape)[:, 0, 0, 0]]
    assert values == list(range(80))


def test_masks_are_binarised_resized_and_inverted_when_drawn_dark_on_white():
    from anomaly_ae.imaging import mask_pixels

    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 255
    out = mask_pixels(encode(Image.fromarray(mask), "PNG"), Preprocess(8, 8, "L"))
    assert out.shape == (8, 8) and set(np.unique(out)) == {0, 255} and out[2:4, 2:4].min() == 255
    inverted = mask_pixels(encode(Image.fromarray(255 - mask), "PNG"), Preprocess(8, 8, "L"))
    assert np.array_equal(inverted, out)
