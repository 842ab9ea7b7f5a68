"""Prometheus metrics, JSON-lines logs and the ASGI middleware that times, counts and logs every request.

Metrics live in the app's own CollectorRegistry (two apps in one process, as in tests, never collide) and
`/metrics` serves them in Prometheus' text format. Every log line is one JSON object on stderr: an access
line per request (`"message": "request"`, method, path, status, milliseconds, texts, model version),
events (`model_ready`, `model_swapped`, `model_released`, `shutdown`...) and uvicorn's own messages.
Only an unexpected server error logs a traceback; a warning carries its exception as one line.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("domaintune.serving")
access_log = logging.getLogger("domaintune.serving.access")

LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
QUIET_PATHS = {"/v2/health/live", "/v2/health/ready", "/ping", "/health", "/metrics"}  # probes: debug only
ENDPOINTS = [(re.compile(p), name) for p, name in (
    (r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$", "/v2/models/{name}/infer"),
    (r"^/v2/models/[^/]+(/versions/[^/]+)?/ready$", "/v2/models/{name}/ready"),
    (r"^/v2/models/[^/]+(/versions/[^/]+)?$", "/v2/models/{name}"),
)]
FIXED = {"/predict", "/invocations", "/ping", "/health", "/metrics", "/v2", "/v2/health/live", "/v2/health/ready"}


def endpoint_of(path: str) -> str:
    """A bounded label for the path: the route template, or `other` (no unbounded label values)."""
    if path in FIXED:
        return path
    for pattern, name in ENDPOINTS:
        if pattern.match(path):
            return name
    return "other"


class Metrics:
    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.latency = Histogram("domaintune_serving_request_duration_seconds", "Request latency by endpoint",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("domaintune_serving_requests", "Requests by endpoint and status code",
                                ["endpoint", "code"], registry=r)
        self.texts = Counter("domaintune_serving_texts", "Texts answered", registry=r)
        self.batch_size = Histogram("domaintune_serving_batch_size", "Texts per model run (one gathered batch)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("domaintune_serving_batch_requests", "Requests sharing one model run",
                                        buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("domaintune_serving_batch_duration_seconds", "Time of one model run",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.errors = Counter("domaintune_serving_errors", "Errors by kind", ["kind"], registry=r)
        self.in_flight = Gauge("domaintune_serving_in_flight_requests", "Requests being handled", registry=r)
        self.queued = Gauge("domaintune_serving_queued_texts", "Texts waiting for the model", registry=r)
        self.model = Gauge("domaintune_serving_model_info", "1 for the model version being served",
                           ["model", "version", "file"], registry=r)
        self.ready = Gauge("domaintune_serving_ready", "1 once a model is loaded and warmed up", registry=r)
        self.swaps = Counter("domaintune_serving_model_swaps", "Model versions swapped in", registry=r)
        self.load_seconds = Gauge("domaintune_serving_model_load_seconds", "Download + load + warm-up time of "
                                  "the model being served", registry=r)

    def serving(self, model, previous=None) -> None:
        if previous is not None:
            self.model.remove(previous.name, previous.version, previous.file)
        self.model.labels(model.name, model.version, model.file).set(1)
        self.load_seconds.set(model.load_seconds)
        self.ready.set(1)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
                "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        line.update(getattr(record, "fields", None) or {})
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if record.levelno >= logging.ERROR:  # a bug: keep the traceback
                line["exception"] = self.formatException(record.exc_info)
            else:
                line["exception"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("domaintune.serving", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler] if name != "uvicorn.error" else []
        logger.setLevel(level.upper())
        logger.propagate = name == "uvicorn.error"
    logging.getLogger("uvicorn.access").disabled = True  # our own access line replaces it


class Observe:
    """Pure ASGI middleware: in-flight gauge, latency and status metrics, one access line per request, and
    a JSON 500 (never a half-sent response or uvicorn's traceback dump) for an exception a handler let out."""

    def __init__(self, app, metrics: Metrics, access: bool = True):
        self.app, self.metrics, self.access = app, metrics, access

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        scope.setdefault("state", {})
        status = {"code": 0}

        async def send_and_note(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            log.error("unexpected error handling %s %s", scope["method"], scope["path"], exc_info=True)
            self.metrics.errors.labels("internal").inc()
            if not status["code"]:
                body = json.dumps({"error": "internal server error (logged)"}).encode()
                await send_and_note({"type": "http.response.start", "status": 500,
                                     "headers": [(b"content-type", b"application/json"),
                                                 (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            endpoint = endpoint_of(scope["path"])
            self.metrics.latency.labels(endpoint).observe(seconds)
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
            if self.access:
                self._log(scope, status["code"], seconds)

    @staticmethod
    def _log(scope, code: int, seconds: float) -> None:
        quiet = scope["path"] in QUIET_PATHS and code < 400
        if quiet and not access_log.isEnabledFor(logging.DEBUG):
            return
        client = scope.get("client") or ("", 0)
        fields = {"method": scope["method"], "path": scope["path"], "status": code,
                  "ms": round(seconds * 1000, 2), "client": f"{client[0]}:{client[1]}"}
        fields.update(scope["state"].get("log") or {})
        access_log.log(logging.DEBUG if quiet else logging.INFO, "request", extra={"fields": fields})
