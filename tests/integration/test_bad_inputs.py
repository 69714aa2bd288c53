"""A corpus of messy inputs, generated here: each is processed or rejected with a reason, the rest
of the batch goes on, and the exit codes are the documented ones (0 = done, rejects reported)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

EXE = Path(sys.executable).with_name("anomaly-ae")
RNG = np.random.default_rng(7)
OK = "ok"


def png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def digit(h=28, w=28) -> np.ndarray:
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


def make_corpus(root: Path) -> dict[str, str]:
    """Write every kind of input into `root`; returns {relative name: 'ok' or a reason fragment}."""
    root.mkdir(parents=True)
    gray, rgb = Image.fromarray(digit()), Image.fromarray(RNG.integers(0, 256, (28, 28, 3), dtype=np.uint8))
    expect: dict[str, str] = {}

    def put(name: str, data: bytes, outcome: str):
        (root / name).write_bytes(data)
        expect[name] = outcome

    put("plain.png", png_bytes(gray), OK)
    put("zero.png", b"", "empty file")
    full = png_bytes(rgb)
    put("truncated.png", full[: len(full) // 2], "corrupt or truncated")
    jpeg = png_bytes(rgb, "JPEG", quality=90)
    put("truncated.jpg", jpeg[: len(jpeg) // 3], "corrupt or truncated")
    put("text.png", b"just some text, not an image\n", "not a recognised image")
    put("sixteen_bit.png", png_bytes(Image.fromarray(digit().astype(np.uint16) * 257)), OK)
    put("cmyk.jpg", png_bytes(rgb.convert("CMYK"), "JPEG"), OK)
    pal = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    put("palette_transparent.png", png_bytes(pal, transparency=0), OK)
    exif = Image.Exif()
    exif[0x0112] = 6
    put("exif_rotated.jpg", png_bytes(Image.fromarray(digit(20, 30)).convert("RGB"), "JPEG", exif=exif.tobytes()), OK)
    put("one_pixel.png", png_bytes(Image.new("L", (1, 1), 128)), OK)
    put("bomb.png", png_bytes(Image.new("1", (9000, 9000))), "decompression-bomb guard")
    frames = [Image.fromarray(digit()) for _ in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    put("animated.gif", buf.getvalue(), OK)
    buf = io.BytesIO()
    frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
    put("multipage.tiff", buf.getvalue(), OK)
    put("name with spaces.png", png_bytes(gray), OK)
    put("ünïcødé 数字.png", png_bytes(gray), OK)
    put("la_gray_alpha.png", png_bytes(gray.convert("LA")), OK)
    put("png_named.jpg", png_bytes(gray), OK)
    put("garbage_after.jpg", png_bytes(rgb, "JPEG") + b"\x00trailing bytes", OK)
    put("float.tiff", png_bytes(Image.fromarray(digit().astype(np.float32) / 255.0, "F"), "TIFF"), OK)
    put("int32.tiff", png_bytes(Image.fromarray(digit().astype(np.int32) * 200, "I"), "TIFF"), OK)
    put("lossless.webp", png_bytes(rgb, "WEBP", lossless=True), OK)
    put("bitmap.bmp", png_bytes(rgb, "BMP"), OK)
    (root / "folder.png").mkdir()
    expect["folder.png"] = "is a directory"
    raw = os.fsencode(root) + b"/latin1_\xe9t\xe9.png"
    with open(raw, "wb") as fh:
        fh.write(png_bytes(gray))
    expect["latin1_\\xe9t\\xe9.png"] = OK
    outside = root.parent / "outside.png"
    outside.write_bytes(png_bytes(gray))
    os.symlink(outside, root / "link_outside.png")
    expect["link_outside.png"] = "outside the folder"
    os.symlink(root / "nothing_here.png", root / "broken_link.png")
    expect["broken_link.png"] = "broken symbolic link"
    os.symlink(root, root / "loop")  # a folder link loop: never followed
    os.mkfifo(root / "pipe.png")
    expect["pipe.png"] = "not a regular file"
    put("unreadable.png", png_bytes(gray), OK if os.geteuid() == 0 else "permission denied")
    os.chmod(root / "unreadable.png", 0)
    put(".hidden.png", b"", "ignored")
    del expect[".hidden.png"]
    return expect


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "messy"
    return root, make_corpus(root)


def run(*args, check_code=0):
    proc = subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == check_code, proc.stderr
    return proc


def test_corpus_has_at_least_25_kinds(corpus):
    assert len(corpus[1]) >= 25


def test_ingest_processes_or_rejects_each_with_a_reason(corpus, tmp_path):
    root, expect = corpus
    run("ingest", root, "--out", tmp_path / "ds", "--size", "28", "--channels", "L")
    info = json.loads(run("info", tmp_path / "ds", "--json").stdout)
    rejects = {r["source"]: r["reason"] for r in info["rejects"]}
    from anomaly_ae.dataset import Dataset

    kept = set(Dataset(tmp_path / "ds").index()["source"].to_pylist())
    for name, outcome in expect.items():
        if outcome == OK:
            assert name in kept, (name, rejects.get(name))
        else:
            assert outcome in rejects.get(name, ""), (name, rejects.get(name))
    assert len(kept) + len(rejects) == len(expect)


def test_exif_rotation_and_sizes_recorded(corpus, tmp_path):
    root, _ = corpus
    run("ingest", root, "--out", tmp_path / "ds", "--size", "28", "--channels", "L")
    from anomaly_ae.dataset import Dataset

    idx = Dataset(tmp_path / "ds")._pf.read(columns=["source", "orig_height", "orig_width"]).to_pylist()
    by = {r["source"]: (r["orig_height"], r["orig_width"]) for r in idx}
    assert by["exif_rotated.jpg"] == (30, 20)  # stored 20 high, 30 wide; shown rotated
    assert by["one_pixel.png"] == (1, 1)


def test_scoring_the_corpus_goes_on_past_bad_files(corpus, mnist_model, tmp_path):
    root, expect = corpus
    proc = run("score", root, "--model", mnist_model, "--out", tmp_path / "run", "--json")
    summary = json.loads(proc.stdout)
    n_ok = sum(1 for v in expect.values() if v == OK)
    assert summary["scored"] == n_ok and summary["rejects"] == len(expect) - n_ok
    assert summary["report"] == "report.html" and (tmp_path / "run" / "report.html").exists()


def test_bomb_limit_is_configurable(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.png").write_bytes(png_bytes(Image.new("L", (300, 300))))
    (tmp_path / "src" / "small.png").write_bytes(png_bytes(Image.new("L", (20, 20))))
    run("ingest", tmp_path / "src", "--out", tmp_path / "ds", "--max-pixels", "10000", "--size", "20")
    info = json.loads(run("info", tmp_path / "ds", "--json").stdout)
    assert info["counts"]["images"] == 1 and "exceeds the limit of 10,000" in info["rejects"][0]["reason"]


def test_file_deleted_between_listing_and_reading(tmp_path):
    from anomaly_ae.ingest import ingest
    from anomaly_ae.sources import open_source

    for k in range(3):
        (tmp_path / "src").mkdir(exist_ok=True)
        (tmp_path / "src" / f"{k}.png").write_bytes(png_bytes(Image.fromarray(digit())))
    listing = open_source(str(tmp_path / "src")).list()
    (tmp_path / "src" / "1.png").unlink()
    meta = ingest(listing, tmp_path / "ds")
    assert meta["counts"]["images"] == 2 and meta["counts"]["rejects"] == 1
    from anomaly_ae.dataset import Dataset

    assert "disappeared" in Dataset(tmp_path / "ds").rejects()["reason"][0].as_py()


def test_permission_denied_reason(monkeypatch, tmp_path):
    import builtins

    from anomaly_ae.imaging import Rejected, read_file_bytes

    def deny(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(builtins, "open", deny)
    with pytest.raises(Rejected, match="permission denied"):
        read_file_bytes(tmp_path / "x.png")
