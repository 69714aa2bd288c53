"""Pipeline files (``pipelines/*.toml``): one file says everything about a pipeline.

A pipeline file names its data source and normal classes, the model, training, scoring and
threshold settings (the ``[model]``, ``[train]``, ``[score]`` and ``[threshold]`` tables of
`anomaly_ae.config`), what a full run scores, where outputs go, its schedules and the inbox
that scheduled runs score::

    [pipeline]
    name = "line-a"                  # lowercase letters, digits and dashes
    [data]
    source = "data/line-a/train"     # a folder, torchvision:<Name> or sample:<name>
    normal = ["good"]
    [output]
    folder = "data/line-a"
    [inbox]
    folder = "data/inbox/line-a"
    settle_seconds = 5
    [[schedule]]
    flow = "inbox"
    interval = 60                    # seconds; or cron = "*/5 * * * *"

Relative paths are taken from the folder the pipeline is run in (the project root), not
from the pipeline file's folder. `load_pipeline` rejects unknown tables and keys, wrong types
and impossible values with errors that name the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from anomaly_ae.config import DETECTOR_SECTIONS, DetectorConfig, IngestConfig, require
from anomaly_ae.configfile import build_section, detector_config_from, read_toml, reject_unknown_tables
from anomaly_ae.errors import ConfigError
from anomaly_ae.schedules import Schedule

NAME_RE = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class PipelineSection:
    """[pipeline]: the name used for deployments, artifact keys and folders."""

    name: str | None = None  # default: the file's name without .toml
    description: str = ""


@dataclass(frozen=True)
class DataSection(IngestConfig):
    """[data]: where the training images come from, which are normal, and how they are ingested (every
    `IngestConfig` setting: size, channels, resize, crop, bit_depth, test_fraction, seed, max_pixels)."""

    source: str = ""
    normal: tuple[str, ...] = ()  # normal class names (or labels); empty: the dataset's default
    root: str | None = None  # torchvision datasets: where their files lie
    download: bool = False
    dataset: str | None = None  # the Parquet dataset folder; default <output.folder>/dataset

    def __post_init__(self):
        super().__post_init__()
        require(bool(self.source.strip()), "source", "is required: a folder, torchvision:<Name> or sample:<name>")
        require(all(str(c).strip() for c in self.normal), "normal", "class names must not be empty")

    def ingest_config(self) -> IngestConfig:
        """The ingest settings of this table."""
        return IngestConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(IngestConfig)})


@dataclass(frozen=True)
class BatchSection:
    """[batch]: what a full pipeline run scores after training."""

    input: str | None = None  # a folder or dataset; default: the pipeline's dataset
    split: str = "auto"  # auto (test when the input has one), all, or a split name
    report: bool = True

    def __post_init__(self):
        require(bool(self.split.strip()), "split", "must be auto, all or a split name")


@dataclass(frozen=True)
class OutputSection:
    """[output]: the folder that holds the dataset, model, runs and inbox state, and the console
    (`anomaly-ae ui`) that serves it, for links in Prefect artifacts."""

    folder: str | None = None  # default: data/<name>
    console_url: str = ""  # e.g. "http://inspection-pc:8765"; default: $ANOMALY_AE_CONSOLE_URL

    def __post_init__(self):
        require(not self.console_url or is_web_url(self.console_url), "console_url",
                "must be an http:// or https:// URL, e.g. \"http://127.0.0.1:8765\"")


@dataclass(frozen=True)
class InboxSection:
    """[inbox]: the folder a product line drops images into, scored by scheduled runs."""

    folder: str = ""
    settle_seconds: float = 5.0  # a file counts once unchanged (size, mtime, ctime) this long
    max_files: int = 0  # at most this many files per run (0: no limit); the rest wait
    report: bool = True

    def __post_init__(self):
        require(bool(self.folder.strip()), "folder", "is required: the folder images arrive in")
        require(0.0 <= self.settle_seconds <= 86_400, "settle_seconds",
               f"must be 0..86400 seconds, got {self.settle_seconds}")
        require(self.max_files >= 0, "max_files", f"must be >= 0 (0 = no limit), got {self.max_files}")


@dataclass(frozen=True)
class ScaleSection:
    """[scale]: how scoring fans out over partitions (used by deployments and as defaults)."""

    partitions: int = 1
    task_runner: str = "local"  # local | dask
    dask_address: str | None = None  # an existing scheduler; default: a local cluster
    dask_workers: int = 2  # workers of the local cluster

    def __post_init__(self):
        require(1 <= self.partitions <= 10_000, "partitions", f"must be 1..10000, got {self.partitions}")
        require(self.task_runner in ("local", "dask"), "task_runner",
               f"must be local or dask, got {self.task_runner!r}")
        require(1 <= self.dask_workers <= 1024, "dask_workers", f"must be 1..1024, got {self.dask_workers}")


@dataclass(frozen=True)
class AlertsSection:
    """[alerts]: when a scoring run raises an alert (a warning log and a Prefect event)."""

    min_flagged: int = 1  # alert when a run flags at least this many items (0: never)

    def __post_init__(self):
        require(self.min_flagged >= 0, "min_flagged", f"must be >= 0, got {self.min_flagged}")


@dataclass(frozen=True)
class ReviewSection:
    """[review]: what the decisions reviewers make in the console (`anomaly-ae ui`) change."""

    # Before each scoring run, add the items reviewed as false alarms in this pipeline's runs to the
    # calibration normals (`anomaly-ae calibrate --reviews`): the threshold can only go up.
    calibrate: bool = False


@dataclass(frozen=True)
class Pipeline:
    """A validated pipeline file, with every path resolved to an absolute one."""

    path: Path
    name: str
    description: str
    data: DataSection
    detector: DetectorConfig
    batch: BatchSection
    output: Path
    inbox: InboxSection | None
    scale: ScaleSection
    alerts: AlertsSection
    schedules: tuple[Schedule, ...] = field(default_factory=tuple)
    console_url: str = ""
    review: ReviewSection = field(default_factory=ReviewSection)

    @property
    def dataset_dir(self) -> Path:
        """The Parquet dataset the pipeline trains on."""
        return Path(self.data.dataset) if self.data.dataset else self.output / "dataset"

    @property
    def model_dir(self) -> Path:
        """The trained model's folder."""
        return self.output / "model"

    @property
    def runs_dir(self) -> Path:
        """Where full pipeline runs write their run folders."""
        return self.output / "runs"

    @property
    def inbox_state_dir(self) -> Path:
        """Inbox state: the lock, the ledger and one committed folder per inbox run."""
        return self.output / "inbox"

    def reviewed_runs(self) -> list[Path]:
        """The pipeline's run folders (full and inbox runs) that hold review decisions."""
        found = []
        for folder in (self.runs_dir, self.inbox_state_dir / "runs"):
            if folder.is_dir():
                found += sorted(d for d in folder.iterdir() if (d / "reviews.parquet").is_file())
        return found

    @property
    def normal(self) -> list[str] | None:
        """The normal classes, or None to let the dataset decide."""
        return list(self.data.normal) or None

    def ingest_kwargs(self) -> dict:
        """Keyword arguments of `anomaly_ae.steps.ingest` for this pipeline's data."""
        d = self.data
        return {"source": d.source, "out": str(self.dataset_dir), "root": d.root, "download": d.download,
                "config": d.ingest_config()}

    def schedules_for(self, flow: str) -> list[Schedule]:
        """The schedules of one flow ("inbox" or "pipeline")."""
        return [s for s in self.schedules if s.flow == flow]


def is_web_url(url) -> bool:
    """True for an http:// or https:// address (what a browser can follow from another page)."""
    return isinstance(url, str) and url.startswith(("http://", "https://"))


CONSOLE_URL_ENV = "ANOMALY_AE_CONSOLE_URL"
TABLES = {"pipeline": PipelineSection, "data": DataSection, "batch": BatchSection, "output": OutputSection,
          "inbox": InboxSection, "scale": ScaleSection, "alerts": AlertsSection, "review": ReviewSection}
DETECTOR_TABLES = tuple(DETECTOR_SECTIONS)
KNOWN_TABLES = (*TABLES, *DETECTOR_TABLES, "schedule")


def load_pipeline(path: str | Path, base: str | Path | None = None) -> Pipeline:
    """Read and validate a pipeline file.

    Args:
        path: the pipeline's TOML file.
        base: the folder relative paths are taken from (default: the current folder).

    Raises:
        ConfigError: a missing or unreadable file, unknown tables or keys, wrong types or
            impossible values; the message names the file and the key.
    """
    path = Path(path)
    doc = read_toml(path)
    where = str(path)
    reject_unknown_tables(doc, where, KNOWN_TABLES)
    if "data" not in doc:
        raise ConfigError(f"{where}: missing table [data] (at least: source = \"...\").")
    s = {name: build_section(cls, doc[name], f"{where} [{name}]") if name in doc else None
         for name, cls in TABLES.items()}
    s.update({name: cls() for name, cls in TABLES.items() if s[name] is None and name != "inbox"})
    schedules = _schedules(doc.get("schedule", []), where)
    name = s["pipeline"].name or path.stem
    if not NAME_RE.match(name):
        key = "[pipeline] name" if s["pipeline"].name else "file name (set [pipeline] name)"
        raise ConfigError(f"{where} {key}: {name!r} must be lowercase letters, digits and single dashes "
                          "(it names deployments and artifact keys), e.g. \"line-a\".")
    if s["inbox"] is None and any(sch.flow == "inbox" for sch in schedules):
        raise ConfigError(f"{where} [[schedule]]: a schedule for flow \"inbox\" needs an [inbox] table "
                          "with folder = \"...\".")
    base = Path(base) if base is not None else Path.cwd()
    inbox = s["inbox"] and dataclasses.replace(s["inbox"], folder=str(_absolute(s["inbox"].folder, base)))
    output = _absolute(s["output"].folder or f"data/{name}", base)
    if inbox and Path(os.path.abspath(output)).is_relative_to(os.path.abspath(inbox.folder)):
        raise ConfigError(f"{where} [output] folder: {output} lies inside the inbox {inbox.folder}; "
                          "keep the outputs outside the folder images arrive in.")
    console_url = (s["output"].console_url or os.environ.get(CONSOLE_URL_ENV, "")).rstrip("/")
    if console_url and not is_web_url(console_url):
        raise ConfigError(f"{CONSOLE_URL_ENV}={console_url!r} must be an http:// or https:// URL, "
                          "e.g. http://127.0.0.1:8765.")
    return Pipeline(path=path.resolve(), name=name, description=s["pipeline"].description,
                    data=_data_paths(s["data"], base), detector=detector_config_from(doc, where),
                    batch=dataclasses.replace(s["batch"], input=_optional_path(s["batch"].input, base)),
                    output=output,
                    inbox=inbox,
                    scale=s["scale"], alerts=s["alerts"], schedules=schedules,
                    console_url=console_url, review=s["review"])


def _data_paths(data: DataSection, base: Path) -> DataSection:
    """[data] with its paths made absolute (sample: and torchvision: specs stay as they are)."""
    source = data.source if data.source.startswith(("sample:", "torchvision:")) else str(_absolute(data.source, base))
    return dataclasses.replace(data, source=source, dataset=_optional_path(data.dataset, base),
                    root=_optional_path(data.root, base))


def _optional_path(path: str | None, base: Path) -> str | None:
    return str(_absolute(path, base)) if path else path


def _schedules(entries, where: str) -> tuple[Schedule, ...]:
    if isinstance(entries, dict):
        raise ConfigError(f"{where}: write schedules as [[schedule]] (an array of tables), not [schedule].")
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: schedule must be [[schedule]] tables, got {type(entries).__name__}")
    return tuple(build_section(Schedule, e, f"{where} [[schedule]] #{k + 1}") for k, e in enumerate(entries))


def _absolute(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p)


def batch_input(pipeline: Pipeline) -> tuple[str, str | None]:
    """What a full run scores: (input folder or dataset, split or None for all of it).

    ``split = "auto"`` picks the test split when the input is a dataset that has one.
    """
    from anomaly_ae.dataset import Dataset
    from anomaly_ae.scoring import is_dataset

    source = pipeline.batch.input or str(pipeline.dataset_dir)
    split = pipeline.batch.split
    if split == "all":
        return source, None
    if split == "auto":
        return source, ("test" if is_dataset(source) and Dataset(source).has_split("test") else None)
    return source, split
