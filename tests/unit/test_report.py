"""The batch report, built from real scoring runs on the bundled 8x8 digits."""

from __future__ import annotations

import base64
import io
import json
import shutil
from html.parser import HTMLParser

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from anomaly_ae import report, steps
from anomaly_ae.config import DetectorConfig, TrainConfig
from anomaly_ae.errors import DataError
from anomaly_ae.report import examples, figures, html, sections

ODD_NAME = 'digit <b>&"x"'  # must come out escaped wherever the page shows it


class Page(HTMLParser):
    """Collect what the tests inspect: tags, images, links, tagged metrics and the visible text."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.images: list[dict] = []
        self.links: list[str] = []
        self.metrics: dict[str, str] = {}
        self.sections: list[str] = []
        self.text: list[str] = []
        self._open: list[list] = []  # [metric name, text parts, depth]
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(a)
        if tag in ("a", "link") and a.get("href"):
            self.links.append(a["href"])
        if tag == "section":
            self.sections.append(a.get("id"))
        for entry in self._open:
            entry[2] += 1
        if "data-metric" in a:
            self._open.append([a["data-metric"], [], 1])

    def handle_endtag(self, tag):
        for entry in list(self._open):
            entry[2] -= 1
            if entry[2] == 0:
                self.metrics[entry[0]] = "".join(entry[1]).strip()
                self._open.remove(entry)

    def handle_data(self, data):
        self.text.append(data)
        for entry in self._open:
            entry[1].append(data)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    """A dataset, a model (digit 0 normal) and a labelled run of the test split."""
    root = tmp_path_factory.mktemp("report")
    steps.ingest("sample:digits", root / "ds")
    cfg = DetectorConfig(train=TrainConfig(epochs=3))
    steps.train(root / "ds", root / "model", normal=["0"], config=cfg)
    steps.score(root / "ds", root / "model", root / "run", split="test")
    return root


@pytest.fixture(scope="session")
def labelled(pipeline):
    return pipeline / "run"


@pytest.fixture(scope="session")
def unlabelled(pipeline):
    """A run over a flat folder of images (no classes), with an oddly named file and an unreadable one."""
    folder = pipeline / "flat"
    folder.mkdir()
    table = pq.read_table(pipeline / "ds" / "images.parquet", columns=["pixels"]).slice(0, 30)
    for i, px in enumerate(table["pixels"].to_pylist()):
        name = f"{ODD_NAME} {i}.png" if i == 0 else f"img{i:02d}.png"
        Image.fromarray(np.frombuffer(px, np.uint8).reshape(8, 8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"this is not an image")
    steps.score(folder, pipeline / "model", pipeline / "flat-run")
    return pipeline / "flat-run"


def page(run_dir) -> tuple[str, Page]:
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    return text, Page(text)


def test_scoring_writes_the_report(labelled, unlabelled):
    for run_dir in (labelled, unlabelled):
        assert (run_dir / "report.html").stat().st_size > 10_000
        assert json.loads((run_dir / "run.json").read_text())["report"] == "report.html"


def test_page_is_self_contained_and_accessible(labelled):
    text, p = page(labelled)
    assert p.tags[0] == "html" and "head" in p.tags and "body" in p.tags
    assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    assert "http://" not in text and "https://" not in text and "url(" not in text
    assert all(href.startswith("#") for href in p.links)
    assert 'name="viewport"' in text and "@media" in text
    assert len(p.images) > 20
    for img in p.images:
        assert img["src"].startswith("data:image/png;base64,")
        assert len(img.get("alt", "").strip()) > 10


def test_every_embedded_image_decodes(labelled, unlabelled):
    for run_dir in (labelled, unlabelled):
        _, p = page(run_dir)
        for img in p.images:
            data = base64.b64decode(img["src"].split(",", 1)[1], validate=True)
            with Image.open(io.BytesIO(data)) as im:
                im.verify()
            with Image.open(io.BytesIO(data)) as im:
                assert im.format == "PNG" and min(im.size) >= 16


def test_figures_shown_equal_the_run_files(labelled):
    _, p = page(labelled)
    run = json.loads((labelled / "run.json").read_text())
    m = json.loads((labelled / "metrics.json").read_text())
    shown = p.metrics
    for key in ("auroc", "auprc", "tpr", "fpr", "precision", "f1"):
        assert shown[key] == f"{m[key]:.4f}", key
    for key in ("tp", "fp", "fn", "tn"):
        assert shown[key] == str(m["confusion"][key])
    counts = run["counts"]
    assert shown["scored"] == str(counts["scored"]) and shown["flagged"] == str(counts["flagged"])
    assert shown["flagged_share"] == f"{100 * counts['flagged'] / counts['scored']:.1f}%"
    assert shown["threshold"] == f"{run['threshold']['threshold']:.4g}"
    assert shown["target_fpr"] == f"{100 * run['threshold']['target_fpr']:.1f}%"
    assert shown["drift_ks_statistic"] == f"{run['drift']['ks_statistic']:.3f}"
    assert shown["drift_normal_ks_statistic"] == f"{m['drift_normal_only']['ks_statistic']:.3f}"
    for row in m["per_class"]:
        c = row["class_name"]
        assert shown[f"class:{c}:n"] == str(row["n"])
        assert shown[f"class:{c}:auroc"] == ("n/a" if row["auroc"] is None else f"{row['auroc']:.4f}")
        rate = "tpr" if row["is_anomaly"] else "fpr"
        assert shown[f"class:{c}:{rate}"] == f"{row[rate]:.4f}"
    scores = pq.read_table(labelled / "scores.parquet", columns=["flagged"])["flagged"].to_numpy()
    assert int(scores.sum()) == counts["flagged"]  # the page, run.json and the table agree


def test_labelled_report_has_every_section(labelled):
    _, p = page(labelled)
    assert p.sections == ["summary", "quality", "scores", "drift", "top", "borderline", "classes", "training",
                          "rejects", "metadata"]
    alts = " ".join(img["alt"] for img in p.images)
    for what in ("ROC curve", "Precision-recall curve", "Histogram of anomaly scores", "Cumulative distributions",
                 "Training loss", "Original image", "Reconstruction", "Error heat map"):
        assert what in alts, what


def test_unlabelled_report_has_no_roc(unlabelled):
    _, p = page(unlabelled)
    assert "quality" not in p.sections and "auroc" not in p.metrics
    assert not any("ROC" in img["alt"] for img in p.images)
    assert {"summary", "scores", "drift", "top", "borderline", "rejects", "metadata"} <= set(p.sections)
    assert "label unknown" in "".join(p.text)


def test_data_strings_are_escaped(unlabelled):
    text, p = page(unlabelled)
    assert ODD_NAME not in text and "<b>" not in text
    assert "digit &lt;b&gt;&amp;&quot;x&quot;" in text
    assert any(ODD_NAME in t for t in p.text)  # and reads back as the original name


def test_rejected_files_are_listed(unlabelled):
    _, p = page(unlabelled)
    assert p.metrics["rejects_total"] == "1" and p.metrics["rejects"] == "1"
    assert "broken.png" in "".join(p.text)


def test_rebuild_replaces_the_report_without_leftovers(unlabelled, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(unlabelled, run_dir)
    (run_dir / "report.html").unlink()
    assert steps.report(run_dir) == run_dir / "report.html"
    assert report.build(run_dir) == run_dir / "report.html"
    assert sorted(f.name for f in run_dir.iterdir() if f.name.startswith(".")) == []


def test_a_run_that_lost_its_examples_says_so_instead_of_no_item_flagged(labelled, tmp_path, caplog):
    import logging

    run_dir = tmp_path / "run"
    shutil.copytree(labelled, run_dir)
    (run_dir / "examples.parquet").unlink()
    with caplog.at_level(logging.WARNING):
        report.build(run_dir)
    text = (run_dir / "report.html").read_text()
    assert json.loads((run_dir / "run.json").read_text())["counts"]["flagged"] > 0
    assert "No item was flagged" not in text and "the run folder has lost its examples.parquet" in text
    assert "examples.parquet is missing: the report shows no pictures" in caplog.text


def test_labels_unknown_gives_drift_warning_and_folder_class_counts(labelled, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(labelled, run_dir)
    (run_dir / "metrics.json").unlink()  # as if the labels were unknown
    run = json.loads((run_dir / "run.json").read_text())
    run["labels_known"] = False
    run["drift"].update(drift=True, flagged_share=0.5, expected_share=0.01)
    (run_dir / "run.json").write_text(json.dumps(run))
    report.build(run_dir)
    text, p = page(run_dir)
    assert "Warning:</strong> This batch does not look like the data the model knows: 50.0% of the batch" in text
    assert text.count("does not look like the data the model knows") == 2  # summary and drift section
    classes = pq.read_table(run_dir / "scores.parquet", columns=["class_name"])["class_name"].to_pylist()
    assert p.metrics["class:3:n"] == str(classes.count("3")) and "classes" in p.sections
    assert "quality" not in p.sections and "class:3:auroc" not in p.metrics


def test_labelled_drift_is_judged_on_the_normal_items(labelled):
    text, p = page(labelled)
    normal_drift = json.loads((labelled / "metrics.json").read_text())["drift_normal_only"]["drift"]
    assert p.metrics["drift_normal_drift"] == ("drift" if normal_drift else "no drift")
    assert ("The normal items of this batch do not look like" in text) == normal_drift
    assert ("normal items score like the calibration images" in text) == (not normal_drift)


def test_not_a_run_folder(tmp_path):
    with pytest.raises(DataError, match="not a complete run folder"):
        report.build(tmp_path)


def test_formatting():
    assert html.fmt(None) == "n/a" and html.fmt(0.123456) == "0.1235" and html.fmt(0.0353534, ".4g") == "0.03535"
    assert html.pct(0.708) == "70.8%" and html.pct(None) == "n/a"
    assert html.pval(0.2000447) == "0.2" and html.pval(6.9e-56) == "&lt; 0.0001"


def test_mask_outline_is_the_region_boundary_whatever_its_polarity():
    mask = np.zeros((6, 6), bool)
    mask[2:4, 2:5] = True
    edge = examples._outline(mask)
    assert np.array_equal(edge, examples._outline(~mask))
    assert edge[2:4, 2:5].all() and not edge[0].any() and not edge[:, 0].any()
    assert not examples._outline(np.ones((6, 6), bool)).any()  # the image border is no boundary


def test_inverted_masks_are_pointed_out():
    examples = [{"mask": np.full(64, 255, np.uint8).tobytes()}, {"mask": None}]
    data = report.RunData(run={}, metrics={"pixel_auroc": 0.3}, scores={}, examples=examples)
    assert "probably inverted" in sections.mask_notice(data) and "0.7000" in sections.mask_notice(data)
    examples[0]["mask"] = np.r_[np.full(8, 255), np.zeros(56)].astype(np.uint8).tobytes()
    assert sections.mask_notice(data) == ""


def test_score_bins_go_logarithmic_only_across_decades():
    _, log = figures.score_bins(np.geomspace(1e-4, 1, 200))
    assert log
    bins, log = figures.score_bins(np.linspace(1, 2, 200))
    assert not log and bins[0] == 1 and bins[-1] == 2


def test_heat_map_is_named_for_what_the_model_kind_maps():
    from anomaly_ae.report.examples import _legend, heat_lut, map_words

    defect, error = map_words("draem"), map_words("ae")
    assert defect["title"] == "defect map" and error["title"] == "error map" and map_words(None) == error
    assert "Defect probability" in _legend(0.9, heat_lut(), False, defect)
    assert "large error" in _legend(0.9, heat_lut(), True, error) and "cyan" in _legend(0.9, heat_lut(), True, error)
    nearest = map_words("nearest")  # no network: the middle image is the nearest good one, not a reconstruction
    assert nearest["recon_title"] == "nearest good image" and "nearest good" in nearest["recon_alt"]
    assert error["recon_title"] == defect["recon_title"] == "recon&shy;struction"


def test_a_small_batch_shows_each_item_once_and_says_what_it_knows(pipeline, unlabelled):
    """9 items: the top flagged ones are not shown again as borderline; an unlabelled batch's
    histogram says nothing of normal and anomalous items; the dataset's classes are told apart from
    the normal ones the model learned."""
    import re

    folder = pipeline / "nine"
    folder.mkdir()
    for f in sorted((pipeline / "flat").glob("img0*.png"))[:9]:
        (folder / f.name).write_bytes(f.read_bytes())
    steps.score(folder, pipeline / "model", pipeline / "nine-first", report=False)
    median = float(np.median(pq.read_table(pipeline / "nine-first" / "scores.parquet")["score"].to_numpy()))
    steps.score(folder, pipeline / "model", pipeline / "nine-run", threshold=median)  # four or five flagged
    text, _ = page(pipeline / "nine-run")
    cards = re.findall(r'alt="Original image, item ranked (\d+)"', text)
    assert len(cards) == 9 and len(set(cards)) == 9, cards  # every item once: flagged, or borderline
    assert "anomalous items: hatched" not in text and "unlabelled" in text
    labelled_text, _ = page(pipeline / "run")
    assert "anomalous items: hatched" in labelled_text
    assert re.search(r"Classes of its training dataset</th><td>[^<]*\(normal: 0; the others were left out", labelled_text)


def test_a_single_file_is_reported_as_one_item(pipeline, unlabelled):
    """`score FILE`: one item, named as one, with its step drawn in the drift figure."""
    one = sorted((pipeline / "flat").glob("img0*.png"))[0]
    steps.score(one, pipeline / "model", pipeline / "one-run", threshold=0.0)  # flagged
    import re

    text, _ = page(pipeline / "one-run")
    assert re.search(r">1</\w+> item was flagged\.", text) and "items were flagged" not in text
    assert json.loads((pipeline / "one-run" / "run.json").read_text())["counts"]["scored"] == 1
