"""The server's state and the work behind the routes: loading the model, polling the registry and
hot-swapping (`watch`), reading a bounded request body, taking the current model for a request, and
getting its answers from the batcher with the request timeout.
"""
from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from fastapi import Request

from domaintune.components.core.errors import BadInput, DomaintuneError
from domaintune.components.inference.onnx_backend import physical_cores
from domaintune.components.serving.batcher import Batcher, Overloaded
from domaintune.components.serving.models import ModelHolder, Source, load_model
from domaintune.components.serving.observe import Metrics
from domaintune.components.serving.params import ServeParams
from domaintune.components.serving.protocols import ApiError, Limits

log = logging.getLogger("domaintune.serving")
EXPECTED_LOAD_ERRORS = (DomaintuneError, OSError, ValueError)
INTRA_OP_THREADS = 1  # per batch; the batcher runs `workers` batches at once (serving/batcher.py)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:400] if text else type(exc).__name__


class Server:
    """The app's state: params, source, holder, batcher, metrics, and the load/poll watcher."""

    def __init__(self, p: ServeParams, source: Source, on_fatal=None):
        self.p, self.source, self.on_fatal = p, source, on_fatal or (lambda: None)
        self.metrics = Metrics()
        self.holder = ModelHolder()
        self.workers = p.threads or physical_cores()
        self.batcher = Batcher(p.max_batch_size, p.max_latency_ms, p.max_queue, self.metrics, self.workers)
        self.limits = Limits(p.max_texts, p.max_text_chars)
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="domaintune-load")
        self.fatal: tuple[str, int] | None = None
        self.stopping = False

    @property
    def ready(self) -> bool:
        return self.holder.current is not None and not self.stopping and self.batcher.alive

    # ------------------------------------------------------------------------------ load and hot swap
    async def _load(self, version: str):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.loader, load_model, self.source, version, INTRA_OP_THREADS,
                                          self.p.max_batch_size)

    async def watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            version = await loop.run_in_executor(self.loader, self.source.wanted_version)
            if version is None:
                raise BadInput(f"--model {self.source.ref}: no version of {self.source.registry_name!r} holds the "
                               f"alias {self.source.alias!r}")
            self._serve(await self._load(version))
        except Exception as exc:
            expected = isinstance(exc, EXPECTED_LOAD_ERRORS) or type(exc).__name__ == "MlflowException"
            self.fatal = (one_line(exc), getattr(exc, "exit_code", 1))
            self.metrics.errors.labels("load").inc()
            log.error("model_load_failed", exc_info=None if expected else exc,
                      extra={"fields": {"model": self.source.ref, "error": self.fatal[0]}})
            self.on_fatal()
            return
        if self.source.alias is None or not self.p.poll_seconds:
            return
        failed = None
        while True:
            await asyncio.sleep(self.p.poll_seconds)
            try:
                version = await loop.run_in_executor(self.loader, self.source.wanted_version)
            except Exception as exc:  # the registry is down or slow: keep serving what we have
                self.metrics.errors.labels("registry").inc()
                log.warning("registry_poll_failed", extra={"fields": {"error": one_line(exc)}})
                continue
            current = self.holder.current
            if version is None or version in (current.version, failed):
                continue
            try:
                model = await self._load(version)
            except Exception as exc:
                failed = version  # not retried until the alias moves again
                self.metrics.errors.labels("reload").inc()
                log.warning("model_load_failed", extra={"fields": {"version": version, "error": one_line(exc),
                                                                   "serving": current.version}})
                continue
            failed = None
            self._serve(model)

    def _serve(self, model) -> None:
        old = self.holder.swap(model)
        self.metrics.serving(model, old)
        if old is not None:
            self.metrics.swaps.inc()
            log.info("model_swapped", extra={"fields": {"model": model.name, "from": old.version, "to": model.version,
                                                        "in_flight_on_old": old.refs}})

    # ------------------------------------------------------------------------------ requests
    async def body(self, request: Request) -> bytes:
        limit = self.p.max_body_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise ApiError(413, f"request body is {length} bytes; at most {limit} (--max-body-bytes)", "too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body is over {limit} bytes (--max-body-bytes)", "too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def model_for(self, request: Request, name: str | None = None, version: str | None = None):
        """Acquire the current model (the caller releases it), checking a V2 path's name and version."""
        model = self.holder.acquire()
        if model is None:
            raise ApiError(503, "the model is still loading (GET /v2/health/ready says when it is ready)", "not_ready")
        if (name is not None and name != model.name) or (version is not None and version != model.version):
            self.holder.release(model)
            wanted = name if version is None else f"{name} version {version}"
            raise ApiError(404, f"unknown model {wanted!r}: this server serves {model.name!r} version "
                                f"{model.version}", "unknown_model")
        request.state.log = {"model_version": model.version}
        request.state.model = model
        return model

    async def answers(self, request: Request, model, texts: list[str], details: bool) -> list[dict]:
        request.state.log["texts"] = len(texts)
        try:
            outputs = await asyncio.wait_for(self.batcher.submit(model, texts), self.p.request_timeout)
        except Overloaded as exc:
            raise ApiError(503, str(exc), "overloaded") from None
        except (asyncio.TimeoutError, TimeoutError):
            raise ApiError(504, f"no answer within {self.p.request_timeout:g} s (--request-timeout)", "timeout") from None
        self.metrics.texts.inc(len(texts))
        return model.answers(outputs, texts, details)


