"""The `anomaly-ae` command line: thin commands over anomaly_ae.steps.

torch, torchvision and prefect are imported inside the commands that need them, so
``anomaly-ae --help`` starts fast. A user error prints one line and exits with code 2.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from anomaly_ae.errors import AnomalyAEError

app = typer.Typer(
    name="anomaly-ae", no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
    help="Image anomaly detection with convolutional autoencoders: ingest images into Parquet, "
         "train on normal images, calibrate a threshold, score new batches and report.",
)
out_console = Console()
err_console = Console(stderr=True)

Json = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Show progress messages (INFO logs).")]


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except AnomalyAEError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


def _setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err_console, show_path=False)], force=True)


@contextlib.contextmanager
def _progress(label: str):
    """A progress bar on stderr; yields a callback ``(done, total, **fields)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[note]}"), TimeElapsedColumn()]
    with Progress(*columns, console=err_console, transient=True) as bar:
        task = bar.add_task(label, total=None, note="")

        def update(done: int, total: int | None, **fields) -> None:
            note = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in fields.items())
            bar.update(task, completed=done, total=total, note=note)

        yield update


def _print_json(obj) -> None:
    out_console.print_json(json.dumps(obj, default=str))


def _default_name(spec: str) -> str:
    name = spec.split(":", 1)[1] if ":" in spec and not Path(spec).exists() else Path(spec).resolve().name
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-").lower() or "dataset"


@app.command()
def ingest(
    source: Annotated[str, typer.Argument(help="A folder of images, torchvision:<Dataset> (MNIST, "
                                               "FashionMNIST, KMNIST, QMNIST, CIFAR10, CIFAR100, SVHN) "
                                               "or sample:<name> (mnist5k, digits; bundled, no download).")],
    out: Annotated[Optional[Path], typer.Option(help="Dataset folder to write \\[default: data/datasets/<name>].")] = None,
    root: Annotated[Optional[str], typer.Option(help="Where torchvision datasets live (torchvision's layout).")] = None,
    download: Annotated[bool, typer.Option(help="Let torchvision download a missing dataset.")] = False,
    size: Annotated[Optional[str], typer.Option(help="Working size, e.g. 256 or 256x192 (height x width). "
                                                     "Default: the images' own size when they all agree "
                                                     "(up to 1024), else 256x256.")] = None,
    channels: Annotated[Optional[str], typer.Option(help="L (gray) or RGB. Default: L when every image is gray.")] = None,
    resize: Annotated[str, typer.Option(help="Resize method: bilinear, bicubic, area, lanczos, nearest.")] = "bilinear",
    test_fraction: Annotated[Optional[float], typer.Option(help="For data without splits: share of each class "
                                                                "marked 'test' (seeded).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --test-fraction split.")] = 0,
    max_pixels: Annotated[Optional[int], typer.Option(help="Reject images with more pixels than this "
                                                           "(decompression-bomb guard) \\[default: 64,000,000].")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Decode processes \\[default: all cores].")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset at --out.")] = False,
    force: Annotated[bool, typer.Option(help="Ingest again even if --out is up to date.")] = False,
    as_json: Json = False, verbose: Verbose = False,
) -> None:
    """Decode a folder, torchvision dataset or bundled sample into a Parquet dataset.

    Unreadable files are recorded in the dataset's rejects table with the reason and skipped.
    """
    _setup_logging(verbose)
    from anomaly_ae import steps

    out = out or Path("data") / "datasets" / _default_name(source)
    with _progress("ingest") as update:
        summary = steps.ingest(source, out, root=root, download=download, size=size, channels=channels,
                               resize=resize, test_fraction=test_fraction, seed=seed, max_pixels=max_pixels,
                               workers=workers, overwrite=overwrite, force=force, progress=update)
    if as_json:
        return _print_json(summary)
    counts = summary["counts"]
    verb = "is up to date (use --force to ingest again)" if summary["cached"] else "written"
    out_console.print(f"Dataset {summary['dataset']} {verb}: {counts['images']} images "
                      f"{'x'.join(map(str, summary['image_shape']))}, {len(summary['classes'])} classes, "
                      f"{counts['masks']} masks, {counts['rejects']} rejected.")
    if counts["rejects"]:
        out_console.print(f"See the reasons with: anomaly-ae info {summary['dataset']}")


@app.command()
def info(
    dataset: Annotated[Path, typer.Argument(help="A dataset folder written by `anomaly-ae ingest`.")],
    as_json: Json = False,
) -> None:
    """Counts per split and class, image shape, masks and rejects of a dataset."""
    from rich.table import Table

    from anomaly_ae import steps

    s = steps.info(dataset)
    if as_json:
        return _print_json(s)
    p = s["preprocess"]
    out_console.print(f"[bold]{s['dataset']}[/]  source {s['source']} ({s['layout']} layout), "
                      f"schema v{s['schema_version']}")
    out_console.print(f"images {s['counts']['images']}, shape {'x'.join(map(str, s['image_shape']))} "
                      f"({p['channels']}, resized {p['resize']}), masks {s['counts']['masks']}, "
                      f"rejects {s['counts']['rejects']}")
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


if __name__ == "__main__":  # pragma: no cover
    main()
