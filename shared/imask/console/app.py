"""The console's web app: FastAPI, HTML pages rendered from the package's templates (Jinja2, autoescaped), a
little vanilla JavaScript from the package's static folder for refreshing figures and the preview. Nothing is
loaded from elsewhere (Content-Security-Policy: 'self' only).

Every page and API call needs an operator (session cookie or Bearer key, see `auth`); every change (POST) needs
the caller's CSRF token as well. Pages ask their sources on each request; a source that does not answer is named
on its page and the rest of the page still shows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import Counter
from starlette.concurrency import run_in_threadpool

from imask.console import pages
from imask.console.auth import COOKIE, Operator, OperatorKeys, Sessions
from imask.console.live import LiveState
from imask.console.sources import Alertmanager, Experiments, Features, IngestAdmin, Models, Unavailable
from imask.frames.ids import check_camera_id

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
S = TypeVar("S")
T = TypeVar("T")
# What a page shows when a source has nothing to give (typed, so read_source's result is).
ROWS = list[dict[str, Any]]
DELIVERIES = dict[str, dict[str, float]]
CONFIRMED = dict[tuple[str, str], dict[str, list[str]]]
CONFIRMED_WINDOW_S = 86400.0  # the alerts page shows the inbox's confirmed deliveries of the last day
CHANGES = Counter("imask_console_changes_total", "Changes made through the console", ["action", "outcome"])
REFUSED = Counter("imask_console_refused_total", "Console requests refused", ["reason"])
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class ConsoleSources:
    ingest: IngestAdmin
    experiments: Experiments | None = None
    features: Features | None = None
    alertmanager: Alertmanager | None = None
    models: Models | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)
    env.filters["num"] = lambda v, fmt="{:.1f}": "–" if v is None else (fmt.format(v) if isinstance(
        v, (int, float)) else str(v))
    env.filters["utc"] = lambda ts: time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(ts)))
    return env


def create_app(keys: OperatorKeys, sessions: Sessions, live: LiveState, sources: ConsoleSources,
               refresh_ms: int = 1000, secure_cookie: bool = False) -> FastAPI:
    app = FastAPI(title="imask console", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = _templates()

    @app.middleware("http")
    async def headers(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            if name != "Cache-Control" or not request.url.path.startswith("/static/"):
                response.headers.setdefault(name, value)
        return response

    def operator(request: Request) -> Operator | None:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            key = auth[7:].strip()
            name = keys.check(key)
            return sessions.for_key(name, key) if name else None
        cookie = request.cookies.get(COOKIE, "")
        return sessions.read(cookie) if cookie else None

    def render(name: str, who: Operator, status: int = 200, **context: Any) -> HTMLResponse:
        html = templates.get_template(name).render(operator=who.name, csrf=sessions.csrf(who), page=name[:-5],
                                                   refresh_ms=refresh_ms, **context)
        return HTMLResponse(html, status)

    def signed_in(request: Request, api: bool = False) -> Operator | Response:
        who = operator(request)
        if who is not None:
            return who
        REFUSED.labels("no_token").inc()
        if api:
            return JSONResponse({"error": "operator token required (sign in, or Authorization: Bearer ...)"}, 401)
        return RedirectResponse("/login?next=" + quote(request.url.path), 303)

    async def change(request: Request) -> tuple[Operator, dict[str, str]] | Response:
        """The operator and form of a change, or the refusal: no operator 401, no or wrong CSRF token 403."""
        who = operator(request)
        if who is None:
            REFUSED.labels("no_token").inc()
            return JSONResponse({"error": "operator token required"}, 401)
        form = {k: str(v) for k, v in (await request.form()).items()}
        given = request.headers.get("x-csrf-token") or form.get("csrf", "")
        if not sessions.check_csrf(who, given):
            REFUSED.labels("csrf").inc()
            return JSONResponse({"error": "missing or wrong CSRF token"}, 403)
        return who, form

    def back(path: str, message: str, ok: bool = True) -> RedirectResponse:
        return RedirectResponse(f"{path}?{'msg' if ok else 'err'}={quote(message[:300])}", 303)

    # -- signing in ------------------------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    async def login_page(next: str = "/cameras", err: str = "") -> HTMLResponse:
        html = templates.get_template("login.html").render(next=_local(next), err=err)
        return HTMLResponse(html, 401 if err else 200)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await request.form()
        name = keys.check(str(form.get("token", "")))
        target = _local(str(form.get("next", "/cameras")))
        if name is None:
            REFUSED.labels("bad_token").inc()
            log.warning("console sign-in refused", extra={"client": request.client.host if request.client else ""})
            html = templates.get_template("login.html").render(next=target, err="wrong token")
            return HTMLResponse(html, 401)
        response = RedirectResponse(target, 303)
        response.set_cookie(COOKIE, sessions.issue(name), max_age=int(sessions.ttl_s), httponly=True,
                            samesite="strict", secure=secure_cookie, path="/")
        log.info("operator signed in", extra={"operator": name})
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        got = await change(request)
        if isinstance(got, Response):
            return got
        response = RedirectResponse("/login", 303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/")
    async def index() -> Response:
        return RedirectResponse("/cameras", 303)

    # -- cameras ---------------------------------------------------------------------------------------------

    async def camera_list() -> tuple[list[dict[str, Any]], str]:
        listed, error = await read_source(sources.ingest, lambda ingest: ingest.cameras(), ROWS(), "")
        return pages.camera_rows(listed, live), error

    @app.get("/cameras", response_class=HTMLResponse)
    async def cameras_page(request: Request, msg: str = "", err: str = "") -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        rows, error = await camera_list()
        return render("cameras.html", who, rows=rows, source_error=error, msg=msg, err=err,
                      ingest_url=sources.ingest.url)

    @app.get("/api/cameras")
    async def cameras_api(request: Request) -> Response:
        who = signed_in(request, api=True)
        if isinstance(who, Response):
            return who
        rows, error = await camera_list()
        return JSONResponse({"cameras": rows, "error": error})

    async def ingest_change(action: str, done: int, call: Callable[..., tuple[int, Any]], *args: Any
                            ) -> tuple[int, str]:
        """One change through the ingest's admin API, counted: its status, and what to tell the operator when it
        was refused ("" when it was done)."""
        try:
            code, answer = await run_in_threadpool(call, *args)
        except Unavailable as exc:
            code, answer = 503, {"error": str(exc)}
        CHANGES.labels(action, "ok" if code == done else "refused").inc()
        if code == done:
            return code, ""
        return code, f"ingest refused ({code}): {answer.get('error', answer) if isinstance(answer, dict) else answer}"

    @app.post("/cameras")
    async def add_camera(request: Request) -> Response:
        got = await change(request)
        if isinstance(got, Response):
            return got
        who, form = got
        fields: dict[str, Any] = {"camera_id": form.get("camera_id", "").strip(), "url": form.get("url", "").strip()}
        if form.get("fps", "").strip():
            try:
                fields["fps"] = float(form["fps"])
            except ValueError:
                return back("/cameras", f"fps {form['fps']!r} is not a number", ok=False)
        code, refusal = await ingest_change("add_camera", 201, sources.ingest.add, fields)
        log.info("camera add", extra={"operator": who.name, "camera": fields["camera_id"], "status": code})
        return back("/cameras", refusal or f"camera {fields['camera_id']} added", not refusal)

    @app.post("/cameras/{camera_id}/remove")
    async def remove_camera(camera_id: str, request: Request) -> Response:
        got = await change(request)
        if isinstance(got, Response):
            return got
        who, _ = got
        code, refusal = await ingest_change("remove_camera", 200, sources.ingest.remove, camera_id)
        log.info("camera remove", extra={"operator": who.name, "camera": camera_id, "status": code})
        return back("/cameras", refusal or f"camera {camera_id} removed", not refusal)

    async def detail(camera_id: str) -> tuple[dict[str, Any], list[str]]:
        errors = []
        status = None
        try:
            status = await run_in_threadpool(sources.ingest.camera, camera_id)
        except Unavailable as exc:
            errors.append(str(exc))
        features = None
        if sources.features is not None:
            try:
                features = pages.feature_rows(await run_in_threadpool(sources.features.camera, camera_id))
            except Unavailable as exc:
                errors.append(str(exc))
        return pages.camera_detail(camera_id, status, live, features), errors

    @app.get("/cameras/{camera_id}", response_class=HTMLResponse)
    async def camera_page(camera_id: str, request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        if not _valid_id(camera_id):
            return HTMLResponse("no such camera", 404)
        data, errors = await detail(camera_id)
        return render("camera.html", who, camera=data, errors=errors, features_on=sources.features is not None)

    @app.get("/api/cameras/{camera_id}")
    async def camera_api(camera_id: str, request: Request) -> Response:
        who = signed_in(request, api=True)
        if isinstance(who, Response):
            return who
        data, errors = await detail(camera_id)
        return JSONResponse({**data, "errors": errors})

    @app.get("/cameras/{camera_id}/preview")
    async def preview(camera_id: str, request: Request) -> Response:
        """The newest masked picture of the camera (frames.masked; a fail-closed frame is the grey frame the
        worker published, and says so in X-Imask-Fail-Closed)."""
        who = signed_in(request, api=True)
        if isinstance(who, Response):
            return who
        picture = live.picture(camera_id)
        if picture is None:
            return JSONResponse({"error": f"no masked frame of {camera_id!r} seen yet"}, 404)
        return Response(picture.data, media_type=picture.content_type, headers={
            "X-Imask-Seq": str(picture.seq), "X-Imask-Fail-Closed": "1" if picture.fail_closed else "0",
            "X-Imask-Fail-Closed-Reason": picture.fail_closed_reason[:200]})

    # -- experiments -----------------------------------------------------------------------------------------

    @app.get("/experiments", response_class=HTMLResponse)
    async def experiments_page(request: Request, msg: str = "", err: str = "") -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        summaries, error = await read_source(
            sources.experiments, lambda router: [pages.experiment_summary(r) for r in router.summaries()], ROWS(),
            "no router configured (IMASK_CONSOLE_ROUTER_ADDRESS)")
        return render("experiments.html", who, experiments=summaries, source_error=error, msg=msg, err=err)

    @app.post("/experiments/{name}/{action}")
    async def experiment_change(name: str, action: str, request: Request) -> Response:
        got = await change(request)
        if isinstance(got, Response):
            return got
        who, form = got
        if action not in ("promote", "rollback") or sources.experiments is None:
            return JSONResponse({"error": f"no action {action!r}"}, 404)
        reason = f"{form.get('reason', '').strip() or 'from the console'} (by {who.name})"
        try:
            status = await run_in_threadpool(sources.experiments.change, action, name, reason)
        except Unavailable as exc:
            CHANGES.labels(action, "refused").inc()
            return back("/experiments", f"{action} {name}: {exc}", ok=False)
        CHANGES.labels(action, "ok").inc()
        log.info("experiment change", extra={"operator": who.name, "experiment": name, "action": action})
        state = pages.EXPERIMENT_STATES.get(str(status.get("state", "")), str(status.get("state", "")))
        return back("/experiments", f"{name}: {action} done, now {state}")

    # -- alerts and models -----------------------------------------------------------------------------------

    @app.get("/alerts", response_class=HTMLResponse)
    async def alerts_page(request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        (alerts, deliveries, confirmed), error = await read_source(
            sources.alertmanager,
            lambda am: (am.alerts(), am.deliveries(), am.confirmed(time.time() - CONFIRMED_WINDOW_S)),
            (ROWS(), DELIVERIES(), CONFIRMED()),
            "")
        rows = pages.alert_rows(alerts, live.alerts(), confirmed)
        return render("alerts.html", who, open=rows["open"], recent=rows["recent"], source_error=error,
                      deliveries=deliveries, inbox=bool(sources.alertmanager and sources.alertmanager.inbox_dir),
                      alertmanager=sources.alertmanager.url if sources.alertmanager else "")

    @app.get("/models", response_class=HTMLResponse)
    async def models_page(request: Request) -> Response:
        who = signed_in(request)
        if isinstance(who, Response):
            return who
        rows, error = await read_source(sources.models, lambda models: pages.model_rows(*models.read()), ROWS(),
                                        "no model registry configured")
        return render("models.html", who, models=rows, source_error=error,
                      model_name=sources.models.name if sources.models else "")

    return app


async def read_source(source: S | None, read: Callable[[S], T], empty: T, missing: str) -> tuple[T, str]:
    """A page's data from one source, read off the event loop, and what went wrong: `empty` with `missing` when the
    console has no such source, `empty` with the reason when it does not answer (the page shows the rest)."""
    if source is None:
        return empty, missing
    try:
        return await run_in_threadpool(read, source), ""
    except Unavailable as exc:
        return empty, str(exc)


def _local(path: str) -> str:
    """Where a sign-in may send the browser: a path of this console only (no open redirect)."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/cameras"


def _valid_id(camera_id: str) -> bool:
    try:
        check_camera_id(camera_id)
    except ValueError:
        return False
    return True
