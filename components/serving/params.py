"""`domaintune serve`'s parameters: the one place of their defaults, validation and CLI flags.

Light on purpose (argparse and dataclasses only): `domaintune --help` and the parser import it without
paying for FastAPI, onnxruntime or MLflow.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from domaintune.components.core.errors import BadInput, is_number, non_negative, positive

MODEL_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass
class ServeParams:
    model: str
    host: str = "127.0.0.1"
    port: int = 8080  # KServe's port for a custom predictor
    tracking_uri: str = ""
    model_name: str = ""  # default: the registered name (models:/NAME...), the run's, or the directory's
    poll_seconds: float = 30.0  # alias references only; 0 turns polling off
    max_batch_size: int = 32
    max_latency_ms: float = 5.0
    max_texts: int = 256
    max_text_chars: int = 20_000
    max_body_bytes: int = 4 * 1024 * 1024
    request_timeout: float = 30.0
    max_queue: int = 4096
    threads: int = 0  # inference threads; 0: physical cores within the CPU quota (onnx_backend.physical_cores)
    drain_seconds: float = 30.0
    access_log: bool = True
    log_level: str = "info"

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise BadInput("--model is required: models:/NAME@ALIAS, models:/NAME/N or a run directory")
        if not is_number(self.port) or int(self.port) != self.port or not 0 <= self.port <= 65535:
            raise BadInput(f"--port must be an integer in 0..65535 (got {self.port!r})")
        for name in ("max_batch_size", "max_texts", "max_text_chars", "max_body_bytes", "max_queue"):
            positive(name.replace("_", "-"), getattr(self, name))
        for name in ("max_latency_ms", "poll_seconds", "drain_seconds"):
            non_negative(name.replace("_", "-"), getattr(self, name))
        positive("request-timeout", self.request_timeout, kind=float)
        non_negative("threads", self.threads, kind=int)
        if self.model_name and not set(self.model_name) <= MODEL_NAME_CHARS:
            raise BadInput(f"--model-name {self.model_name!r}: use letters, digits, '-', '_' and '.' only "
                           "(it is a URL path segment: /v2/models/NAME)")
        if self.max_queue < self.max_texts:
            raise BadInput(f"--max-queue ({self.max_queue}) must be at least --max-texts ({self.max_texts})")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise BadInput(f"--log-level must be one of debug, info, warning, error (got {self.log_level!r})")


HELP = {
    "model": "models:/NAME@ALIAS (hot-swapped when the alias moves), models:/NAME/N, a `domaintune run` "
             "output directory or an ONNX export directory",
    "host": "address to listen on (0.0.0.0 in a container)",
    "port": "port to listen on",
    "tracking_uri": "MLflow tracking URI for models:/ references (default: MLFLOW_TRACKING_URI or ./mlflow.db)",
    "model_name": "the name clients use (/v2/models/NAME); default: the registered model's name",
    "poll_seconds": "how often to check where the alias points (models:/NAME@ALIAS only; 0: never)",
    "max_batch_size": "most texts run through the model at once",
    "max_latency_ms": "most time a request waits for others to share its batch",
    "max_texts": "most texts in one request",
    "max_text_chars": "most characters in one text",
    "max_body_bytes": "largest request body",
    "request_timeout": "seconds a request may take before it is answered 504",
    "max_queue": "most texts waiting for the model; more are answered 503 (back-pressure)",
    "threads": "inference threads, each running one batch at a time on one core (0: the physical cores "
               "within the container's CPU quota)",
    "drain_seconds": "on SIGTERM, how long in-flight requests may take to finish",
    "log_level": "debug, info, warning or error",
}


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of `domaintune serve`, one per ServeParams field, defaults from the dataclass."""
    for f in dataclasses.fields(ServeParams):
        flag = "--" + f.name.replace("_", "-")
        if f.name == "access_log":
            parser.add_argument("--no-access-log", dest="access_log", action="store_false",
                                help="do not log one JSON line per request")
            continue
        kind = {"int": int, "float": float}.get(str(f.type), str)
        default = None if f.default is dataclasses.MISSING else f.default
        parser.add_argument(flag, type=kind, default=default, required=f.name == "model",
                            help=HELP[f.name] + ("" if default in (None, "") else f" (default: {default})"))


def params_from_args(args: argparse.Namespace) -> ServeParams:
    values = vars(args)
    return ServeParams(**{f.name: values[f.name] for f in dataclasses.fields(ServeParams) if f.name in values})
