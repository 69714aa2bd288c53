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


def bad_crc_png(data: bytes) -> bytes:
    """A PNG whose header chunk (IHDR) fails its checksum: one bit of the stored CRC flipped."""
    crc_at = 8 + 8 + 13  # signature, IHDR length and type, 13 bytes of IHDR data
    return data[:crc_at] + bytes([data[crc_at] ^ 1]) + data[crc_at + 1:]


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
    os.symlink("self_link.png", root / "self_link.png")  # a file link loop
    expect["self_link.png"] = "symbolic link loop"
    put("bad_crc.png", bad_crc_png(png_bytes(gray)), "damaged PNG file")
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


# Deep folders, damaged model folders and unreadable pipeline files: each a one-line error
# (exit 2) or a recorded reason, never a traceback.

DEPTH = 600  # deeper than the interpreter's recursion limit allows a recursive walk


def test_folder_nested_deeper_than_the_recursion_limit(tmp_path):
    from anomaly_ae.sources.folder import FolderSource

    src = tmp_path / "src"
    deep = src.joinpath("d", *["n"] * DEPTH)
    deep.mkdir(parents=True)
    (deep / "bottom.png").write_bytes(png_bytes(Image.fromarray(digit())))
    (src / "d" / "top.png").write_bytes(png_bytes(Image.fromarray(digit())))
    (deep / "empty.png").mkdir()  # named like an image, holds none: a reject, found at any depth
    items = FolderSource(src).list().items
    by_name = {Path(i.path).name: i for i in items}
    assert set(by_name) == {"bottom.png", "top.png", "empty.png"}
    assert by_name["bottom.png"].class_name == "d" and by_name["bottom.png"].reject_reason is None
    assert by_name["empty.png"].reject_reason == "is a directory, not an image file"
    run("ingest", src, "--out", tmp_path / "ds", "--size", "28")
    info = json.loads(run("info", tmp_path / "ds", "--json").stdout)
    assert info["counts"]["images"] == 2


def test_symbolic_link_loop_and_bad_png_checksum_are_named(tmp_path):
    from anomaly_ae.imaging import Rejected, open_image
    from anomaly_ae.sources.folder import FolderSource

    os.symlink("b.png", tmp_path / "a.png")
    os.symlink("a.png", tmp_path / "b.png")
    reasons = {i.key: i.reject_reason for i in FolderSource(tmp_path).list().items}
    assert set(reasons) == {"a.png", "b.png"}
    assert all(r.startswith("symbolic link loop") for r in reasons.values()), reasons
    with pytest.raises(Rejected, match=r"damaged PNG file: the checksum \(CRC\) of its IHDR chunk"):
        open_image(bad_crc_png(png_bytes(Image.fromarray(digit()))))


def _model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("text,found", [("[1, 2]", "a JSON array"), ("null", "null"), ('"x"', "a string")])
def test_model_json_that_is_not_an_object(tmp_path, text, found):
    from anomaly_ae import checkpoint
    from anomaly_ae.errors import ModelError

    folder = _model_folder(tmp_path)
    (folder / "model.pt").write_bytes(b"weights")
    (folder / "model.json").write_text(text)
    with pytest.raises(ModelError, match=f"model.json is not a model summary .*it holds {found}"):
        checkpoint.read(folder)


def test_model_pt_that_is_a_directory_exits_2(tmp_path):
    folder = _model_folder(tmp_path)
    (folder / "model.pt").mkdir()
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png_bytes(Image.fromarray(digit())))
    proc = run("score", tmp_path / "imgs", "--model", folder, "--out", tmp_path / "run", check_code=2)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "model.pt is a directory, not a checkpoint file" in lines[0], proc.stderr


def test_model_pt_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    import signal

    from anomaly_ae import checkpoint
    from anomaly_ae.errors import ModelError

    folder = _model_folder(tmp_path)
    os.mkfifo(folder / "model.pt")

    def hung(signum, frame):
        raise TimeoutError("reading the FIFO blocked")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)  # a ceiling against a hang only: the refusal comes before any open
    try:
        with pytest.raises(ModelError, match="is not a regular file"):
            checkpoint.read(folder)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_model_pt_linked_to_dev_zero_is_refused_unread(tmp_path):
    folder = _model_folder(tmp_path)
    os.symlink("/dev/zero", folder / "model.pt")
    # In a child whose address space is capped: an unbounded read fails there at once instead of
    # filling this machine's memory.
    code = (
        "import resource, sys\n"
        "from anomaly_ae import checkpoint\n"
        "from anomaly_ae.errors import ModelError\n"
        "vm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize:')) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
        "try:\n    checkpoint.read(sys.argv[1])\nexcept ModelError as exc:\n    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "is not a regular file" in proc.stdout, proc.stderr[-2000:]


def test_model_pt_larger_than_the_cap_is_refused(tmp_path, monkeypatch):
    from anomaly_ae import checkpoint
    from anomaly_ae.errors import ModelError

    folder = _model_folder(tmp_path)
    (folder / "model.pt").write_bytes(b"x" * 1000)
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", 999)
    with pytest.raises(ModelError, match="is larger than a checkpoint may be"):
        checkpoint.read(folder)


@pytest.mark.parametrize("summary", ["missing", "empty sha256"])
def test_unchecked_checkpoint_is_warned_about(mnist_model, tmp_path, caplog, summary):
    import shutil

    from anomaly_ae import checkpoint

    folder = tmp_path / "m"
    shutil.copytree(mnist_model, folder)
    if summary == "missing":
        (folder / "model.json").unlink()
    else:
        doc = json.loads((folder / "model.json").read_text())
        (folder / "model.json").write_text(json.dumps({**doc, "sha256": ""}))
    with caplog.at_level("WARNING", logger="anomaly_ae.checkpoint"):
        assert checkpoint.read(folder)["format"] == checkpoint.FORMAT
    assert [r for r in caplog.records if "checksum not checked" in r.getMessage()], caplog.text


def _pipeline(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "p.toml"
    path.write_text('[data]\nsource = "sample:digits"\n' + extra)
    return path


def test_pipeline_file_that_is_not_utf8(tmp_path):
    from anomaly_ae.errors import ConfigError
    from anomaly_ae.pipeline import load_pipeline

    path = _pipeline(tmp_path)
    path.write_bytes(path.read_bytes() + '[pipeline]\ndescription = "Linie für Teile"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"p.toml: not UTF-8 text \(byte 0xfc at line 4\)"):
        load_pipeline(path)


@pytest.mark.parametrize("cron", ["61 * * * *", "a b c d e", "* 24 * * *", "H * * * *"])
def test_cron_line_the_scheduler_would_refuse(tmp_path, cron):
    from anomaly_ae.errors import ConfigError
    from anomaly_ae.pipeline import load_pipeline

    path = _pipeline(tmp_path, f'[[schedule]]\nflow = "pipeline"\ncron = "{cron}"\n')
    with pytest.raises(ConfigError, match=r"\[\[schedule\]\] #1: cron: .*(is not a valid cron line|hashed)"):
        load_pipeline(path)


def test_cron_check_agrees_with_the_scheduler():
    """The lines the pipeline check refuses are those Prefect's cron schedule refuses."""
    from prefect.client.schemas.schedules import CronSchedule

    from anomaly_ae.errors import ConfigError
    from anomaly_ae.pipeline import Schedule

    for cron in ["61 * * * *", "a b c d e", "*/5 * * * *", "0 0 31 2 *", "H * * * *", "@daily",
                 "0 6 * * mon-fri", "30 2 1,15 * *", "@midnight", "0 0 * * 7", "1-70 * * * *"]:
        try:
            Schedule(flow="pipeline", cron=cron)
            ours = True
        except ConfigError:
            ours = False
        try:
            CronSchedule(cron=cron)
            theirs = True
        except ValueError:
            theirs = False
        assert ours == theirs, cron


def test_cron_check_does_not_import_prefect(tmp_path):
    path = _pipeline(tmp_path, '[[schedule]]\nflow = "pipeline"\ncron = "61 * * * *"\n')
    code = ("import sys\nfrom anomaly_ae.errors import ConfigError\nfrom anomaly_ae.pipeline import load_pipeline\n"
            f"try:\n    load_pipeline({str(path)!r})\nexcept ConfigError:\n    pass\n"
            "else:\n    raise AssertionError('a minute of 61 was accepted')\n"
            "assert 'prefect' not in sys.modules, 'prefect imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)
