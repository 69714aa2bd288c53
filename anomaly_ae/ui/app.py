"""The console's web application (Starlette, Jinja2; both come with Prefect): runs, a run's
flagged items with review, and the files a run wrote. See docs/console.md.

Every URL names a run by its catalog key and an item by its id in that run's scores; nothing a
request carries becomes a path. With a token, every request must carry it (a bearer header, the
cookie the first request with ``?token=`` sets, or that query parameter). Review decisions are
accepted only as JSON posts, which a page of another site cannot send without the browser asking
first (and this server never says yes).
"""

from __future__ import annotations

import functools
import hmac
import logging
import math
import threading
from pathlib import Path
from urllib.parse import urlencode

import numpy as np

from anomaly_ae import reviews
from anomaly_ae.errors import AnomalyAEError, BusyError
from anomaly_ae.fsio import read_json
from anomaly_ae.ui.catalog import Catalog, Run
from anomaly_ae.ui.charts import trend_svg
from anomaly_ae.ui.modelview import model_folder as _model_folder

log = logging.getLogger(__name__)

PAGE_SIZE = 50
SORTS = ("score", "p_value", "rank")
SHOWS = ("flagged", "all", "reviewed", "unreviewed")
TOKEN_COOKIE = "anomaly_ae_token"
THUMB_CACHE = 2048  # thumbnails kept in memory


def create_app(roots: list[str | Path], token: str | None = None, who: str = ""):
    """The console over the runs under `roots`; `token`, when given, guards every request."""
    from jinja2 import Environment, PackageLoader, select_autoescape
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    catalog = Catalog(roots)
    env = Environment(loader=PackageLoader("anomaly_ae.ui", "templates"), autoescape=select_autoescape())
    env.filters["pct"] = lambda v: "" if v is None else f"{100 * v:.2f}%"
    env.globals["qs"] = lambda params, **more: urlencode({**params, **more})
    env.filters["num"] = lambda v, f=".3f": "" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, f)
    items = _Items()
    console = _Console(catalog, env, items, who)
    routes = [
        Route("/", console.runs_page),
        Route("/runs/{key}", console.run_page),
        Route("/runs/{key}/model", console.model_page),
        Route("/runs/{key}/files/{name}", console.run_file),
        Route("/runs/{key}/thumb/{item}", console.thumb),
        Route("/api/runs", console.runs_json),
        Route("/api/runs/{key}/reviews", console.review, methods=["POST"]),
        Mount("/static", StaticFiles(packages=[("anomaly_ae.ui", "static")]), name="static"),
    ]
    middleware = [Middleware(_TokenGuard, token=token)] if token else []
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={AnomalyAEError: _damaged})
    app.state.catalog = catalog
    return app


async def _damaged(request, exc: AnomalyAEError):
    """A run's file that cannot be read (damaged, or changed by something else): its message, as
    JSON for the API and as text for a page, instead of a bare server error."""
    from starlette.responses import JSONResponse, PlainTextResponse

    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": str(exc)}, status_code=500)
    return PlainTextResponse(f"This run cannot be shown: {exc}", status_code=500)


class _TokenGuard:
    """Pure ASGI middleware: 401 for any request without the token."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send):
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse, RedirectResponse

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope)
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        given = given or request.cookies.get(TOKEN_COOKIE, "")
        query = request.query_params.get("token", "")
        if query and hmac.compare_digest(query.encode(), self.token.encode()):
            # Once with the token in the URL: from then on a cookie carries it, and the URL drops it.
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            url = request.url.replace(query=urlencode(rest))
            response = RedirectResponse(str(url), status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            return await response(scope, receive, send)
        if not given or not hmac.compare_digest(given.encode(), self.token.encode()):
            return await PlainTextResponse("A token is needed: open the URL `anomaly-ae ui` printed.",
                                           status_code=401)(scope, receive, send)
        return await self.app(scope, receive, send)


class _Items:
    """A run's scores as arrays, cached while its files stay the same."""

    def __init__(self):
        self._cache: dict[str, tuple] = {}
        self._lock = threading.Lock()

    def get(self, run: Run) -> dict:
        from anomaly_ae.schema import read_parquet

        with self._lock:
            hit = self._cache.get(run.key)
            if hit and hit[0] == run.stamp:
                return hit[1]
        t = read_parquet(run.dir / "scores.parquet",
                          columns=["image_id", "path", "class_name", "is_anomaly", "score", "p_value", "flagged", "rank"])
        cols = {c: t[c].to_numpy(zero_copy_only=False) for c in t.column_names}
        cols["flagged"] = cols["flagged"].astype(bool)
        cols["ids"] = set(cols["image_id"].tolist())
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items() if k != run.key}
            self._cache[run.key] = (run.stamp, cols)
            while len(self._cache) > 16:
                self._cache.pop(next(iter(self._cache)))
        return cols


class _Console:
    def __init__(self, catalog: Catalog, env, items: _Items, who: str):
        self.catalog, self.env, self.items, self.who = catalog, env, items, who

    def _html(self, name: str, status: int = 200, **context):
        from starlette.responses import HTMLResponse

        return HTMLResponse(self.env.get_template(name).render(**context), status_code=status)

    def _run(self, request) -> Run:
        from starlette.exceptions import HTTPException

        run = self.catalog.get(request.path_params["key"])
        if run is None:
            raise HTTPException(404, "No such run under the console's folders.")
        return run

    async def runs_page(self, request):
        runs = self.catalog.refresh()
        pipelines: dict[str, list[Run]] = {}
        for r in runs:
            pipelines.setdefault(r.pipeline, []).append(r)
        charts = {name: trend_svg([r.summary for r in reversed(group)]) for name, group in pipelines.items()}
        return self._html("runs.html", pipelines=pipelines, charts=charts, roots=self.catalog.roots)

    async def runs_json(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse([{"key": r.key, "pipeline": r.pipeline, "folder": str(r.dir), **r.summary}
                             for r in self.catalog.refresh()])

    async def run_page(self, request):
        from starlette.exceptions import HTTPException

        from anomaly_ae.schema import first_rejects

        run = self._run(request)
        q = request.query_params
        sort = q.get("sort", "score")
        show = q.get("show", "flagged")
        if sort not in SORTS or show not in SHOWS:
            raise HTTPException(400, f"sort is one of {SORTS}, show one of {SHOWS}.")
        try:
            page = max(1, int(q.get("page", "1")))
        except ValueError:
            raise HTTPException(400, "page is a number.") from None
        cls = q.get("class", "")
        cols = self.items.get(run)
        decided = reviews.latest(run.dir)
        keep = np.ones(len(cols["score"]), bool)
        if show == "flagged":
            keep &= cols["flagged"]
        elif show in ("reviewed", "unreviewed"):
            known = np.array([i in decided for i in cols["image_id"]], bool)
            keep &= known if show == "reviewed" else ~known
        classes = sorted({str(c) for c in cols["class_name"] if c is not None})
        if cls:
            keep &= np.array([str(c) == cls for c in cols["class_name"]], bool)
        idx = np.flatnonzero(keep)
        ascending = q.get("order", "desc" if sort == "score" else "asc") == "asc"
        order = np.argsort(cols[sort][idx].astype(np.float64), kind="stable")
        idx = idx[order if ascending else order[::-1]]
        pages = max(1, -(-len(idx) // PAGE_SIZE))
        page = min(page, pages)
        shown = idx[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
        rows = [{"id": cols["image_id"][i], "path": cols["path"][i], "class": cols["class_name"][i],
                 "is_anomaly": cols["is_anomaly"][i], "score": float(cols["score"][i]),
                 "p_value": float(cols["p_value"][i]), "flagged": bool(cols["flagged"][i]),
                 "rank": int(cols["rank"][i]), "review": decided.get(cols["image_id"][i])} for i in shown]
        prev_run, next_run = self.catalog.neighbours(run)
        params = {"sort": sort, "show": show, "class": cls, "order": "asc" if ascending else "desc"}
        return self._html("run.html", run=run, rows=rows, page=page, pages=pages, total=len(idx), params=params,
                          classes=classes, prev_run=prev_run, next_run=next_run, sorts=SORTS, shows=SHOWS,
                          counts=reviews.counts(decided), has_report=run.file("report.html") is not None,
                          has_model=_model_folder(run.summary["model"], self.catalog.roots) is not None,
                          flow_run=run.summary["flow_run_url"],
                          rejects=first_rejects(run.dir / "rejects.parquet", MAX_REJECTS_SHOWN))

    async def model_page(self, request):
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException

        from anomaly_ae.ui.modelview import model_folder, model_view

        run = self._run(request)
        folder = model_folder(run.summary["model"], self.catalog.roots)
        if folder is None:
            raise HTTPException(404, "The model that scored this run is not under the console's folders "
                                     "(start `anomaly-ae ui` with a --root that holds it).")
        st = (folder / "model.pt").stat()
        view = await run_in_threadpool(model_view, run.dir, folder, (run.stamp, st.st_mtime_ns, st.st_size))
        return self._html("model.html", run=run, view=view)

    async def run_file(self, request):
        from starlette.exceptions import HTTPException
        from starlette.responses import FileResponse

        run = self._run(request)
        f = run.file(request.path_params["name"])
        if f is None:
            raise HTTPException(404, "The run has no such file.")
        return FileResponse(f)

    async def thumb(self, request):
        from starlette.concurrency import run_in_threadpool
        from starlette.exceptions import HTTPException
        from starlette.responses import Response

        run = self._run(request)
        item = request.path_params["item"]
        if item not in self.items.get(run)["ids"]:
            raise HTTPException(404, "The run scored no such item.")
        overlay = request.query_params.get("overlay") == "1"
        png = await run_in_threadpool(_thumbnail, run.dir, run.stamp, item, overlay)
        if png is None:
            raise HTTPException(404, "The item's image can no longer be read.")
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    async def review(self, request):
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse

        run = self._run(request)
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "Send the decision as JSON (application/json)."}, status_code=415)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "The body is not JSON."}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "Send an object: {item, decision, note}."}, status_code=400)
        item, decision, note = body.get("item"), body.get("decision"), body.get("note") or ""
        if not isinstance(item, str) or item not in self.items.get(run)["ids"]:
            return JSONResponse({"error": f"{run.summary['id']} scored no item {item!r}."}, status_code=404)
        try:
            row = await run_in_threadpool(reviews.record, run.dir, item, decision, note, self.who,
                                          self.items.get(run)["ids"])
        except BusyError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except AnomalyAEError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"review": row, "counts": reviews.counts(reviews.latest(run.dir))})


# Rejected files a run's page names (the report and rejects.parquet hold them all).
MAX_REJECTS_SHOWN = 20


@functools.lru_cache(maxsize=THUMB_CACHE)
def _thumbnail(run_dir: Path, stamp: tuple, item: str, overlay: bool) -> bytes | None:
    """The item's image as PNG, or its heat map over it (the map alone when the image is gone)."""
    from anomaly_ae.report.examples import heat_lut, heat_overlay, png_bytes
    from anomaly_ae.runitems import item_pixels

    pixels = item_pixels(run_dir, [item]).get(item)
    if not overlay:
        return None if pixels is None else png_bytes(pixels)
    found = _error_map(run_dir, item)
    if found is None:
        return None if pixels is None else png_bytes(pixels)
    emap, vmax = found
    base = pixels if pixels is not None and pixels.shape[:2] == emap.shape else np.zeros((*emap.shape, 1), np.uint8)
    return png_bytes(heat_overlay(base, emap, vmax, heat_lut()))


def _error_map(run_dir: Path, item: str) -> tuple[np.ndarray, float] | None:
    """(the item's error map, the run's heat scale) from error_maps.parquet, or None."""
    import pyarrow.parquet as pq

    index = _map_index(run_dir, _mtime(run_dir / "error_maps.parquet"))
    if index is None or item not in index[0]:
        return None
    group, row = index[0][item]
    pf = pq.ParquetFile(run_dir / "error_maps.parquet")
    blob = pf.read_row_group(group, columns=["error_map"])["error_map"][row].as_py()
    shape = index[2]
    return np.frombuffer(blob, dtype="<f2").reshape(shape), index[1]


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except OSError:
        return 0


@functools.lru_cache(maxsize=16)
def _map_index(run_dir: Path, mtime: int):
    """(item -> (row group, row), heat scale, map shape) of a run's error maps, or None."""

    import pyarrow.parquet as pq

    f = run_dir / "error_maps.parquet"
    if not mtime:
        return None
    pf = pq.ParquetFile(f)
    where, sample = {}, []
    for g in range(pf.num_row_groups):
        ids = pf.read_row_group(g, columns=["image_id"])["image_id"].to_pylist()
        where.update({i: (g, k) for k, i in enumerate(ids)})
        if len(sample) < 32:
            maps = pf.read_row_group(g, columns=["error_map"])["error_map"].to_pylist()[: 32 - len(sample)]
            sample += [np.frombuffer(b, dtype="<f2").astype(np.float32) for b in maps]
    if not where:
        return None
    shape = tuple(read_json(run_dir / "run.json")["model"]["image_shape"][:2])
    vmax = float(np.quantile(np.concatenate(sample), 0.995)) if sample else 1.0
    return where, max(vmax, 1e-6), shape
