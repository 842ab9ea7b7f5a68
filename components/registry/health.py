"""A tracking server that is down, or refuses us, fails a stage in seconds with one line naming the URI
and the cause, instead of MLflow's minutes of silent retries."""
from __future__ import annotations

import contextlib
import os
import time

from domaintune.components.core.errors import BadInput


# ------------------------------------------------------------------------- a server that is down
# MLflow's HTTP client retries each request 7 times with a backoff factor of 2 and waits up to 120 s per try:
# ~4 minutes per request before it gives up, times every request a stage makes. These bounds (environment
# defaults; a deployment may set its own) make one request give up after ~7 s on a refused connection
# (3 retries, backoff 1 s, 2 s, 4 s). The per-try timeout stays long enough for a model upload through a
# proxying server (60 s per socket operation); a server that stops answering is caught first by the health
# check every registry stage starts with (check_server: 5 s per try).
HTTP_BOUNDS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
HEALTH_ATTEMPTS, HEALTH_TIMEOUT_S = 3, 5.0  # the health check: at most 3 x 5 s plus 0.5 + 1 s between tries
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def bound_http_waits() -> None:
    for key, value in HTTP_BOUNDS.items():
        os.environ.setdefault(key, value)


def is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def connection_problem(exc: BaseException) -> str | None:
    """A short cause when EXC means the tracking server could not be reached (refused, unknown host, timed out,
    dropped, a gateway saying the server behind it is down), else None: other errors keep their own meaning."""
    text = f"{type(exc).__name__}: {exc}"
    causes = (("Connection refused", "connection refused"), ("Name or service not known", "unknown host"),
              ("nodename nor servname", "unknown host"), ("Temporary failure in name resolution", "unknown host"),
              ("No route to host", "no route to host"), ("Network is unreachable", "network unreachable"),
              ("timed out", "timed out"), ("Timeout", "timed out"), ("RemoteDisconnected", "connection closed by the server"),
              ("Connection reset", "connection reset"), ("Connection aborted", "connection aborted"),
              ("too many 502 error", "HTTP 502 (bad gateway)"), ("too many 503 error", "HTTP 503 (unavailable)"),
              ("too many 504 error", "HTTP 504 (gateway timeout)"), ("Failed to establish a new connection", "no connection"),
              ("ConnectionError", "no connection"), ("Max retries exceeded", "no answer"))
    for needle, cause in causes:
        if needle in text:
            return cause
    return None


def unavailable(uri: str, doing: str, cause: str, seconds: float, detail: str = ""):
    from domaintune.components.core.errors import RegistryUnavailable

    return RegistryUnavailable(f"MLflow tracking server {uri} unreachable{' ' + doing if doing else ''}: {cause} "
                               f"(gave up after {seconds:.1f} s{detail}); rerun when it is back")


@contextlib.contextmanager
def reachable(uri: str, doing: str):
    """Turn "the server is not there" inside the block into one RegistryUnavailable line naming URI, the cause
    and how long was waited; any other error passes unchanged."""
    started = time.monotonic()
    try:
        yield
    except Exception as exc:  # noqa: BLE001 — re-raised unless it is a connection problem
        cause = connection_problem(exc) if is_remote(uri) else None
        if cause is None:
            raise
        retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
        raise unavailable(uri, doing, cause, time.monotonic() - started,
                          f"; each request tried {int(retries) + 1 if retries.isdigit() else '?'} times") from None


def check_server(uri: str, attempts: int = HEALTH_ATTEMPTS, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """For an http(s) tracking URI: the server answers (`/health`, ATTEMPTS tries of TIMEOUT seconds, 0.5 s and
    1 s apart: a down server is known in ~2 s, a silent one in at most ~16 s) and accepts the credentials (an
    authenticated read). Unreachable: RegistryUnavailable (exit 1); credentials refused: BadInput (exit 2).
    Other URIs (a local sqlite file, a directory) have nothing to check."""
    if not is_remote(uri):
        return
    import requests

    started, cause = time.monotonic(), None
    insecure = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true"
    verify = False if insecure else (os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or True)
    for attempt in range(attempts):
        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=timeout, verify=verify)
            cause = None if response.status_code < 500 else f"HTTP {response.status_code} from /health"
        except requests.exceptions.RequestException as exc:
            cause = connection_problem(exc) or type(exc).__name__
        if cause is None:
            break
        if attempt < attempts - 1:
            time.sleep(0.5 * 2 ** attempt)
    if cause is not None:
        raise unavailable(uri, "", cause, time.monotonic() - started, f", {attempts} tries of at most {timeout:g} s")
    _check_credentials(uri)


def _check_credentials(uri: str) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    bound_http_waits()
    try:
        with reachable(uri, "checking the credentials"):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except MlflowException as exc:
        if exc.error_code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or " 401 " in str(exc) or " 403 " in str(exc):
            given = [k for k in CREDENTIAL_ENV if os.environ.get(k)]
            raise BadInput(f"--mlflow-tracking-uri {uri}: the server refused the credentials ({exc.error_code}; "
                           f"{'set: ' + ', '.join(given) if given else 'none set'}): set MLFLOW_TRACKING_USERNAME and "
                           f"MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN") from None
        raise
