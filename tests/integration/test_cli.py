"""The command line as a user runs it: real subprocesses of the installed `anomaly-ae`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_png

EXE = Path(sys.executable).with_name("anomaly-ae")
COMMANDS = ["ingest", "info", "train", "calibrate", "score", "report", "demo", "run", "serve", "inbox"]


def cli(*args, cwd=None, check=True):
    proc = subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200"})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_is_fast_to_import():
    code = (
        "import sys\nimport flows.cli as c\n"
        f"for cmd in [[], *[[x] for x in {COMMANDS!r}]]:\n"
        "    try:\n        c.app([*cmd, '--help'])\n    except SystemExit as e:\n        assert e.code == 0, cmd\n"
        "heavy = [m for m in ('torch', 'torchvision', 'prefect', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_library_never_imports_prefect():
    code = ("import sys, anomaly_ae.steps, anomaly_ae.scoring, anomaly_ae.detector, anomaly_ae.ingest\n"
            "assert 'prefect' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_command_has_help():
    for cmd in COMMANDS:
        out = cli(cmd, "--help").stdout
        assert "Usage" in out and "--help" in out


def test_ingest_with_bad_files_reports_rejects_and_exits_zero(tmp_path):
    src = tmp_path / "images"
    rng = np.random.default_rng(0)
    for k in range(5):
        write_png(src / f"good{k}.png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    (src / "zero.png").write_bytes(b"")
    (src / "text.png").write_text("not an image at all")
    data = (src / "good0.png").read_bytes()
    (src / "truncated.png").write_bytes(data[: len(data) // 2])
    proc = cli("ingest", src, "--out", tmp_path / "ds")
    assert "5 images" in proc.stdout and "3 rejected" in proc.stdout
    info = json.loads(cli("info", tmp_path / "ds", "--json").stdout)
    assert info["counts"]["images"] == 5 and len(info["rejects"]) == 3
    assert {r["source"] for r in info["rejects"]} == {"zero.png", "text.png", "truncated.png"}
    text = cli("info", tmp_path / "ds").stdout
    assert "truncated.png" in text and "empty file" in text


def test_ingest_of_12_bit_images_with_a_crop_as_info_shows_it(tmp_path):
    from PIL import Image

    src, rng = tmp_path / "cam", np.random.default_rng(0)
    src.mkdir()
    for k in range(12):
        Image.fromarray((rng.random((20, 24)) * 4095).astype(np.uint16)).save(src / f"{k}.png")
    proc = cli("ingest", src, "--out", tmp_path / "ds", "--bit-depth", "12", "--crop", "2,4,16,16")
    assert "12 images 16x16x1" in proc.stdout and "WARNING" not in proc.stdout + proc.stderr
    text = cli("info", tmp_path / "ds").stdout
    assert "crop 2,4,16,16" in text and "16-bit images read as 12-bit" in text
    cli("train", tmp_path / "ds", "--out", tmp_path / "m", "--epochs", "1")
    assert ("New images are prepared as its training images were: 16x16 (L, resized bilinear, crop 2,4,16,16, "
            "16-bit images read as 12-bit).") in cli("info", tmp_path / "m", "--no-layers").stdout
    bad = cli("ingest", src, "--out", tmp_path / "other", "--bit-depth", "20", check=False)
    assert bad.returncode == 2 and "bit_depth: must be a whole number of bits within 8..16" in bad.stderr


@pytest.mark.parametrize("args,message", [
    (["ingest", "/no/such/folder"], "does not exist"),
    (["info", "/no/such/dataset"], "does not exist"),
    (["ingest", "sample:nothing"], "Unknown bundled sample"),
    (["score", ".", "--model", "/no/model"], "No model"),
])
def test_user_errors_are_one_line_with_exit_code_2(args, message, tmp_path):
    proc = cli(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr


def test_train_score_calibrate_report_end_to_end(mnist_ds, tmp_path):
    proc = cli("train", mnist_ds, "--normal", "1", "--out", tmp_path / "m", "--epochs", "3")
    assert "trained" in proc.stdout
    summary = json.loads(cli("score", mnist_ds, "--model", tmp_path / "m", "--split", "test",
                             "--out", tmp_path / "run", "--json").stdout)
    assert summary["scored"] == 1500 and summary["auroc"] > 0.9
    assert (tmp_path / "run" / "scores.parquet").exists()
    cal = json.loads(cli("calibrate", tmp_path / "m", "--target-fpr", "0.2", "--json").stdout)
    assert cal["target_fpr"] == 0.2
    again = cli("score", mnist_ds, "--model", tmp_path / "m", "--out", tmp_path / "run", check=False)
    assert again.returncode == 2 and "already exists" in again.stderr


def test_one_image_file_is_scored_as_in_its_folder(mnist_model, mnist_folder, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    folder = tmp_path / "two"
    folder.mkdir()
    for digit in ("0", "8"):
        shutil.copy(min((mnist_folder / digit).glob("*.png")), folder / f"digit{digit}.png")
    cli("score", folder, "--model", mnist_model, "--out", tmp_path / "both", "--no-report")
    both = dict(zip(*pq.read_table(tmp_path / "both" / "scores.parquet", columns=["path", "score"]).to_pydict().values()))
    for name in ("digit0.png", "digit8.png"):
        one = json.loads(cli("score", folder / name, "--model", mnist_model, "--out", tmp_path / name,
                             "--no-report", "--json").stdout)
        assert one["scored"] == 1 and one["flagged"] == int(name == "digit8.png")
        alone = pq.read_table(tmp_path / name / "scores.parquet", columns=["path", "score"]).to_pydict()
        assert alone["path"] == [name] and alone["score"][0] == pytest.approx(both[name], rel=1e-6)


def test_a_batch_with_every_file_rejected_exits_2_and_keeps_its_run_folder(mnist_model, mnist_folder, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"not an image")
    proc = cli("score", folder / "a.png", "--model", mnist_model, "--out", tmp_path / "one", "--no-report", check=False)
    assert proc.returncode == 2 and "error: None of the files could be scored: 1 rejected" in proc.stderr
    assert pq.read_table(tmp_path / "one" / "rejects.parquet").num_rows == 1
    shutil.copy(min((mnist_folder / "0").glob("*.png")), folder / "b.png")  # one good file: a run like any other
    cli("score", folder, "--model", mnist_model, "--out", tmp_path / "some", "--no-report")


def test_demo_is_the_whole_pipeline(tmp_path):
    proc = cli("demo", "--workdir", tmp_path / "ws")
    assert "AUROC" in proc.stdout and "flagged" in proc.stdout
    m = json.loads((tmp_path / "ws" / "runs" / "mnist5k-0-demo" / "metrics.json").read_text())
    assert m["auroc"] > 0.95


def test_tiled_model_on_a_folder_of_large_images(tmp_path):
    from tests.unit.test_tiles import boards

    root = tmp_path / "boards"
    for split, kind, n, seed in [("train", "good", 96, 0), ("test", "good", 30, 2), ("test", "defect", 30, 3)]:
        for i, img in enumerate(boards(n, 128, seed, defect=kind == "defect")):
            write_png(root / split / kind / f"{i:03d}.png", img[..., 0])
    cli("ingest", root, "--out", tmp_path / "ds")
    proc = cli("train", tmp_path / "ds", "--out", tmp_path / "m", "--tile", "16", "--latent-dim", "32",
               "--epochs", "20")
    assert "trained" in proc.stdout
    summary = json.loads(cli("score", tmp_path / "ds", "--model", tmp_path / "m", "--split", "test",
                             "--out", tmp_path / "run", "--json").stdout)
    assert summary["scored"] == 60 and summary["auroc"] > 0.85
    assert "in 16-pixel tiles" in (tmp_path / "run" / "report.html").read_text()
