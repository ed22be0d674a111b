"""The FastAPI application: Harbor webhook intake, task API, health and metrics.

The webhook handler never contacts a registry: it authenticates, parses, writes PENDING records and answers.
All registry work happens in the engine's workers, so Harbor's 3 s timeout is never at risk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from accel import __version__
from accel.config import Config
from accel.errors import AccelError
from accel.metrics import CONTENT_TYPE_LATEST, Metrics
from accel.server import auth, ui
from accel.server.payload import (
    REFERENCE_PATTERN,
    CloudEvent,
    HarborEvent,
    PayloadError,
    Reference,
    Resource,
    child_manifest,
    parse_event,
    parse_reference,
)
from accel.tasks import Intake, Submitted, Task, TaskEngine, TaskStatus, TaskStoreUnavailableError

log = logging.getLogger("accel.server")

MAX_BODY = 1024 * 1024
ENQUEUE_TIMEOUT = 2.5
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


class ErrorBody(BaseModel):
    code: str
    message: str


class TaskView(BaseModel):
    id: str
    created: str
    started: str | None
    finished: str | None
    source: str
    target: str
    source_digest: str
    target_digest: str
    driver: str
    source_size: int
    target_size: int
    status: Literal["PENDING", "PROCESSING", "COMPLETED", "FAILED", "CANCELED"]
    reason: str
    attempts: int
    cache_hits: int
    cache_misses: int
    cache_saved: int
    bytes_in: int
    bytes_out: int
    timings: dict[str, float]
    node: str


class SummaryView(BaseModel):
    since: str
    pending: int
    processing: int
    completed: int
    failed: int
    canceled: int
    bytes_in: int
    bytes_out: int
    cache_saved: int
    success_rate: float | None


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        max_length=4096,
        pattern=REFERENCE_PATTERN,
        description="host/repository[:tag][@digest] on a configured registry",
    )


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorBody, "description": "error"} for s in statuses}


def _view(task: Task) -> dict[str, Any]:
    return task.to_dict()


class _Observe:
    """Pure ASGI middleware: HTTP metrics (upstream's names) and one log line per request."""

    def __init__(self, app: _ASGIApp, metrics: Metrics, host: str) -> None:
        self.app = app
        self.metrics = metrics
        self.host = host

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        begin = time.perf_counter()
        state = {"status": 500, "size": 0}

        async def counting_send(message: _Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
            elif message["type"] == "http.response.body":
                state["size"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            elapsed = time.perf_counter() - begin
            route = scope.get("route")
            url = getattr(route, "path", None) or "/*"
            headers = dict(scope.get("headers") or [])
            # Host and method come from the client: unbounded label values would let anyone grow the
            # registry without limit, so they are reduced to a fixed set.
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            labels = (str(state["status"]), method, self.host, url)
            self.metrics.requests.labels(*labels).inc()
            self.metrics.request_duration.labels(*labels).observe(elapsed)
            self.metrics.response_size.labels(*labels).observe(state["size"])
            length = headers.get(b"content-length", b"0")
            self.metrics.request_size.labels(*labels).observe(int(length) if length.isdigit() else 0)
            quiet = url in ("/metrics", "/api/v1/health")
            client = scope.get("client")
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope.get("path", ""),
                    "status": state["status"],
                    "duration_ms": round(elapsed * 1000, 2),
                    "client": client[0] if client else "unix",
                },
            )


async def _read_body(request: Request, limit: int) -> bytes:
    # Answering before the whole body arrived is safe: uvicorn reads and drops the rest of a declared
    # body and keeps the connection (tests/integration/test_acceld.py, the 413 on a reused connection).
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _TooLarge(limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class _TooLarge(AccelError):
    code = "ERR_ILLEGAL_PARAMETER"
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")


class _UnsupportedMediaType(AccelError):
    code = "ERR_UNSUPPORTED_MEDIA_TYPE"
    status = 415


def _check_json_media_type(content_type: str | None) -> None:
    """JSON sent as JSON only. No Content-Type at all is read as JSON: Harbor always sends one, and
    hand-written clients (``curl --data-binary @event.json``, scripts) often send none."""
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    raise _UnsupportedMediaType(
        f"Content-Type {content_type[:100]!r} is not JSON; send application/json or "
        "application/cloudevents+json"
    )


def _client_host(request: Request) -> str | None:
    return request.client.host if request.client else None


@dataclass(frozen=True)
class Services:
    """What the route functions need, kept on ``app.state`` so that several apps can live side by side."""

    config: Config
    engine: TaskEngine
    metrics: Metrics
    max_body: int


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _require_api(request: Request, services: Annotated[Services, Depends(_services)]) -> None:
    if request.method not in ("GET", "HEAD"):
        auth.check_same_origin(request.headers)
    auth.check_api(services.config, request.headers.get("authorization"), _client_host(request))


_Services = Annotated[Services, Depends(_services)]
_API_AUTH = [Depends(_require_api)]

router = APIRouter()
metrics_router = APIRouter()


@router.post(
    "/api/v1/conversions",
    response_model=str,
    responses=_errors(400, 401, 413, 415, 500, 503),
    summary="Receive a Harbor PUSH_ARTIFACT webhook (Default or CloudEvents format)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/HarborEvent"}},
                "application/cloudevents+json": {"schema": {"$ref": "#/components/schemas/CloudEvent"}},
            },
        }
    },
)
async def create_conversions(request: Request, services: _Services, sync: bool = False) -> Response:
    config, engine, metrics = services.config, services.engine, services.metrics
    header = request.headers.get("authorization")
    if not auth.webhook_caller_known(config, header):
        metrics.webhook_events.labels("rejected").inc()
        raise auth.AuthError("missing or invalid Authorization header")
    _check_json_media_type(request.headers.get("content-type"))
    body = await _read_body(request, services.max_body)
    event = parse_event(body, request.headers.get("content-type", ""))
    if not event.push:
        log.info("ignored event", extra={"type": event.type[:100]})
        metrics.webhook_events.labels("ignored").inc()
        return JSONResponse("Ok")
    checked: list[tuple[Resource, Reference]] = []
    for resource in event.resources:
        ref = parse_reference(resource.resource_url)
        auth.check_webhook_host(config, header, ref.host)
        checked.append((resource, ref))
    intake = Intake()
    pending = asyncio.ensure_future(
        run_in_threadpool(_enqueue, config, engine, metrics, event.operator, checked, intake)
    )
    # Harbor gives up after 3 s and redelivers on anything but 2xx, so the answer must say what happened:
    # either every task is saved (2xx with ids) or, withdrawn before its commit, none is (503).
    done, _ = await asyncio.wait({pending}, timeout=ENQUEUE_TIMEOUT)
    if not done and intake.withdraw():
        pending.add_done_callback(_ignore_outcome)
        log.warning("task store too slow; nothing saved, asking the sender to retry")
        return _error(503, "ERR_UNAVAILABLE", "task store busy, retry later")
    try:
        ids = await pending  # committing, or failed and rolled back: its outcome is the answer
    except AccelError:
        raise
    except Exception as exc:
        log.error("cannot save tasks; nothing saved", exc_info=exc)
        raise TaskStoreUnavailableError("task store unavailable, retry later") from None
    headers = {"X-Accel-Tasks": ",".join(ids)} if ids else {}
    if sync and ids:
        tasks = await run_in_threadpool(engine.wait, ids, None)
        failed = [t for t in tasks if t.status in (TaskStatus.FAILED, TaskStatus.CANCELED)]
        if failed:
            reasons = "; ".join(f"{t.source}: {t.reason}" for t in failed)
            return JSONResponse(
                {"code": "ERR_CONVERT_FAILED", "message": reasons}, status_code=500, headers=headers
            )
        if any(t.status.active for t in tasks):
            return JSONResponse(
                {"code": "ERR_UNAVAILABLE", "message": "service stopping; the task stays queued"},
                status_code=503,
                headers=headers,
            )
    return JSONResponse("Ok", headers=headers)


@router.get(
    "/api/v1/conversions",
    response_model=list[TaskView],
    responses=_errors(400, 401, 403),
    dependencies=_API_AUTH,
)
def list_conversions(
    services: _Services,
    status: TaskStatus | None = None,
    limit: int = Query(1000, ge=1, le=100_000),
) -> Response:
    """Tasks, newest first."""
    return JSONResponse([_view(t) for t in services.engine.list_tasks(limit=limit, status=status)])


@router.get(
    "/api/v1/conversions/{task_id}",
    response_model=TaskView,
    responses=_errors(401, 403, 404),
    dependencies=_API_AUTH,
)
def show_conversion(services: _Services, task_id: str) -> Response:
    return JSONResponse(_view(services.engine.get(task_id)))


@router.post(
    "/api/v1/conversions/{task_id}/cancel",
    response_model=TaskView,
    responses=_errors(401, 403, 404, 409),
    dependencies=_API_AUTH,
)
def cancel_conversion(services: _Services, task_id: str) -> Response:
    """Cancel a PENDING task, or ask a PROCESSING one to stop at its next check."""
    return JSONResponse(_view(services.engine.cancel(task_id)))


@router.post(
    "/api/v1/conversions/{task_id}/retry",
    response_model=TaskView,
    responses=_errors(401, 403, 404, 409),
    dependencies=_API_AUTH,
)
def retry_conversion(services: _Services, task_id: str) -> Response:
    """Queue a FAILED or CANCELED task again."""
    return JSONResponse(_view(services.engine.retry(task_id)))


@router.get(
    "/api/v1/summary",
    response_model=SummaryView,
    responses=_errors(401, 403),
    dependencies=_API_AUTH,
)
def summary(services: _Services) -> Response:
    """The queue now and the tasks that finished in the last 24 hours (the dashboard's tiles)."""
    return JSONResponse(services.engine.summary().to_dict())


@router.post(
    "/api/v1/submit",
    response_model=list[TaskView],
    responses=_errors(400, 401, 403, 413, 415),
    dependencies=_API_AUTH,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SubmitRequest"}}},
        }
    },
)
async def submit_conversion(request: Request, services: _Services) -> Response:
    """Queue a conversion of ``source`` (``host/repo:tag`` or ``@digest``), as a push of it would: what
    ``accelctl task create`` and the dashboard's "convert an image" do. Answers the tasks it maps to."""
    _check_json_media_type(request.headers.get("content-type"))
    body = await _read_body(request, services.max_body)
    try:
        wanted = SubmitRequest.model_validate_json(body)
    except ValueError:
        raise PayloadError('expected {"source": "host/repository[:tag][@digest]"}') from None
    ref = parse_reference(wanted.source)
    if auth.find_source(services.config, ref.host) is None:
        # Not a malformed request but one this service may not act on: only configured hosts are contacted.
        raise auth.ForbiddenError(f"registry host {ref.host!r} is not a configured source (provider.source)")
    requests = [(wanted.source, ref.digest)]
    submitted = await run_in_threadpool(services.engine.submit_many, requests, intake=Intake())
    _record_submitted(services.metrics, requests, submitted, operator="")
    return JSONResponse([_view(item.task) for item in submitted])


@router.get(
    "/api/v1/health",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **_errors(500)},
)
def health(services: _Services) -> Response:
    if not services.engine.healthy():
        return _error(500, "ERR_UNHEALTHY", "task store or workers unavailable")
    return PlainTextResponse("Ok")


@metrics_router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def prometheus(services: _Services) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def _accel_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, AccelError)
    return _error(exc.status, exc.code, exc.message)


async def _invalid(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]]
    return _error(400, "ERR_ILLEGAL_PARAMETER", "; ".join(parts) or "invalid request")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        response = _error(404, "ERR_INVALID_ENDPOINT", "Endpoint not found")
    elif exc.status_code == 405:
        response = _error(405, "ERR_METHOD_NOT_ALLOWED", "Method not allowed")
    else:
        response = _error(exc.status_code, "ERR_HTTP", str(exc.detail))
    response.headers.update(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names only the first route that matched the path; GET and POST are separate routes.
        response.headers["Allow"] = ", ".join(_allowed_methods(request, request.url.path))
    return response


async def _internal(_: Request, exc: Exception) -> Response:
    log.error("internal error", exc_info=exc)
    return _error(500, "ERR_INTERNAL", "internal error")


class _App(FastAPI):
    def openapi(self) -> dict[str, Any]:
        # The webhook body is read by hand (two formats, a size limit), so its models are added here.
        if self.openapi_schema is None:
            schema = get_openapi(
                title=self.title, version=self.version, description=self.description, routes=self.routes
            )
            _, defs = models_json_schema(
                [(HarborEvent, "validation"), (CloudEvent, "validation"), (SubmitRequest, "validation")],
                ref_template="#/components/schemas/{model}",
            )
            schema.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
            self.openapi_schema = schema
        return self.openapi_schema


def create_app(
    config: Config,
    engine: TaskEngine,
    metrics: Metrics,
    *,
    manage_engine: bool = True,
    shutdown_grace: float = 30.0,
    max_body: int = MAX_BODY,
) -> FastAPI:
    """Build the app. With ``manage_engine`` the lifespan starts the engine and shuts it down gracefully."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_engine:
            engine.start()
        try:
            yield
        finally:
            if manage_engine:
                log.info(
                    "shutting down: no new tasks, waiting for running conversions",
                    extra={"grace": shutdown_grace},
                )
                clean = await run_in_threadpool(engine.shutdown, shutdown_grace)
                if not clean:
                    log.warning("some conversions did not stop in time; they run again at the next start")

    app = _App(
        title="acceleration-service",
        version=__version__,
        description="Converts OCI images pushed to Harbor into lazy-pulling formats.",
        lifespan=lifespan,
        docs_url=None,  # served by accel.server.ui from the package, not from a CDN
        redoc_url=None,
    )
    app.state.services = Services(config, engine, metrics, max_body)
    listen = (
        f"unix:{config.server.uds}" if config.server.uds else f"{config.server.host}:{config.server.port}"
    )
    app.add_middleware(_Observe, metrics=metrics, host=listen)
    app.add_exception_handler(AccelError, _accel_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal)
    app.include_router(router)
    ui.mount(app)
    if config.metric.enabled:
        app.include_router(metrics_router)
    return app


def _allowed_methods(request: Request, path: str) -> list[str]:
    # FastAPI keeps an included router as one opaque entry in app.routes, so our routers are walked too.
    routes = [*request.app.routes, *router.routes]
    if _services(request).config.metric.enabled:
        routes += metrics_router.routes
    methods: set[str] = set()
    for route in routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def _ignore_outcome(future: asyncio.Future[list[str]]) -> None:
    # The sender was told to retry; what the withdrawn write ended with is of no use to anyone now.
    if not future.cancelled():
        future.exception()


def _enqueue(
    config: Config,
    engine: TaskEngine,
    metrics: Metrics,
    operator: str,
    resources: list[tuple[Resource, Reference]],
    intake: Intake,
) -> list[str]:
    wanted: list[tuple[str, str]] = []
    for resource, ref in resources:
        source = resource.resource_url
        reason = _skip_reason(config, operator, resource, ref)
        if reason:
            metrics.webhook_events.labels("ignored").inc()
            log.info("ignored resource", extra={"source": source, "reason": reason})
            continue
        wanted.append((source, resource.digest if resource.digest.startswith("sha256:") else ref.digest))
    if not wanted:
        return []
    submitted = engine.submit_many(wanted, intake=intake)
    _record_submitted(metrics, wanted, submitted, operator)
    return list(dict.fromkeys(item.task.id for item in submitted))


def _record_submitted(
    metrics: Metrics, requests: list[tuple[str, str]], submitted: list[Submitted], operator: str
) -> None:
    """Count and log what became of each requested conversion (webhook or API submit alike)."""
    for (source, _), item in zip(requests, submitted, strict=True):
        metrics.webhook_events.labels("merged" if item.merged else "queued").inc()
        log.info(
            "merged into queued task" if item.merged else "task queued",
            extra={"task": item.task.id, "source": source, "operator": operator},
        )


def _skip_reason(config: Config, operator: str, resource: Resource, ref: Reference) -> str:
    if child_manifest(resource, ref):
        return "digest-only reference (child manifest of a multi-arch push)"
    source = auth.find_source(config, ref.host)
    if operator and source is not None and source.auth:
        user, _ = source.credentials(ref.host) or ("", "")
        if operator == user:
            return f"pushed by the service's own account {operator!r}"
    # Our own outputs are recognised by the worker (Converter.inspect), which records why they were skipped.
    return ""
