"""The inspection console over HTTP (Starlette's test client): pages, paging, thumbnails, reviews,
and what it refuses: paths out of its roots, requests without the token, bad review posts."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from anomaly_ae import reviews, steps

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def workspace(mnist_ds, mnist_model, mnist_folder, tmp_path_factory):
    """Two dataset runs of one pipeline and one folder run under a root, and a secret outside it."""
    root = tmp_path_factory.mktemp("console")
    for name in ("r1", "r2"):
        steps.score(mnist_ds, mnist_model, root / "line" / "runs" / name, split="test")
    steps.score(mnist_folder, mnist_model, root / "adhoc" / "folder-run", report=False)
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_text("not for the console")
    return {"root": root, "outside": outside, "dataset": mnist_ds}


def client(workspace, token=None):
    from starlette.testclient import TestClient

    from anomaly_ae.ui.app import create_app

    return TestClient(create_app([workspace["root"]], token=token, who="tester"), follow_redirects=False)


def keys(c) -> dict[str, str]:
    return {r["folder"].split("/")[-1]: r["key"] for r in c.get("/api/runs").json()}


def test_runs_page_lists_every_run_with_a_trend_per_pipeline(workspace):
    c = client(workspace)
    page = c.get("/")
    assert page.status_code == 200
    assert page.text.count('class="run-link"') >= 3
    assert page.text.count('<section class="pipeline"') >= 2  # line (2 runs) and adhoc (1)
    assert "flagged share" in page.text and "guaranteed false-positive rate" in page.text
    runs = c.get("/api/runs").json()
    assert [r["created"] for r in runs] == sorted((r["created"] for r in runs), reverse=True)
    assert all(r["scored"] == 1500 for r in runs)


def test_run_page_pages_sorts_and_filters_the_flagged_items(workspace):
    import pyarrow.parquet as pq

    c = client(workspace)
    k = keys(c)["r1"]
    flagged = [r for r in pq.read_table(workspace["root"] / "line/runs/r1/scores.parquet").to_pylist() if r["flagged"]]
    assert len(flagged) > 50, "needs more than one page of flagged items"
    first, second = c.get(f"/runs/{k}"), c.get(f"/runs/{k}?page=2")
    ids1 = _items(first.text)
    ids2 = _items(second.text)
    assert len(ids1) == 50 and ids2 and not set(ids1) & set(ids2)
    by_score = [r["image_id"] for r in sorted(flagged, key=lambda r: -r["score"])]
    assert ids1 == by_score[:50]
    asc = _items(c.get(f"/runs/{k}?sort=score&order=asc").text)
    assert asc == by_score[::-1][:50]
    cls = _items(c.get(f"/runs/{k}?class=3&show=all").text)
    threes = {r["image_id"] for r in pq.read_table(workspace["root"] / "line/runs/r1/scores.parquet").to_pylist()
              if r["class_name"] == "3"}
    assert cls and set(cls) <= threes
    assert c.get(f"/runs/{k}?sort=evil").status_code == 400
    assert 'rel="next"' in first.text or 'rel="prev"' in first.text  # the other run of the pipeline


def _items(html: str) -> list[str]:
    import re

    return re.findall(r'<tr class="item" data-item="([^"]+)"', html)


def test_thumbnails_and_heat_overlays_of_dataset_and_folder_runs(workspace):
    c = client(workspace)
    for run in ("r1", "folder-run"):
        k = keys(c)[run]
        item = _items(c.get(f"/runs/{k}").text)[0]
        for q in ("", "?overlay=1"):
            r = c.get(f"/runs/{k}/thumb/{item}{q}")
            assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.content[:4] == b"\x89PNG"
        assert c.get(f"/runs/{k}/thumb/nope").status_code == 404
    report = c.get(f"/runs/{keys(c)['r1']}/files/report.html")
    assert report.status_code == 200 and "<html" in report.text.lower()


def test_a_review_is_stored_and_bad_posts_change_nothing(workspace):
    c = client(workspace)
    k = keys(c)["r2"]
    run = workspace["root"] / "line/runs/r2"
    item = _items(c.get(f"/runs/{k}").text)[0]
    ok = c.post(f"/api/runs/{k}/reviews", json={"item": item, "decision": "false_alarm", "note": "dust"})
    assert ok.status_code == 200 and ok.json()["counts"]["false_alarm"] == 1
    before = (run / "reviews.parquet").read_bytes()
    bad = [
        c.post(f"/api/runs/{k}/reviews", json={"item": "../../etc/passwd", "decision": "defect"}),
        c.post(f"/api/runs/{k}/reviews", json={"item": item, "decision": "maybe"}),
        c.post(f"/api/runs/{k}/reviews", json=["not", "an", "object"]),
        c.post(f"/api/runs/{k}/reviews", content=json.dumps({"item": item, "decision": "defect"}),
               headers={"content-type": "text/plain"}),  # what a form on another site could send
        c.post("/api/runs/000000000000/reviews", json={"item": item, "decision": "defect"}),
    ]
    assert [r.status_code for r in bad] == [404, 400, 400, 415, 404]
    assert (run / "reviews.parquet").read_bytes() == before
    page = c.get(f"/runs/{k}").text
    assert 'class="badge false_alarm"' in page and 'value="dust"' in page
    assert reviews.counts(reviews.latest(run))["false_alarm"] == 1


@pytest.mark.parametrize("path", [
    "/runs/../../etc/passwd", "/runs/%2e%2e/%2e%2e/etc/passwd", "/runs/{k}/files/..%2f..%2f..%2fetc%2fpasswd",
    "/runs/{k}/files/run.json", "/runs/{k}/files/%2e%2e", "/static/../app.py", "/static/%2e%2e/app.py",
    "/static/..%2f..%2fcli.py", "/runs/{k}/thumb/..%2f..%2fsecret.txt",
])
def test_paths_out_of_the_roots_are_refused(workspace, path):
    c = client(workspace)
    r = c.get(path.format(k=keys(c)["r1"]))
    assert 400 <= r.status_code < 500
    assert "not for the console" not in r.text and "root:" not in r.text and "import" not in r.text


def test_links_out_of_the_root_are_not_followed(workspace, tmp_path):
    root = workspace["root"]
    link = root / "linked-run"
    report_link = root / "line" / "runs" / "r1" / "report.html"
    saved = report_link.read_bytes()
    try:
        os.symlink(workspace["outside"], link)  # a folder link leading out: never walked
        report_link.unlink()
        os.symlink(workspace["outside"] / "secret.txt", report_link)  # a file link leading out: never served
        c = client(workspace)
        assert "linked-run" not in c.get("/api/runs").text
        r = c.get(f"/runs/{keys(c)['r1']}/files/report.html")
        assert r.status_code == 404 and "not for the console" not in r.text
    finally:
        link.unlink(missing_ok=True)
        report_link.unlink(missing_ok=True)
        report_link.write_bytes(saved)


def test_with_a_token_every_request_needs_it(workspace):
    c = client(workspace, token=TOKEN)
    k = keys(client(workspace))["r2"]
    run = workspace["root"] / "line/runs/r2"
    before = reviews.read(run).num_rows
    assert c.get("/").status_code == 401
    assert c.get(f"/runs/{k}/files/report.html").status_code == 401
    assert c.get("/?token=wrong").status_code == 401
    item = sorted(reviews.item_ids(run))[0]
    assert c.post(f"/api/runs/{k}/reviews", json={"item": item, "decision": "defect"}).status_code == 401
    assert reviews.read(run).num_rows == before
    assert c.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    first = c.get(f"/?token={TOKEN}")  # the printed URL: sets a cookie and drops the token from the URL
    assert first.status_code == 303 and "token" not in first.headers["location"]
    assert c.get("/").status_code == 200  # the cookie carries it now


def test_ui_refuses_other_machines_without_a_token(workspace):
    from flows.cli import app

    r = CliRunner().invoke(app, ["ui", "--root", str(workspace["root"]), "--host", "0.0.0.0"],
                           env={"ANOMALY_AE_UI_TOKEN": ""})
    assert r.exit_code != 0 and "token" in str(r.exception or r.output).lower()
    r = CliRunner().invoke(app, ["ui", "--root", str(workspace["root"] / "missing")])
    assert r.exit_code != 0 and "No such folder" in str(r.exception or r.output)


def test_model_page_shows_the_layers_latent_view_and_reconstructions(workspace, mnist_model):
    import re
    import shutil

    from anomaly_ae.detector import AutoencoderDetector

    c = client(workspace)
    assert c.get(f"/runs/{keys(c)['r1']}/model").status_code == 404  # r1's model lies outside the root
    # A pipeline's output folder holds its model beside its runs: the console shows that model.
    root = workspace["root"]
    shutil.copytree(mnist_model, root / "line2" / "model")
    steps.score(workspace["dataset"], root / "line2" / "model", root / "line2" / "runs" / "r3", split="test")
    c = client(workspace)
    k3 = keys(c)["r3"]
    page = c.get(f"/runs/{k3}/model")
    assert page.status_code == 200
    det = AutoencoderDetector.load(root / "line2" / "model")
    rows = re.findall(r'<td class="n">([\d,]+)</td></tr>', page.text)
    assert rows and sum(int(r.replace(",", "")) for r in rows) == sum(p.numel() for p in det.model_.parameters())
    assert page.text.count("<circle") >= 100 and 'class="flagged"' in page.text
    assert 'alt="reconstruction"' in page.text and 'alt="training curve"' in page.text
    assert f'href="/runs/{k3}/model"' in c.get(f"/runs/{k3}").text


def test_model_page_of_the_nearest_kind_says_what_it_keeps(mnist_ds, tmp_path):
    """A model with no network (the nearest kind): its page says how many images it keeps, not epochs."""
    from starlette.testclient import TestClient

    from anomaly_ae.config import DetectorConfig, ModelConfig
    from anomaly_ae.ui.app import create_app

    line = tmp_path / "near"
    trained = steps.train(mnist_ds, line / "model", normal=["0"], config=DetectorConfig(model=ModelConfig(kind="nearest")))
    steps.score(mnist_ds, line / "model", line / "runs" / "r1", split="test", report=False)
    c = TestClient(create_app([tmp_path], who="tester"), follow_redirects=False)
    [run] = c.get("/api/runs").json()
    page = c.get(f"/runs/{run['key']}/model")
    assert page.status_code == 200
    assert f"{trained['n_train']} training images, {trained['kept']} of them kept" in page.text and "epochs on" not in page.text
    assert 0 < trained["kept"] <= trained["n_train"] and trained["epochs"] == 0


def test_an_auroc_that_counts_training_images_is_marked(workspace, tmp_path):
    """A run whose metrics count images the model trained on (run.json's model_saw) shows it by its
    AUROC on the runs page and the run page; the other runs do not."""
    import shutil

    from starlette.testclient import TestClient

    from anomaly_ae.ui.app import create_app

    run_dir = tmp_path / "line" / "runs" / "own-data"
    shutil.copytree(workspace["root"] / "line" / "runs" / "r1", run_dir)
    run = json.loads((run_dir / "run.json").read_text())
    run["model_saw"] = {"split": "train", "n_items": 350}
    (run_dir / "run.json").write_text(json.dumps(run))
    shutil.copytree(workspace["root"] / "line" / "runs" / "r2", tmp_path / "line" / "runs" / "r2")
    c = TestClient(create_app([tmp_path], who="tester"), follow_redirects=False)
    page = c.get("/").text
    assert page.count("counts 350 items the model trained or calibrated on") == 1
    k = {r["folder"].split("/")[-1]: r["key"] for r in c.get("/api/runs").json()}
    assert "counts\n350 items the model trained or calibrated on" in c.get(f"/runs/{k['own-data']}").text
    assert "trained or calibrated on" not in c.get(f"/runs/{k['r2']}").text


def test_damaged_files_of_a_run_are_said_in_a_line_not_a_server_error(workspace, mnist_model, tmp_path):
    """A damaged reviews table, scores table or run.json: the run's page and the review API say
    which file, the review workflow's commands exit with one line, and the runs page still opens."""
    import shutil

    import pyarrow.parquet as pq
    from starlette.testclient import TestClient

    from anomaly_ae.errors import DataError
    from anomaly_ae.ui.app import create_app

    root = tmp_path / "root"
    src = workspace["root"] / "adhoc" / "folder-run"
    for name in ("badreviews", "badscores", "badjson"):
        shutil.copytree(src, root / name)
    ids = pq.read_table(src / "scores.parquet", columns=["image_id"])["image_id"]
    (root / "badreviews" / "reviews.parquet").write_bytes(b"garbage")
    (root / "badscores" / "scores.parquet").write_bytes(b"junk")
    (root / "badjson" / "run.json").write_text('{"run_id": ')
    c = TestClient(create_app([root], who="tester"), follow_redirects=False)
    assert c.get("/").status_code == 200
    k = {r["folder"].split("/")[-1]: r["key"] for r in c.get("/api/runs").json()}
    page = c.get(f"/runs/{k['badscores']}")
    assert page.status_code == 500 and "scores.parquet is not a readable Parquet file" in page.text
    post = c.post(f"/api/runs/{k['badreviews']}/reviews", json={"item": ids[0].as_py(), "decision": "defect"})
    assert post.status_code == 400 and "reviews.parquet is not a readable Parquet file" in post.json()["error"]
    model = tmp_path / "m"
    shutil.copytree(mnist_model, model)
    with pytest.raises(DataError, match="reviews.parquet is not a readable Parquet file"):
        steps.calibrate(model, reviews=[root / "badreviews"])
    with pytest.raises(DataError, match=r"run.json is damaged: it is not valid JSON"):
        steps.calibrate(model, reviews=[root / "badjson"])
    with pytest.raises(DataError, match="scores.parquet is not a readable Parquet file"):
        steps.report(root / "badscores")


def test_a_labelled_runs_drift_is_judged_on_its_normal_items_as_the_report_does(workspace):
    """The console's drift badge and KS trend agree with the report and the command line: with
    labels, anomalies are expected to score high, so the normal items are judged."""
    runs = {r["folder"].split("/")[-1]: r for r in client(workspace).get("/api/runs").json()}
    run_dir = workspace["root"] / "line" / "runs" / "r1"
    normal_only = json.loads((run_dir / "metrics.json").read_text())["drift_normal_only"]
    whole = json.loads((run_dir / "run.json").read_text())["drift"]
    assert whole["ks_statistic"] != normal_only["ks_statistic"]  # the batch holds anomalies: they differ
    assert runs["r1"]["drift"] == normal_only["drift"] and runs["r1"]["ks"] == pytest.approx(normal_only["ks_statistic"])


def test_a_runs_page_names_the_files_it_could_not_score(mnist_model, mnist_folder, tmp_path):
    import shutil

    from starlette.testclient import TestClient

    from anomaly_ae.ui.app import create_app

    folder = tmp_path / "batch"
    folder.mkdir()
    for f in sorted((mnist_folder / "0").glob("*.png"))[:5]:
        shutil.copy(f, folder / f.name)
    (folder / "broken.png").write_bytes(b"not an image")
    steps.score(folder, mnist_model, tmp_path / "root" / "run", report=False)
    c = TestClient(create_app([tmp_path / "root"], who="tester"), follow_redirects=False)
    page = c.get(f"/runs/{c.get('/api/runs').json()[0]['key']}")
    assert "1 file could not be scored" in page.text
    assert "<code>broken.png</code>: not a recognised image format" in page.text


def test_runs_under_a_root_that_is_a_runs_folder_are_grouped_under_its_name(workspace):
    from anomaly_ae.ui.catalog import Catalog

    root = workspace["root"] / "line" / "runs"  # `ui --root .../runs`: no folder above it is shown
    assert {r.pipeline for r in Catalog([root]).refresh()} == {"runs"}
