"""The console's HTTP layer: a JSON API and one static page, on FastAPI served by uvicorn.

    GET  /                     the page (static/index.html, app.js, app.css; no CDN, works offline)
    GET  /api/session          whether changes are possible (a token is configured)
    GET  /api/overview         live view: rates, histogram with threshold, series, workers, versions
    GET  /api/whatif?threshold=T[&head=P]   alerts/hour, precision/recall, ROC/PR at T (and head P)
    GET  /api/alerts?limit=N   latest alerts (newest first)
    POST /api/explain          {event} → score, verdict, per-field errors, why (as an alert's top_features)
    GET  /api/models           registry versions, metrics, gate decisions, active/previous
    GET  /api/history          threshold audit lines (newest first)
    POST /api/threshold        {value, head, note, operator}  — needs X-Console-Token
    POST /api/rollback         {operator}               — needs X-Console-Token
    GET  /openapi.json         the API's OpenAPI description, generated from the routes below

FastAPI routes, parses and validates (query parameters and pydantic body models), and documents
the API in ``/openapi.json``; its interactive ``/docs`` and ``/redoc`` are off, because those pages
load Swagger UI / ReDoc from a CDN with inline script, which the console's offline, strict-CSP rule
forbids. FastAPI also bounds request bodies (``MAX_BODY``). What stays hand-written here: the
Host allow-list and the security headers (``_Guard``, one ASGI middleware around the app), the
token check (``auth.py``, as a dependency), and the mapping of errors to JSON ``{"error": ...}``:
400 (bad input; also ``BadRequest``, e.g. a head threshold for a model without a head), 403
(token/host), 404, 405, 409 (a refused change, e.g. nothing to roll back to), 413 (body over
``MAX_BODY``), 503 (Redis or Kafka unreachable).
"""

import logging
import re
import socket
import threading
import time
from collections.abc import Mapping
from importlib import resources
from typing import Annotated, Any

import orjson
import redis
import uvicorn
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from kafka.errors import KafkaError  # the console's one Kafka type: only in BACKEND_ERRORS below
from pydantic import BaseModel, Field
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ConfigError, ModelError, StreamDetectorError
from ..settings import Settings
from .auth import TOKEN_HEADER, check_token, host_allowed
from .service import BadRequest, ConsoleService

log = logging.getLogger("stream_detector.console")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}
MAX_BODY = 1 << 20
# refused changes (409) and unreachable backends (503); the most specific class wins (NoActiveModel: 409)
REFUSED_ERRORS: tuple[type[Exception], ...] = (ConfigError, ModelError)
BACKEND_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, KafkaError, StreamDetectorError, OSError)
_OPERATOR = re.compile(r"[^A-Za-z0-9_.@ -]")


# ---- request bodies and the error shape (documented in /openapi.json) --------------------------
class ErrorBody(BaseModel):
    error: str


# "4XX" in place of FastAPI's default 422 entry: validation errors are 400 {"error": ...} here
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorBody, "description": "400 bad input, 403 token or Host, 404 no such path, "
                                               "405 wrong method, 409 refused change, 413 body too large"},
    "5XX": {"model": ErrorBody, "description": "503 Redis or Kafka unreachable"},
}


class ExplainBody(BaseModel):
    event: dict[str, Any] = Field(description="one event as the workers read it from the input topic")


class ThresholdBody(BaseModel):
    value: float = Field(description="the new threshold (finite, >= 0)")
    head: float | None = Field(None, gt=0, lt=1, description="the supervised head's new probability threshold, "
                                                             "in (0, 1); only for a model with a head; "
                                                             "absent or null: the one in force is kept")
    note: str = Field("", description="why (audit line; first 200 characters kept)")
    operator: str = Field("", description="who (audit line; letters, digits, `_.@ -`, 64 at most)")


class RollbackBody(BaseModel):
    operator: str = Field("", description="who (audit line)")


_token_header = APIKeyHeader(name=TOKEN_HEADER, auto_error=False,
                             description="SD_CONSOLE_TOKEN; needed to change the threshold or roll back")


class _JSON(JSONResponse):
    """orjson, numpy arrays and scalars included (the service returns them as computed)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return _JSON({"error": message}, status_code=status, headers=headers)


def create_app(settings: Settings, bound_host: str, service: ConsoleService) -> ASGIApp:
    """The console as an ASGI app (uvicorn serves it; tests may drive it with ``TestClient``)."""
    app = FastAPI(title="stream-detector console", version="1", default_response_class=_JSON,
                  docs_url=None, redoc_url=None, max_body_size=MAX_BODY,  # over it: 413
                  responses=ERROR_RESPONSES,
                  description="The operator console's API (docs/console.md). Changes need the "
                              f"{TOKEN_HEADER} header; errors are JSON {{\"error\": ...}}.")
    app.mount("/static", StaticFiles(packages=[(__package__ or "", "static")]), name="static")

    # ---- errors → {"error": ...} ---------------------------------------------------------------
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        message = exc.detail
        if exc.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):
            message = f"no such endpoint: {request.method} {request.url.path}"
        return _error(exc.status_code, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_input(request: Request, exc: RequestValidationError) -> Response:
        return _error(400, "; ".join(_describe(e) for e in exc.errors()))

    async def refused(request: Request, exc: Exception) -> Response:
        return _error(409, str(exc))

    @app.exception_handler(BadRequest)  # a ConfigError, but the request's fault: 400, not 409
    async def bad_request(request: Request, exc: BadRequest) -> Response:
        return _error(400, str(exc))

    async def unavailable(request: Request, exc: Exception) -> Response:
        log.warning("console %s %s: %s", request.method, request.url.path, exc)
        return _error(503, f"backend unavailable: {exc}")

    for cls in REFUSED_ERRORS:
        app.add_exception_handler(cls, refused)
    for cls in BACKEND_ERRORS:
        app.add_exception_handler(cls, unavailable)

    # ---- who may change things -----------------------------------------------------------------
    def authorize(request: Request, token: Annotated[str | None, Depends(_token_header)]) -> str:
        """Refuse without the token (403); otherwise who is changing things, for the audit line."""
        verdict = check_token(settings.console_token, token)
        if not verdict.allowed:
            raise HTTPException(403, verdict.reason)
        return request.client.host if request.client else "unknown"

    Writer = Annotated[str, Depends(authorize)]

    # ---- endpoints (sync: FastAPI runs them in its thread pool; the service blocks on Redis/Kafka)
    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return HTMLResponse(resources.files(__package__ or "").joinpath("static", "index.html").read_bytes())

    @app.get("/api/session", summary="whether changes are possible")
    def session() -> Any:
        return _JSON({"writable": bool(settings.console_token.get_secret_value()),
                      "token_header": TOKEN_HEADER, "bound_host": bound_host})

    @app.get("/api/overview", summary="rates, histogram, series, workers, active model and threshold")
    def overview() -> Any:
        return _JSON(service.overview())

    @app.get("/api/whatif", summary="alerts/hour, precision/recall and ROC/PR at a candidate threshold "
                                     "(and head threshold)")
    def what_if(threshold: Annotated[float, Query(description="candidate threshold")],
                head: Annotated[float | None, Query(gt=0, lt=1, description=(
                    "candidate head threshold, a probability in (0, 1); only for a model with a supervised "
                    "head (400 otherwise); absent: the one in force"))] = None) -> Any:
        return _JSON(service.what_if(threshold, head))

    @app.get("/api/alerts", summary="latest alerts, newest first")
    def alerts(limit: Annotated[int, Query(ge=0, le=100_000)] = 50) -> Any:
        return _JSON(service.recent_alerts(limit))

    @app.post("/api/explain", summary="score, verdict, rejection reason, per-field errors and why of one event")
    def explain(body: ExplainBody) -> Any:
        return _JSON(service.explain(body.event))

    @app.get("/api/models", summary="versions with metrics and gate, active, previous, refused candidates")
    def models() -> Any:
        return _JSON(service.models())

    @app.get("/api/history", summary="threshold audit lines, newest first")
    def history(limit: Annotated[int, Query(ge=0, le=100_000)] = 20) -> Any:
        return _JSON(service.history(limit))

    @app.post("/api/threshold", summary="set a new threshold version (needs the token)")
    def threshold(client: Writer, body: ThresholdBody) -> Any:
        result = service.set_threshold(body.value, _set_by(body.operator, client), body.note[:200] or "console what-if",
                                       body.head)
        log.info("threshold set from the console: %s", result["audit"])
        return _JSON(result)

    @app.post("/api/rollback", summary="roll back to the previous model (needs the token)")
    def rollback(client: Writer, body: RollbackBody | None = None) -> Any:
        result = service.rollback(_set_by(body.operator if body else "", client))
        log.info("rollback from the console: %s", result["audit"])
        return _JSON(result)

    return _Guard(app, bound_host)


def _set_by(operator: str, client: str) -> str:
    return f"{_OPERATOR.sub('', operator.strip())[:64] or 'operator'} via console from {client}"


def _describe(error: Any) -> str:
    """One pydantic error as ``query threshold: Input should be a valid number (got 'abc')``."""
    where = " ".join(str(part) for part in error.get("loc", ()))
    value = error.get("input")
    got = f" (got {value!r})" if isinstance(value, str | int | float) and len(repr(value)) <= 80 else ""
    if error.get("type") == "json_invalid":
        got = f" ({error.get('ctx', {}).get('error', '')})"
    return f"{where}: {error.get('msg', 'invalid')}{got}"


class _Guard:
    """Outside the whole app: ``Host`` on the allow-list (403) for every request, and the security
    headers on every response (errors, 500s and static files included)."""

    def __init__(self, app: ASGIApp, bound_host: str) -> None:
        self.app = app
        self.bound_host = bound_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        headers = Headers(scope=scope)
        if not host_allowed(self.bound_host, headers.get("host")):
            await _error(403, "unexpected Host header for a loopback console")(scope, receive, secured)
            return
        await self.app(scope, receive, secured)


class ConsoleServer:
    """The app under uvicorn on a socket bound at construction (port 0: any free port, see ``url``)."""

    def __init__(self, settings: Settings, host: str, port: int, service: ConsoleService | None = None) -> None:
        self.settings = settings
        self.bound_host = host
        self.socket = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            self.service = service or ConsoleService(settings)
        except BaseException:
            self.socket.close()
            raise
        self.app = create_app(settings, host, self.service)
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, log_config=None, access_log=False, lifespan="off", server_header=False,
            timeout_graceful_shutdown=5))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def serve_forever(self) -> None:
        """Serve in the caller's thread until SIGINT/SIGTERM (main thread) or ``stop``."""
        self._server.run(sockets=[self.socket])

    def start(self) -> "ConsoleServer":
        """Serve in a background thread (tests); returns once uvicorn accepts connections."""
        self._thread = threading.Thread(target=self.serve_forever, name="console", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self._server.started:
            raise RuntimeError("the console's HTTP server did not start")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket.close()
        self.service.close()


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the console until interrupted (``stream-detector console``)."""
    server = ConsoleServer(settings, host, port)
    log.info("console on %s (%s)", server.url,
             "changes need the token" if settings.console_token.get_secret_value() else "read-only")
    try:
        server.serve_forever()
    finally:
        server.socket.close()
        server.service.close()
