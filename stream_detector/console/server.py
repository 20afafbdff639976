"""The console's HTTP layer: a JSON API and one static page, on the standard library's server.

    GET  /                     the page (static/index.html, app.js, app.css; no CDN, works offline)
    GET  /api/session          whether changes are possible (a token is configured)
    GET  /api/overview         live view: rates, histogram with threshold, series, workers, versions
    GET  /api/whatif?threshold=T   alerts/hour, precision/recall, ROC/PR at T
    GET  /api/alerts?limit=N   latest alerts (newest first)
    POST /api/explain          {event} → score, verdict, per-field errors
    GET  /api/models           registry versions, metrics, gate decisions, active/previous
    GET  /api/history          threshold audit lines (newest first)
    POST /api/threshold        {value, note, operator}  — needs X-Console-Token
    POST /api/rollback         {operator}               — needs X-Console-Token

Errors are JSON ``{"error": ...}`` with 400 (bad input), 403 (token/host), 404, 409 (a refused
change, e.g. nothing to roll back to), 503 (Redis or Kafka unreachable).
"""

from __future__ import annotations

import logging
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import redis
from kafka.errors import KafkaError

from ..errors import ConfigError, ModelError, NoActiveModel, StreamDetectorError
from ..settings import Settings
from .auth import TOKEN_HEADER, check_token, host_allowed
from .service import ConsoleService

log = logging.getLogger("stream_detector.console")

STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
          "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/static/app.css": ("app.css", "text/css; charset=utf-8")}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}
MAX_BODY = 1 << 20
_OPERATOR = re.compile(r"[^A-Za-z0-9_.@ -]")


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ConsoleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, settings: Settings, host: str, port: int, service: ConsoleService | None = None) -> None:
        self.settings = settings
        self.bound_host = host
        self.service = service or ConsoleService(settings)
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        raw, port = self.server_address[:2]
        host = raw.decode() if isinstance(raw, bytes) else str(raw)
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}"

    def start(self) -> ConsoleServer:
        """Serve in a background thread (tests); ``serve_forever`` serves in the caller's."""
        self._thread = threading.Thread(target=self.serve_forever, name="console", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        self.service.close()
        if self._thread is not None:
            self._thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    server: ConsoleServer
    protocol_version = "HTTP/1.1"
    _payload: dict[str, Any]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.client_address[0], *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # ---- routing -------------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            if not host_allowed(self.server.bound_host, self.headers.get("Host")):
                raise HttpError(403, "unexpected Host header for a loopback console")
            self._payload = self._read_body() if method == "POST" else {}  # read first: keep-alive stays in sync
            if method == "GET" and url.path in STATIC:
                self._static(*STATIC[url.path])
                return
            route = _ROUTES.get((method, url.path))
            if route is None:
                raise HttpError(404, f"no such endpoint: {method} {url.path}")
            self._json(200, route(self, {k: v[-1] for k, v in parse_qs(url.query).items()}))
        except HttpError as exc:
            self._json(exc.status, {"error": str(exc)})
        except (ConfigError, NoActiveModel) as exc:
            self._json(409, {"error": str(exc)})
        except ModelError as exc:
            self._json(409, {"error": str(exc)})
        except (redis.RedisError, KafkaError, StreamDetectorError, OSError) as exc:
            log.warning("console %s %s: %s", method, url.path, exc)
            self._json(503, {"error": f"backend unavailable: {exc}"})

    def _body(self) -> dict[str, Any]:
        return self._payload

    def _read_body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise HttpError(413, "request body too large")
        try:
            body = orjson.loads(self.rfile.read(length) or b"{}")
        except orjson.JSONDecodeError as exc:
            raise HttpError(400, f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise HttpError(400, "body must be a JSON object")
        return body

    def _authorize(self) -> str:
        """Refuse without the token (403); otherwise who is changing things, for the audit line."""
        verdict = check_token(self.server.settings.console_token, self.headers.get(TOKEN_HEADER))
        if not verdict.allowed:
            raise HttpError(403, verdict.reason)
        return self.client_address[0]

    def _set_by(self, body: dict[str, Any], client: str) -> str:
        operator = _OPERATOR.sub("", str(body.get("operator") or "").strip())[:64] or "operator"
        return f"{operator} via console from {client}"

    # ---- responses -----------------------------------------------------------------------------
    def _json(self, status: int, payload: Any) -> None:
        self._send(status, orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), "application/json")

    def _static(self, name: str, content_type: str) -> None:
        self._send(200, resources.files(__package__).joinpath("static", name).read_bytes(), content_type)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    # ---- endpoints -----------------------------------------------------------------------------
    def session(self, q: dict[str, str]) -> Any:
        return {"writable": bool(self.server.settings.console_token.get_secret_value()),
                "token_header": TOKEN_HEADER, "bound_host": self.server.bound_host}

    def overview(self, q: dict[str, str]) -> Any:
        return self.server.service.overview()

    def what_if(self, q: dict[str, str]) -> Any:
        return self.server.service.what_if(_number(q.get("threshold"), "threshold"))

    def alerts(self, q: dict[str, str]) -> Any:
        return self.server.service.recent_alerts(int(_number(q.get("limit", "50"), "limit")))

    def explain(self, q: dict[str, str]) -> Any:
        body = self._body()
        return self.server.service.explain(body.get("event"))

    def models(self, q: dict[str, str]) -> Any:
        return self.server.service.models()

    def history(self, q: dict[str, str]) -> Any:
        return self.server.service.history(int(_number(q.get("limit", "20"), "limit")))

    def threshold(self, q: dict[str, str]) -> Any:
        client = self._authorize()
        body = self._body()
        value = _number(body.get("value"), "value")
        note = str(body.get("note") or "")[:200]
        result = self.server.service.set_threshold(value, self._set_by(body, client), note or "console what-if")
        log.info("threshold set from the console: %s", result["audit"])
        return result

    def rollback(self, q: dict[str, str]) -> Any:
        client = self._authorize()
        result = self.server.service.rollback(self._set_by(self._body(), client))
        log.info("rollback from the console: %s", result["audit"])
        return result


def _number(raw: Any, name: str) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise HttpError(400, f"{name} must be a number, got {raw!r}") from None


_ROUTES = {
    ("GET", "/api/session"): _Handler.session, ("GET", "/api/overview"): _Handler.overview,
    ("GET", "/api/whatif"): _Handler.what_if, ("GET", "/api/alerts"): _Handler.alerts,
    ("POST", "/api/explain"): _Handler.explain, ("GET", "/api/models"): _Handler.models,
    ("GET", "/api/history"): _Handler.history, ("POST", "/api/threshold"): _Handler.threshold,
    ("POST", "/api/rollback"): _Handler.rollback,
}


def serve(settings: Settings, host: str, port: int) -> None:
    """Run the console until interrupted (``stream-detector console``)."""
    server = ConsoleServer(settings, host, port)
    log.info("console on %s (%s)", server.url,
             "changes need the token" if settings.console_token.get_secret_value() else "read-only")
    try:
        server.serve_forever()
    finally:
        server.server_close()
        server.service.close()
