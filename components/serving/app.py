"""The FastAPI app of `domaintune serve`: three protocols on one batcher and one model holder.

- Open Inference Protocol V2 (KServe custom predictor, tritonclient): `GET /v2`, `/v2/health/live`,
  `/v2/health/ready`, `/v2/models/{name}[/versions/{v}]`, `.../ready`, `POST .../infer`.
- MLflow's scoring protocol (`mlflow models serve` clients): `GET /ping`, `/health`, `POST /invocations`.
- Plain: `POST /predict {"texts": [...], "details": false}`.
- `GET /metrics` (Prometheus).

Every inference response names the model and version that answered (body and `X-Model-Name` /
`X-Model-Version` headers); every error is `{"error": "..."}` with a 4xx naming the field (5xx only for
the server's own state: not ready 503, over capacity 503, timeout 504). Readiness is false until the model
is loaded and warmed up. The model loads on a worker thread after the server starts listening (liveness
answers meanwhile); with an alias reference a watcher polls the registry and hot-swaps new versions.
"""
from __future__ import annotations

import asyncio
import json
import logging
import sys
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from domaintune.components.serving import v2
from domaintune.components.serving.models import Source
from domaintune.components.serving.observe import Observe
from domaintune.components.serving.params import ServeParams
from domaintune.components.serving.protocols import ApiError, parse_invocations, parse_predict
from domaintune.components.serving.service import Server

log = logging.getLogger("domaintune.serving")


def _json(obj, status: int = 200, headers: dict | None = None) -> Response:
    return Response(json.dumps(obj, ensure_ascii=False).encode("utf-8"), status, headers,
                    media_type="application/json")


def model_headers(model) -> dict:
    return {"x-model-name": model.name, "x-model-version": model.version}


def create_app(p: ServeParams, source: Source, on_fatal=None) -> FastAPI:
    s = Server(p, source, on_fatal)

    @asynccontextmanager
    async def lifespan(app):
        s.batcher.start()
        watcher = asyncio.get_running_loop().create_task(s.watch(), name="domaintune-watch")
        yield
        # uvicorn has stopped accepting connections and waited (--drain-seconds) for in-flight requests
        s.stopping = True
        s.metrics.ready.set(0)
        watcher.cancel()
        await s.batcher.drain(p.drain_seconds)
        s.loader.shutdown(wait=False, cancel_futures=True)
        log.info("shutdown", extra={"fields": {"served": getattr(s.holder.current, "version", None),
                                               "torch_imported": "torch" in sys.modules}})

    app = FastAPI(title="domaintune serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.server = s
    app.add_middleware(Observe, metrics=s.metrics, access=p.access_log)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        s.metrics.errors.labels(exc.kind).inc()
        request.state.log = {**(getattr(request.state, "log", None) or {}), "error": exc.message}
        model = getattr(request.state, "model", None)
        headers = model_headers(model) if model is not None else {}
        if exc.status == 503:
            headers["retry-after"] = "1"
        return _json({"error": exc.message}, exc.status, headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        kind = "not_found" if exc.status_code == 404 else "bad_request"
        s.metrics.errors.labels(kind).inc()
        message = (f"no such endpoint: {request.method} {request.url.path}" if exc.status_code in (404, 405)
                   else str(exc.detail))
        request.state.log = {**(getattr(request.state, "log", None) or {}), "error": message}
        return _json({"error": message}, exc.status_code, getattr(exc, "headers", None))

    async def infer_with(request: Request, handle, name=None, version=None) -> Response:
        model = s.model_for(request, name, version)
        try:
            return await handle(model, await s.body(request))
        finally:
            s.holder.release(model)

    # ---------------------------------------------------------------------- plain and MLflow
    @app.post("/predict")
    async def predict(request: Request):
        async def handle(model, body):
            texts, details = parse_predict(body, s.limits)
            answers = await s.answers(request, model, texts, details)
            return _json({"model_name": model.name, "model_version": model.version, "predictions": answers},
                         headers=model_headers(model))
        return await infer_with(request, handle)

    @app.post("/invocations")
    async def invocations(request: Request):
        async def handle(model, body):
            texts, details = parse_invocations(body, request.headers.get("content-type", ""), model.input_name,
                                               s.limits)
            answers = await s.answers(request, model, texts, details)
            return _json({"predictions": answers, "model_name": model.name, "model_version": model.version},
                         headers=model_headers(model))
        return await infer_with(request, handle)

    @app.get("/ping")
    @app.get("/health")
    async def ping():
        model = s.holder.current
        if not s.ready:
            return _json({"status": "loading" if model is None else "stopping"}, 503)
        return _json({"status": "ready", "model_name": model.name, "model_version": model.version},
                     headers=model_headers(model))

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(s.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # ---------------------------------------------------------------------- Open Inference Protocol V2
    @app.get("/v2")
    async def server_metadata():
        return _json({"name": "domaintune", "version": _package_version(), "extensions": ["binary_tensor_data"]})

    @app.get("/v2/health/live")
    async def live():
        alive = s.batcher.alive and s.fatal is None
        return _json({"live": alive}, 200 if alive else 503)

    @app.get("/v2/health/ready")
    async def ready():
        return _json({"ready": s.ready}, 200 if s.ready else 503)

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(request: Request, name: str, version: str | None = None):
        model = s.model_for(request, name, version)
        s.holder.release(model)
        return _json(v2.metadata(model), headers=model_headers(model))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(request: Request, name: str, version: str | None = None):
        model = s.model_for(request, name, version)
        s.holder.release(model)
        return _json({"name": model.name, "ready": s.ready}, 200 if s.ready else 503, model_headers(model))

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(request: Request, name: str, version: str | None = None):
        async def handle(model, body):
            texts, requested, binary, details, request_id = v2.parse_infer(
                body, request.headers.get(v2.HEADER), model.input_name, s.limits)
            specs = v2.select_outputs(model, requested)
            details = details or any(spec["detail"] for spec in specs)
            answers = await s.answers(request, model, texts, details)
            content, headers = v2.infer_response(model, answers, specs, binary, request_id)
            return Response(content, 200, {**headers, **model_headers(model)})
        return await infer_with(request, handle, name, version)

    return app


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("domaintune")
    except PackageNotFoundError:
        return "0"
