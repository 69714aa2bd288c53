"""Pipeline files: the shipped ones load, mistakes are reported with the file and the key,
and prefect.yaml agrees with them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from anomaly_ae.errors import ConfigError
from anomaly_ae.pipeline import load_pipeline

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "pipelines").glob("*.toml"))
MINIMAL = '[data]\nsource = "sample:mnist5k"\nnormal = ["0"]\n'


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_pipelines_load():
    names = {}
    for path in SHIPPED:
        p = load_pipeline(path, base=ROOT)
        names[p.name] = p
        assert p.name == path.stem
    assert {"mnist-demo", "fashion-mnist", "line-a"} <= set(names)
    assert names["mnist-demo"].data.source == "sample:mnist5k"
    assert names["fashion-mnist"].data.source == "torchvision:FashionMNIST"
    assert names["fashion-mnist"].data.root == str(ROOT / "data" / "torchvision")
    line = names["line-a"]
    assert line.inbox is not None and line.inbox.folder == str(ROOT / "data" / "inbox" / "line-a")
    assert [s.interval for s in line.schedules_for("inbox")] == [10]


def test_data_settings_in_their_natural_spellings(tmp_path):
    """size as a number or text, crop as a list or the command line's text: the same settings."""
    spelt = [load_pipeline(write(tmp_path, MINIMAL + extra), base=tmp_path).data
             for extra in ('size = 32\ncrop = [1, 2, 30, 40]\nbit_depth = 12\n',
                           'size = "32"\ncrop = "1,2,30,40"\nbit_depth = 12\n')]
    assert spelt[0] == spelt[1] and spelt[0].size == "32" and spelt[0].crop == (1, 2, 30, 40)
    assert spelt[0].bit_depth == 12


def test_defaults_and_paths(tmp_path):
    p = load_pipeline(write(tmp_path, MINIMAL, "my-line.toml"), base=tmp_path)
    assert p.name == "my-line" and p.output == tmp_path / "data" / "my-line"
    assert p.dataset_dir == p.output / "dataset" and p.model_dir == p.output / "model"
    assert p.inbox is None and p.schedules == () and p.normal == ["0"]
    assert p.detector.train.epochs == 30  # the library's defaults where the file says nothing
    folder = load_pipeline(write(tmp_path, '[data]\nsource = "imgs/good"\n'), base=tmp_path)
    assert folder.data.source == str(tmp_path / "imgs" / "good") and folder.normal is None


@pytest.mark.parametrize("text, match", [
    (MINIMAL + "[modle]\n", r"p.toml: unknown table or key 'modle' \(did you mean \[model\]\?\)"),
    (MINIMAL.replace("normal", "normals"), r"p.toml \[data\]: unknown key 'normals' \(did you mean 'normal'\?\)"),
    (MINIMAL + "[train]\nepochs = \"ten\"\n", r'p.toml \[train\].epochs: expected a whole number, got "ten"'),
    (MINIMAL + "[train]\nepochs = 0\n", r"p.toml \[train\]: train.epochs: must be 1..100000"),
    (MINIMAL + "[threshold]\ntarget_fpr = 1.5\n", r"\[threshold\]: threshold.target_fpr: must be between 0 and 1"),
    ('[data]\nnormal = ["0"]\n', r"p.toml \[data\]: source: is required"),
    ("[output]\nfolder = \"x\"\n", r"p.toml: missing table \[data\]"),
    (MINIMAL + "[data.extra]\n", r"\[data\]: unknown key 'extra'"),
    (MINIMAL + '[inbox]\nfolder = "in"\nsettle_seconds = -1\n', r"p.toml \[inbox\]: settle_seconds: must be 0..86400"),
    (MINIMAL + "[inbox]\nsettle_seconds = 1\n", r"p.toml \[inbox\]: folder: is required"),
    (MINIMAL + '[[schedule]]\nflow = "pipeline"\ninterval = 0\n', r"\[\[schedule\]\] #1: interval: must be 1 second"),
    (MINIMAL + '[[schedule]]\nflow = "pipeline"\ncron = "* * * *"\n', r"#1: cron: must have 5 fields"),
    (MINIMAL + '[[schedule]]\nflow = "pipeline"\ncron = "0 * * * *"\ninterval = 60\n', r"give exactly one of cron"),
    (MINIMAL + '[[schedule]]\nflow = "pipeline"\ncron = "0 * * * *"\ntimezone = "Mars/Base"\n',
     r"timezone: unknown time zone 'Mars/Base'"),
    (MINIMAL + '[[schedule]]\nflow = "train"\ninterval = 60\n', r"flow: must be one of inbox, pipeline"),
    (MINIMAL + '[[schedule]]\ninterval = 60\n', r"a schedule for flow \"inbox\" needs an \[inbox\] table"),
    (MINIMAL + '[schedule]\ninterval = 60\n', r"write schedules as \[\[schedule\]\]"),
    (MINIMAL + '[pipeline]\nname = "Line A"\n', r"\[pipeline\] name: 'Line A' must be lowercase letters"),
    (MINIMAL + '[scale]\ntask_runner = "ray"\n', r"\[scale\]: task_runner: must be local or dask"),
    (MINIMAL.replace('normal = ["0"]', 'size = "big"'), r"size must look like 256"),
    (MINIMAL + "crop = [10.5, 20, 40, 40]\n",
     r"p.toml \[data\].crop: expected a list of whole numbers or text, got \[10.5, 20, 40, 40\]"),
    (MINIMAL + "bit_depth = 12.0\n", r"p.toml \[data\].bit_depth: expected a whole number, got 12.0"),
    ("[data\n", r"p.toml: not valid TOML"),
    (MINIMAL + '[inbox]\nfolder = "in"\n[output]\nfolder = "in/out"\n', r"\[output\] folder: .* lies inside the inbox"),
    (MINIMAL + '[output]\nconsole_url = "inspection-pc:8765"\n', r"\[output\]: console_url: must be an http"),
])
def test_errors_name_the_file_and_the_key(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_pipeline(write(tmp_path, text))


def test_console_url_from_the_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("ANOMALY_AE_CONSOLE_URL", raising=False)
    assert load_pipeline(write(tmp_path, MINIMAL)).console_url == ""
    monkeypatch.setenv("ANOMALY_AE_CONSOLE_URL", "http://qc:8765/")
    assert load_pipeline(write(tmp_path, MINIMAL)).console_url == "http://qc:8765"
    named = MINIMAL + '[output]\nconsole_url = "https://console.plant"\n'
    assert load_pipeline(write(tmp_path, named)).console_url == "https://console.plant"
    monkeypatch.setenv("ANOMALY_AE_CONSOLE_URL", "qc:8765")
    with pytest.raises(ConfigError, match="ANOMALY_AE_CONSOLE_URL='qc:8765' must be an http"):
        load_pipeline(write(tmp_path, MINIMAL))


def test_missing_file():
    with pytest.raises(ConfigError, match="nope.toml: no such file"):
        load_pipeline("nope.toml")


def test_every_ingest_setting_is_read_from_the_data_table(tmp_path):
    """[data] takes every IngestConfig field by the same code the command line uses: the region of
    interest needs nothing of its own here."""
    from anomaly_ae.config import IngestConfig

    text = MINIMAL + 'crop = [8, 4, 200, 300]\nsize = "64"\nmax_pixels = 1000000\n'
    p = load_pipeline(write(tmp_path, text), base=tmp_path)
    assert p.data.ingest_config() == IngestConfig(size="64", crop=(8, 4, 200, 300), max_pixels=1_000_000)
    assert p.ingest_kwargs()["config"].crop == (8, 4, 200, 300)
    with pytest.raises(ConfigError, match=r"p.toml \[data\].*crop"):
        load_pipeline(write(tmp_path, MINIMAL + "crop = [8, 4, 0, 300]\n"), base=tmp_path)
    with pytest.raises(ConfigError, match=r"crop: must be TOP,LEFT,HEIGHT,WIDTH .*got \(8, 4\)"):
        load_pipeline(write(tmp_path, MINIMAL + 'crop = "8,4"\n'), base=tmp_path)


def test_an_inbox_run_needs_an_inbox_table(tmp_path):
    """The pipeline check before any run (flows.preflight, no prefect import) refuses an inbox run
    of a pipeline without [inbox]; full runs of it are fine."""
    from flows.preflight import check_paths

    p = load_pipeline(write(tmp_path, MINIMAL + f'[output]\nfolder = "{tmp_path / "out"}"\n'))
    with pytest.raises(ConfigError, match=r"p.toml: no \[inbox\] table; add one with folder = "):
        check_paths(p, "inbox")
    check_paths(p, "pipeline")


def test_library_never_imports_prefect():
    code = ("import anomaly_ae.steps, anomaly_ae.pipeline, anomaly_ae.inbox, sys; "
            "assert 'prefect' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_prefect_yaml_matches_the_pipeline_files():
    import yaml

    doc = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert doc["deployments"]
    for d in doc["deployments"]:
        file, func = d["entrypoint"].split(":")
        assert f"def {func}(" in (ROOT / file).read_text(), d["entrypoint"]
        p = load_pipeline(ROOT / d["parameters"]["pipeline"], base=ROOT)
        flow = "inbox" if func == "inbox_flow" else "pipeline"
        assert d["name"] == f"{p.name}-{flow}"
        want = [{"cron": s.cron, **({"timezone": s.timezone} if s.timezone else {})} if s.cron
                else {"interval": s.interval} for s in p.schedules_for(flow)]
        assert [{k: v for k, v in s.items() if k != "active"} for s in d["schedules"]] == want, d["name"]
        # A schedule whose data a fresh checkout lacks ships inactive: deploying starts no failing runs.
        needs = [p.data.root if p.data.source.startswith("torchvision:") else p.data.source,
                 *([p.inbox.folder] if flow == "inbox" else [])]
        if not all(n is None or n.startswith("sample:") or Path(n).exists() for n in needs):
            assert all(s.get("active") is False for s in d["schedules"]), d["name"]
