"""What the command line prints: user text exactly as given (brackets, digits, long paths), one
line per user error, plain help, and options refused when their value makes no sense."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.conftest import write_png

EXE = Path(sys.executable).with_name("anomaly-ae")


def cli(*args, code=0, **env):
    """Run anomaly-ae with stdout and stderr piped (not a terminal), as a script or CI job does."""
    base = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "NO_COLOR")}
    proc = subprocess.run([str(EXE), *map(str, args)], capture_output=True, text=True, env={**base, **env},
                          timeout=600)
    assert proc.returncode == code, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def images(folder: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for k in range(n):
        write_png(folder / f"img{k}.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
    return folder


def test_rich_markup_in_a_path_is_printed_as_is(tmp_path):
    src = images(tmp_path / "mk2[" / "b]")  # a folder named `mk2[/b]`
    out = tmp_path / "out" / "mk2[/b] [bold]x[/bold]"
    proc = cli("ingest", src, "--out", out)
    assert f"Dataset {out} written: 3 images" in proc.stdout
    proc = cli("info", out)
    assert str(out) in proc.stdout


def test_error_message_keeps_its_bracketed_table_names(tmp_path):
    bad = tmp_path / "t01.toml"
    bad.write_text('[model]\nlatent_dim = "x"\n')
    proc = cli("train", tmp_path, "--config", bad, code=2)
    assert f"error: {bad} [model].latent_dim: expected a whole number, got \"x\"" in proc.stderr


def test_user_error_is_one_line_with_no_blank_line_before_it(tmp_path):
    proc = cli("ingest", tmp_path / "nothing", "--out", tmp_path / "ds", code=2)
    assert proc.stderr == f"error: {tmp_path / 'nothing'} does not exist. Check the path.\n"
    proc = cli("score", tmp_path, "--model", tmp_path / "no-model", "--out", tmp_path / "run", code=2)
    assert proc.stderr.startswith("error: No model at") and proc.stderr.count("\n") == 1


def test_piped_output_keeps_long_paths_on_one_line(tmp_path):
    src = images(tmp_path / "src")
    out = tmp_path / ("a-long-folder-name-" * 6) / "dataset-2024-06-01"
    proc = cli("ingest", src, "--out", out)
    line = next(line for line in proc.stdout.splitlines() if line.startswith("Dataset"))
    assert line.startswith(f"Dataset {out} written: 3 images 16x16")


def test_paths_are_not_highlighted_on_a_colour_terminal(tmp_path):
    src = images(tmp_path / "src")
    out = tmp_path / "line-7" / "batch_2024-06-01"
    proc = cli("ingest", src, "--out", out, FORCE_COLOR="1")
    assert f"Dataset {out} written: 3 images 16x16" in proc.stdout, repr(proc.stdout)


def test_help_shows_plain_names_and_the_defaults():
    text = cli("train", "--help", COLUMNS="200").stdout
    assert "Usage: anomaly-ae train [OPTIONS] DATASET" in text
    for noise in ("<bool>", "{dataset}", "<list[str]>", "[default: no-force]"):
        assert noise not in text, noise
    assert "[default: 30]" in text and "[default: 0.002; draem 0.016]" in text and "[default: 64]" in text
    assert "{source}" not in cli("ingest", "--help", COLUMNS="200").stdout


def test_the_list_of_commands_shows_each_summary_on_one_line():
    import inspect

    import flows.cli

    text = cli("--help", COLUMNS="200").stdout
    for command in flows.cli.app.registered_commands:
        summary = " ".join(inspect.cleandoc(command.callback.__doc__).split("\n\n")[0].split())
        assert summary in text, summary


def test_max_pixels_must_be_a_positive_count(tmp_path):
    src = images(tmp_path / "src")
    for value in ("-1", "0"):
        proc = cli("ingest", src, "--out", tmp_path / "ds", "--max-pixels", value, code=2)
        assert "--max-pixels" in proc.stderr and "greater than or equal to 1" in proc.stderr
    assert not (tmp_path / "ds").exists()


def test_tile_as_large_as_the_images_is_reported(mnist_ds, tmp_path):
    proc = cli("train", mnist_ds, "--normal", "1", "--out", tmp_path / "m", "--epochs", "1", "--tile", "1000",
               "--json")
    assert "tile 1000 is not smaller than the images (28x28)" in proc.stderr, proc.stderr
    assert json.loads(proc.stdout)["model"] == str(tmp_path / "m")


def test_demo_rerun_says_the_model_was_up_to_date(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from anomaly_ae import cli as cli_module
    from anomaly_ae import steps

    run = {"scored": 10, "flagged": 1, "rejects": 0, "threshold": 0.5, "run": str(tmp_path / "run")}
    model = {"model": str(tmp_path / "m"), "cached": True, "seconds": 155.1}
    monkeypatch.setattr(steps, "demo", lambda *a, **k: {
        "dataset": {"dataset": str(tmp_path / "ds"), "counts": {"images": 5000}}, "model": model, "score": run})
    result = CliRunner().invoke(cli_module.app, ["demo", "--workdir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "is up to date" in result.output and "trained in" not in result.output
    model["cached"] = False
    result = CliRunner().invoke(cli_module.app, ["demo", "--workdir", str(tmp_path)])
    assert "trained in 155.1 s" in result.output


def test_piped_progress_is_a_line_now_and_then_with_verbose(tmp_path):
    """Where no bar can be drawn (a log, a scheduler's output), --verbose still shows how far a
    long command is: a line at most every 30 s and one at the end, with the time so far."""
    quiet = cli("ingest", images(tmp_path / "imgs", 60), "--out", tmp_path / "ds")
    assert "ingest:" not in quiet.stderr
    loud = cli("ingest", tmp_path / "imgs", "--out", tmp_path / "ds2", "-v")
    lines = [ln for ln in loud.stderr.splitlines() if ln.startswith("INFO: ingest: ")]
    assert lines and lines[-1].startswith("INFO: ingest: 60 of 60") and "so far" in lines[-1], loud.stderr


def test_progress_lines_are_spaced_out_and_say_what_is_left(caplog):
    import logging

    from anomaly_ae.console import progress_lines

    with caplog.at_level(logging.INFO, logger="anomaly_ae.progress"):
        update = progress_lines("train", every=3600)
        for epoch in range(1, 6):
            update(epoch, 5, loss=0.5 / epoch)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages  # the first, then nothing for an hour but the last
    assert messages[0].startswith("train: 1 of 5 (loss 0.5), ") and "left" in messages[0]
    assert messages[1].startswith("train: 5 of 5 (loss 0.1), ") and "left" not in messages[1]


def test_info_on_a_path_that_does_not_exist_says_so(tmp_path):
    proc = cli("info", tmp_path / "nothere", code=2)
    assert proc.stderr == f"error: {tmp_path / 'nothere'} does not exist. Check the path.\n"


def test_score_prints_the_weaker_guarantee_of_few_calibration_images(tmp_path):
    src = images(tmp_path / "src", n=24)
    cli("ingest", src, "--out", tmp_path / "ds")
    cli("train", tmp_path / "ds", "--out", tmp_path / "m", "--epochs", "1", "--allow-collapsed")  # noise: nothing to learn
    out = cli("score", src, "--model", tmp_path / "m", "--out", tmp_path / "run", "--no-report").stdout
    n_cal = json.loads((tmp_path / "m" / "model.json").read_text())["threshold"]["n_calibration"]
    assert f"guaranteed FPR  {1 / (n_cal + 1):.3g} (only {n_cal} calibration images" in out
