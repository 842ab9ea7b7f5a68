"""`domaintune serve`: uvicorn running the app, with graceful shutdown.

On SIGTERM/SIGINT uvicorn stops accepting connections, lets in-flight requests finish (up to
`--drain-seconds`), then the app's lifespan drains the batcher and stops the registry watcher. A model
that cannot be loaded at start (bad reference, no ONNX export, registry unreachable) stops the server
with one error line and exit code 2 (bad input) or 1; a failed reload later only logs a warning and keeps
serving the version it has.
"""
from __future__ import annotations

import logging
import os

from domaintune.components.core.errors import BadInput, DomaintuneError
from domaintune.components.serving.params import ServeParams

log = logging.getLogger("domaintune.serving")


def build(p: ServeParams):
    """(uvicorn.Server, app) for P; the server is not started."""
    import uvicorn

    from domaintune.components.core.runtime import set_offline_defaults
    from domaintune.components.serving.app import create_app
    from domaintune.components.serving.models import Source

    set_offline_defaults()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stderr is JSON lines only
    source = Source.parse(p.model, p.tracking_uri, p.model_name)
    holder: dict = {}
    app = create_app(p, source, on_fatal=lambda: setattr(holder["server"], "should_exit", True))
    config = uvicorn.Config(app, host=p.host, port=p.port, log_config=None, access_log=False, lifespan="on",
                            timeout_graceful_shutdown=int(p.drain_seconds) or None, server_header=False,
                            log_level=p.log_level)
    holder["server"] = server = _Server(uvicorn.Server)(config)
    return server, app


def _Server(base):
    class Server(base):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises a captured SIGTERM after its graceful shutdown, so the process would die of
            # it (exit -15/143); a drained shutdown is a clean exit here (0), as for every other command.
            getattr(self, "_captured_signals", []).clear()

    return Server


def serve(p: ServeParams) -> int:
    from domaintune.components.serving.observe import configure_logging

    server, app = build(p)  # a bad --model fails here, before anything is logged or listened on
    configure_logging(p.log_level)
    log.info("starting", extra={"fields": {"model": p.model, "host": p.host, "port": p.port,
                                           "max_batch_size": p.max_batch_size, "max_latency_ms": p.max_latency_ms,
                                           "inference_threads": app.state.server.workers,
                                           "poll_seconds": p.poll_seconds if app.state.server.source.alias else 0}})
    server.run()
    fatal = app.state.server.fatal
    if fatal is not None:
        message, code = fatal
        raise BadInput(message) if code == 2 else DomaintuneError(message)
    return 0
