"""The library's commands of the `anomaly-ae` command line: thin commands over anomaly_ae.steps.

`flows.cli` adds the Prefect commands (run, serve, inbox) and is the installed entry point.
torch, torchvision and prefect are imported inside the commands that need them, so
``anomaly-ae --help`` starts fast. A user error prints one line and exits with code 2.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Annotated

import typer

from anomaly_ae import console
from anomaly_ae.cliopts import Group, apply_help_style, detector_config, given, named_as_flags
from anomaly_ae.config import DEFAULT_LR, KIND_LR, ModelConfig, ScoreConfig, ThresholdConfig, TrainConfig
from anomaly_ae.console import err_console, out_console
from anomaly_ae.errors import AnomalyAEError, ConfigError

log = logging.getLogger(__name__)


app = typer.Typer(
    name="anomaly-ae", no_args_is_help=True, add_completion=False, rich_markup_mode="rich", cls=Group,
    help="Image anomaly detection with convolutional autoencoders: ingest images into Parquet, "
         "train on normal images, calibrate a threshold, score new batches and report.",
)

UI_TOKEN_ENV = "ANOMALY_AE_UI_TOKEN"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
Json = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show progress messages (INFO logs).")]
# The defaults the train options show (an option left out keeps the --config file's value or these).
_MODEL, _TRAIN, _SCORE, _THRESHOLD = ModelConfig(), TrainConfig(), ScoreConfig(), ThresholdConfig()


# After Ctrl-C, how long the interpreter's own exit (joining worker pools and threads) may take
# before the process leaves without it.
EXIT_GRACE_SECONDS = 10.0
INTERRUPTED = 130  # the exit code of a command ended by Ctrl-C (typer's, and the shells')


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except AnomalyAEError as exc:
        print_error(exc)
        sys.exit(2)
    except SystemExit as exc:
        if exc.code == INTERRUPTED:
            err_console.print("interrupted")
            leave_within(EXIT_GRACE_SECONDS, INTERRUPTED)
        raise


def leave_within(seconds: float, code: int) -> None:
    """End the process after `seconds` if it has not ended by then. The interpreter's exit joins
    worker pools and threads, and a pool interrupted at the wrong instant can leave that join
    waiting forever; the outputs are already safe by then (unfinished ones were removed as the
    interruption unwound), so nothing is lost by leaving without it."""
    import os
    import threading
    import time

    def leave() -> None:
        time.sleep(seconds)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)

    threading.Thread(target=leave, name="exit-deadline", daemon=True).start()


def print_error(exc: BaseException) -> None:
    """One line on stderr: a red 'error:' and the message exactly as written (no markup)."""
    from rich.text import Text

    err_console.print(Text.assemble(("error:", "bold red"), " ", str(exc)), soft_wrap=True)


def _default_name(spec: str) -> str:
    path = Path(spec).resolve()
    name = spec.split(":", 1)[1] if ":" in spec and not Path(spec).exists() else path.stem if path.is_file() else path.name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-").lower() or "dataset"


def _start_decoders_early(source, workers: int | None) -> None:
    """For a folder of image files (not a dataset): start the process decode workers come from
    before the imports and the listing, so that its own start-up runs beside them."""
    folder = Path(source)
    if workers != 1 and folder.is_dir() and not (folder / "images.parquet").exists():
        from anomaly_ae.parallel import start_workers_early

        start_workers_early()


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="A folder of images, torchvision:<Dataset> (MNIST, "
                                               "FashionMNIST, KMNIST, QMNIST, CIFAR10, CIFAR100, SVHN) "
                                               "or sample:<name> (mnist5k, digits; bundled, no download).")],
    out: Annotated[Path | None, typer.Option(help="Dataset folder to write \\[default: data/datasets/<name>].")] = None,
    root: Annotated[str | None, typer.Option(help="Where torchvision datasets live (torchvision's layout).")] = None,
    download: Annotated[bool, typer.Option(help="Let torchvision download a missing dataset.")] = False,
    size: Annotated[str | None, typer.Option(help="Working size, e.g. 256 or 256x192 (height x width). "
                                                     "Default: the images' own size when they all agree "
                                                     "(up to 1024), else 256x256.")] = None,
    channels: Annotated[str | None, typer.Option(help="L (gray) or RGB. Default: L when every image is gray.")] = None,
    resize: Annotated[str | None, typer.Option(help="Resize method: bilinear, bicubic, area, lanczos, nearest "
                                                    "\\[default: bilinear].")] = None,
    crop: Annotated[str | None, typer.Option(metavar="TOP,LEFT,HEIGHT,WIDTH", help="Keep only this region of "
                                             "every image (source pixels, cut before resizing); scoring cuts "
                                             "the same region.")] = None,
    bit_depth: Annotated[int | None, typer.Option(metavar="BITS", help="Bits that 16-bit gray images really hold "
                                                  "(8..16; a 12-bit camera: 12): scaled to 8 bits from that range, "
                                                  "not from 0..65535; scoring scales the same way.")] = None,
    test_fraction: Annotated[float | None, typer.Option(help="For data without splits: share of each class "
                                                                "marked 'test' (seeded).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the --test-fraction split \\[default: 0].")] = None,
    max_pixels: Annotated[int | None, typer.Option(min=1, help="Reject images with more pixels than this "
                                                           "(decompression-bomb guard; at least 1) "
                                                           "\\[default: 64,000,000].")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Decode processes \\[default: all cores].")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset at --out.")] = False,
    force: Annotated[bool, typer.Option(help="Ingest again even if --out is up to date.")] = False,
    as_json: Json = False, verbose: Verbose = False,
) -> None:
    """Decode a folder, torchvision dataset or bundled sample into a Parquet dataset.

    Folders: images in the folder itself, one sub-folder per class, or train/ + test/ of class folders.

    Unreadable files are recorded in the dataset's rejects table with the reason and skipped.
    """
    console.setup_logging(verbose)
    _start_decoders_early(source, workers)
    from anomaly_ae import steps
    from anomaly_ae.config import IngestConfig

    config = given(IngestConfig, locals())
    out = out or Path("data") / "datasets" / _default_name(source)
    with console.progress("ingest") as update:
        summary = steps.ingest(source, out, config, root=root, download=download, workers=workers,
                               overwrite=overwrite, force=force, progress=update)
    if as_json:
        return console.print_json(summary)
    counts = summary["counts"]
    verb = "is up to date (use --force to ingest again)" if summary["cached"] else "written"
    out_console.print(f"Dataset {summary['dataset']} {verb}: {counts['images']} images "
                      f"{'x'.join(map(str, summary['image_shape']))}, {len(summary['classes'])} classes, "
                      f"{counts['masks']} masks, {counts['rejects']} rejected.")
    if counts["rejects"]:
        out_console.print(f"See the reasons with: anomaly-ae info {summary['dataset']}")


@app.command()
def info(
    dataset: Annotated[Path, typer.Argument(metavar="FOLDER", help="A dataset folder written by `anomaly-ae ingest`, "
                                            "or a model folder written by `anomaly-ae train`.")],
    layers: Annotated[bool, typer.Option(help="For a model: its layer table (output shapes, parameters).")] = True,
    as_json: Json = False,
) -> None:
    """A dataset's counts per split and class, image shape, masks and rejects; or a model's kind, how it was
    chosen, its training, threshold and layers."""
    from rich.table import Table
    from rich.text import Text

    from anomaly_ae import steps

    if (dataset / "model.pt").exists() or dataset.name == "model.pt":
        return _model_info(dataset, as_json, layers)
    s = steps.info(dataset)
    if as_json:
        return console.print_json(s)
    p = s["preprocess"]
    out_console.print(Text.assemble((s["dataset"], "bold"), f"  source {s['source']} ({s['layout']} layout), "
                                    f"schema v{s['schema_version']}"))
    out_console.print(f"images {s['counts']['images']}, shape {'x'.join(map(str, s['image_shape']))} "
                      f"({console.describe_preprocess(p)}), masks {s['counts']['masks']}, rejects {s['counts']['rejects']}")
    table = Table("split", "class", "images")
    for split, by_class in s["counts"]["by_split"].items():
        for cls, n in by_class.items():
            table.add_row(split, cls, str(n))
    out_console.print(table)
    if s["rejects"]:
        rej = Table("rejected file", "reason", title="Rejects")
        for r in s["rejects"][:50]:
            rej.add_row(r["source"], r["reason"])
        out_console.print(rej)
        if len(s["rejects"]) > 50:
            out_console.print(f"... and {len(s['rejects']) - 50} more (use --json for all).")


def _model_info(path: Path, as_json: bool, layers: bool) -> None:
    """`info` on a model folder: its kind, how it was chosen, training, threshold and layers."""
    from anomaly_ae import steps

    s = steps.model_info(path, layers=layers)
    if as_json:
        return console.print_json(s)
    console.print_model_summary(s, "")
    if s.get("preprocess"):
        p = s["preprocess"]
        out_console.print(f"New images are prepared as its training images were: {p['height']}x{p['width']} "
                          f"({console.describe_preprocess(p)}).")
    if layers:
        console.print_layer_table(s)


@app.command()
def train(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder written by `anomaly-ae ingest`.")],
    normal: Annotated[list[str] | None, typer.Option("--normal", "-n", metavar="CLASS",
                                                        help="A normal class (name or label); "
                                                        "repeat for several. Default: 'good' when present.")] = None,
    out: Annotated[Path | None, typer.Option(help="Model folder \\[default: data/models/<dataset>-<normal>].")] = None,
    kind: Annotated[str | None, typer.Option("--model", help="ae (classic), denoising, vae, draem (learns to outline "
                                              "simulated defects: for subtle defects on textured surfaces), geometric "
                                              "(also learns which way images are turned: for natural images, where "
                                              "the anomaly is what the whole image shows), nearest (no network: the "
                                              "nearest good training image is the reconstruction; for parts that look "
                                              "the same from item to item) or auto (trains ae, tiled above 64 pixels a "
                                              "side, and draem; on images up to 64 a side also geometric, on larger "
                                              "ones also draem and nearest on the whole image shrunk to 64; and keeps "
                                              "them all together: each one's score standardised on held-back training "
                                              "images, then averaged, or on larger images the highest) "
                                              "\\[default: ae].")] = None,
    latent_dim: Annotated[int | None, typer.Option(min=1, help="Size of the bottleneck "
                                                   f"\\[default: {_MODEL.latent_dim}].")] = None,
    tile: Annotated[int | None, typer.Option(min=0, help="Work on square tiles of this side (pixels) at full "
                                             "resolution, for large images with small defects; 0: the whole image "
                                             "\\[default: 0].")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Most epochs (early stopping may end sooner) "
                                               f"\\[default: {_TRAIN.epochs}].")] = None,
    max_minutes: Annotated[float | None, typer.Option(min=0, metavar="MINUTES", help="Most minutes of training; the epochs that fit "
                                                      "are planned after the first (0: no limit) \\[default: 0].")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per step "
                                                   f"\\[default: {_TRAIN.batch_size}].")] = None,
    lr: Annotated[float | None, typer.Option(help=f"AdamW learning rate \\[default: {DEFAULT_LR:g}; "
                                             f"draem {KIND_LR['draem']:g}].")] = None,
    method: Annotated[str | None, typer.Option("--score", help="Image score: auto (mse or topk, measured on "
                                              "held-back images), mse (mean error), topk (smoothed top-k error) "
                                              f"or ssim \\[default: {_SCORE.method}].")] = None,
    target_fpr: Annotated[float | None, typer.Option(help="False-positive rate the threshold holds on normal images "
                                                     f"\\[default: {_THRESHOLD.target_fpr:g}].")] = None,
    calib_fraction: Annotated[float | None, typer.Option(help="Share of normal images held out to calibrate "
                                                         f"\\[default: {_TRAIN.calib_fraction:g}].")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Share of the training images held back to decide when "
                                                       "to stop (0: train every epoch) "
                                                       f"\\[default: {_TRAIN.val_fraction:g}].")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split, the initial weights and the batches "
                                             f"\\[default: {_TRAIN.seed}].")] = None,
    device: Annotated[str | None, typer.Option(help="auto (GPU when present), cpu or cuda \\[default: auto].")] = None,
    config: Annotated[Path | None, typer.Option(help="A TOML file with \\[model], \\[train], \\[score], "
                                                   "\\[threshold] tables; its values replace the defaults shown, and "
                                                   "options given replace its values.")] = None,
    allow_collapsed: Annotated[bool, typer.Option(help="Keep a model whose output barely depends on its input.")] = False,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted training run of the same settings.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model at --out.")] = False,
    force: Annotated[bool, typer.Option(help="Train again even if --out is up to date.")] = False,
    reviews: Annotated[list[Path] | None, typer.Option("--reviews", metavar="RUN",
                                                       help="A run folder whose items reviewed as false alarms "
                                                            "join the training images; repeat for more runs.")] = None,
    as_json: Json = False, verbose: Verbose = False,
) -> None:
    """Train an autoencoder on the normal classes and calibrate its threshold on held-out normals."""
    console.setup_logging(verbose)
    from anomaly_ae import steps

    with named_as_flags(train, config):
        cfg = detector_config(config, locals())
        _warn_untiled(dataset, cfg.model.tile)
        out = out or Path("data") / "models" / f"{Path(dataset).name}-{'-'.join(normal or ['good'])}"
        with console.progress("train") as update:
            s = steps.train(dataset, out, normal=normal, config=cfg, overwrite=overwrite, force=force,
                            resume=resume, progress=update, reviews=reviews)
    if as_json:
        return console.print_json(s)
    verb = "is up to date (use --force to train again)" if s["cached"] else "trained"
    console.print_model_summary(s, " " + verb)


def _warn_untiled(dataset: Path, tile: int) -> None:
    """Say so when the tile side is not smaller than the images: the model then sees whole images."""
    if not tile:
        return
    from anomaly_ae.dataset import Dataset

    try:
        h, w = Dataset(dataset).shape[:2]
    except (AnomalyAEError, OSError):
        return  # training itself says what is wrong with the dataset
    if tile >= h and tile >= w:
        log.warning("tile %d is not smaller than the images (%dx%d): the model works on whole images, as "
                    "without tiles. For tiles, give a side below %d (at least 8).", tile, h, w, max(h, w))


@app.command()
def calibrate(
    model: Annotated[Path, typer.Argument(help="A model folder written by `anomaly-ae train`.")],
    target_fpr: Annotated[float | None, typer.Option(help="New false-positive rate to hold on normal images.")] = None,
    data: Annotated[Path | None, typer.Option(help="Other normal images (a dataset or a folder) to calibrate on; "
                                                      "they must not have been used for training.")] = None,
    normal: Annotated[list[str] | None, typer.Option("--normal", "-n", metavar="CLASS",
                                                        help="Normal classes in --data "
                                                        "\\[default: the model's].")] = None,
    split: Annotated[str | None, typer.Option(help="Only this split of --data.")] = None,
    reviews: Annotated[list[Path] | None, typer.Option("--reviews", metavar="RUN",
                                                       help="A run folder whose items reviewed as false alarms "
                                                            "(in `anomaly-ae ui`) join the calibration normals; "
                                                            "repeat for more runs.")] = None,
    as_json: Json = False, verbose: Verbose = False,
) -> None:
    """Recalibrate a model's threshold without retraining, or with reviewed false alarms added."""
    console.setup_logging(verbose)
    from anomaly_ae import steps

    s = steps.calibrate(model, target_fpr=target_fpr, data=data, normal=normal, split=split, reviews=reviews)
    if as_json:
        return console.print_json(s)
    moved = (f" (was {s['threshold_before']:.4g})" if s["threshold_before"] != s["threshold"] else "")
    out_console.print(f"Model {s['model']}: threshold {s['threshold']:.4g}{moved} for target FPR {s['target_fpr']:g} "
                      f"from {s['n_calibration']} scores ({s['source']}).")


@app.command()
def score(
    input: Annotated[Path, typer.Argument(help="A folder of images, one image file, or a dataset written by "
                                                "`anomaly-ae ingest`.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="A model folder written by `anomaly-ae train`.")],
    out: Annotated[Path | None, typer.Option(help="Run folder \\[default: data/runs/<input>-<time>].")] = None,
    threshold: Annotated[float | None, typer.Option(help="Flag scores above this value instead of the calibrated threshold.")] = None,
    target_fpr: Annotated[float | None, typer.Option(help="Recompute the threshold for this false-positive rate.")] = None,
    split: Annotated[str | None, typer.Option(help="Only this split (e.g. test) of the input.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per batch \\[default: from the image size].")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Decode processes \\[default: all cores].")] = None,
    device: Annotated[str, typer.Option(help="auto (GPU when present), cpu or cuda.")] = "auto",
    backend: Annotated[str, typer.Option(metavar="auto|torch|onnxruntime|openvino",
                                         help="Where the model runs: PyTorch, or its ONNX graph in ONNX Runtime or "
                                              "OpenVINO (the same scores, faster on a CPU); auto measures the "
                                              "installed ones on runs of 2,000 items or more.")] = "auto",
    report: Annotated[bool, typer.Option(help="Write report.html into the run folder.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing run folder at --out.")] = False,
    as_json: Json = False, verbose: Verbose = False,
) -> None:
    """Score a folder or dataset: every item's score, the flagged items, metrics when labels are known."""
    console.setup_logging(verbose)
    _start_decoders_early(input, workers)
    from anomaly_ae import steps
    from anomaly_ae.config import ScoreRunConfig
    from anomaly_ae.runid import new_run_id

    run_id = new_run_id()
    out = out or Path("data") / "runs" / f"{_default_name(str(input))}-{run_id}"
    with console.progress("score") as update:
        s = steps.score(input, model, out, given(ScoreRunConfig, locals()), run_id=run_id, overwrite=overwrite,
                        progress=update)
    if as_json:
        console.print_json(s)
    else:
        console.print_score_summary(s)
    if not s["scored"] and s["rejects"]:  # a run folder that holds only rejects: a scheduler must hear of it
        from anomaly_ae.errors import DataError

        raise DataError(f"None of the files could be scored: {s['rejects']} rejected (the reasons are in "
                        f"{Path(s['run']) / 'rejects.parquet'} and the warning above). Check the files, or that they are images of the kind the model "
                        "was trained on.")


@app.command()
def demo(
    normal: Annotated[str, typer.Option(help="The digit treated as normal.")] = "0",
    workdir: Annotated[Path, typer.Option(help="Workspace for the dataset, model and run.")] = Path("data"),
    device: Annotated[str, typer.Option(help="auto (GPU when present), cpu or cuda.")] = "auto",
    verbose: Verbose = False,
) -> None:
    """The whole pipeline on the bundled MNIST digits: ingest, train, calibrate, score, report."""
    console.setup_logging(verbose)
    from anomaly_ae import steps

    with console.progress("demo") as update:
        s = steps.demo(workdir, normal=normal, device=device, progress=update)
    trained = ("is up to date (trained before; not trained again)" if s["model"]["cached"]
               else f"trained in {s['model']['seconds']:.1f} s")
    out_console.print(f"Dataset {s['dataset']['dataset']}: {s['dataset']['counts']['images']} real MNIST digits "
                      f"(bundled). Model {s['model']['model']}: digit {normal} is normal, {trained}.")
    out_console.print(f"Scored the test split ({s['score']['scored']} digits; every digit but {normal} is an anomaly):")
    console.print_score_summary(s["score"])


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="A run folder written by `anomaly-ae score`.")],
    verbose: Verbose = False,
) -> None:
    """Rebuild a run folder's report.html."""
    console.setup_logging(verbose)
    from anomaly_ae import steps

    path = steps.report(run)
    out_console.print(f"Report written: {path}")


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="A model folder written by `anomaly-ae train`.")],
    out: Annotated[Path, typer.Option(help="Folder for model.onnx and model.json (replaced if it is an export).")],
    format: Annotated[str, typer.Option("--format", metavar="onnx", help="The export format.")] = "onnx",
    as_json: Json = False, verbose: Verbose = False,
) -> None:
    """Export a model for scoring without Python's anomaly-ae: one ONNX graph from uint8 images to
    scores and anomaly maps, and model.json with the threshold and preprocessing."""
    console.setup_logging(verbose)
    from anomaly_ae import steps

    s = steps.export(model, out, fmt=format)
    if as_json:
        return console.print_json(s)
    out_console.print(f"Exported {model} to {s['folder']}: {s['graph']} (opset {s['opset']}, input uint8 "
                      f"{' x '.join(map(str, s['input']['shape']))}) and model.json (threshold {s['threshold']:.4g}); "
                      f"scores agree with anomaly-ae's to {s['parity_max_relative_gap']:.1g} relative.", soft_wrap=True)


@app.command()
def ui(
    root: Annotated[list[Path] | None, typer.Option("--root", "-r", metavar="FOLDER", help="A folder to find runs under (pipeline output "
                                                   "folders, run folders); repeat for more \\[default: data].")] = None,
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Address to listen on; anything but this machine needs --token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, metavar="PORT", help="Port to listen on.")] = 8765,
    token: Annotated[str | None, typer.Option(metavar="SECRET", envvar=UI_TOKEN_ENV, show_envvar=True,
                                              help="A secret every request must carry (the printed URL has it).")] = None,
    who: Annotated[str, typer.Option(metavar="NAME", help="The reviewer's name recorded with each decision \\[default: your user "
                                          "name].")] = "",
    verbose: Verbose = False,
) -> None:
    """The inspection console: runs and their trends, flagged items, review (keyboard), reports."""
    console.setup_logging(verbose)
    import getpass

    roots = root or [Path("data")]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        raise ConfigError(f"No such folder: {', '.join(missing)}. Pass --root with folders that hold runs "
                          "(a pipeline's output folder, or `anomaly-ae score --out` folders).")
    if host not in LOOPBACK and not token:
        raise ConfigError(f"Listening on {host} lets other machines in: set a token (--token or {UI_TOKEN_ENV}) "
                          "that every request must carry, or keep the default --host 127.0.0.1.")
    import uvicorn

    from anomaly_ae.ui.app import create_app

    app_ = create_app(roots, token=token, who=who or getpass.getuser())
    shown = "localhost" if host in LOOPBACK else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    out_console.print(f"Console of the runs under {', '.join(str(r) for r in roots)}: {url}  (Ctrl-C stops it)",
                      soft_wrap=True)
    uvicorn.run(app_, host=host, port=port, log_level="info" if verbose else "warning")


apply_help_style(app)
