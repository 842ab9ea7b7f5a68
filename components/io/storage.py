"""Local paths and s3:// URIs behind one interface (boto3; endpoint from AWS_ENDPOINT_URL or a parameter)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from urllib.parse import urlparse

from domaintune.components.core.errors import BadInput


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def s3_client(endpoint_url: str = ""):
    import boto3

    # boto3 reads AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3 itself; an explicit parameter wins.
    return boto3.client("s3", endpoint_url=endpoint_url or None)


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc or not parsed.path.strip("/"):
        raise BadInput(f"{uri}: expected s3://bucket/key")
    return parsed.netloc, parsed.path.lstrip("/")


def fetch(uri: str, endpoint_url: str = "", cache_dir: str | None = None) -> str:
    """Return a local path for URI, downloading s3:// objects (or prefixes, for model dirs) first."""
    uri = object_uri(uri)
    if not is_s3(uri):
        if not os.path.exists(uri):
            raise BadInput(f"{uri}: no such file or directory")
        return uri
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    client = s3_client(endpoint_url)
    target_root = cache_dir or tempfile.mkdtemp(prefix="domaintune-s3-")
    try:
        keys = [
            obj["Key"]
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
            for obj in page.get("Contents", [])
        ]
        if key in keys:  # a single object
            local = os.path.join(target_root, os.path.basename(key))
            client.download_file(bucket, key, local)
            return local
        prefix = key.rstrip("/") + "/"
        keys = [k for k in keys if k.startswith(prefix)]
        if not keys:
            raise BadInput(f"{uri}: no such object or prefix")
        local_dir = os.path.join(target_root, os.path.basename(key.rstrip("/")))
        for k in keys:
            dest = os.path.join(local_dir, k[len(prefix):])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            client.download_file(bucket, k, dest)
        return local_dir
    except (BotoCoreError, ClientError) as exc:
        raise BadInput(f"{uri}: cannot read from S3 ({exc})") from None


def object_uri(uri: str) -> str:
    """KFP's default artifact store names its MinIO objects minio://bucket/key: the same S3 object, reached
    through AWS_ENDPOINT_URL."""
    return "s3://" + uri[len("minio://"):] if uri.startswith("minio://") else uri


def upload(local: str, uri: str, endpoint_url: str = "") -> None:
    """A file, or a directory's files under the prefix URI (s3://bucket/prefix), to object storage."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(object_uri(uri))
    client = s3_client(endpoint_url)
    files = ([(local, key)] if os.path.isfile(local) else
             [(os.path.join(root, name), key.rstrip("/") + "/" + os.path.relpath(os.path.join(root, name), local))
              for root, _, names in os.walk(local) for name in sorted(names)])
    try:
        for path, target in files:
            client.upload_file(path, bucket, target)
    except (BotoCoreError, ClientError) as exc:
        raise BadInput(f"{uri}: cannot write to S3 ({exc})") from None


def content_hash(path: str) -> str:
    """sha256 of a file (or of a directory's files in name order): lineage, and the local cache key."""
    h = hashlib.sha256()
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(root, f) for root, _, names in os.walk(path) for f in names
    )
    for f in files:
        h.update(os.path.relpath(f, path).encode() if f != path else b"")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_dir(path: str):
    """Build a directory beside PATH and move it into place only when the block succeeds.

    A failed stage then leaves no half-written artifact for a cache or a later stage to pick up.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}-", dir=parent)
    try:
        yield tmp
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


LOCK_NAME = ".domaintune-run.lock"


class DirClaim:
    """A directory a run writes into, claimed at its start (`claim_dir`): a lock file inside names the owner;
    released at the end. Used for `--output`, which may hold the user's files: nothing the run did not create
    is ever replaced or deleted."""

    def __init__(self, path: str, created: bool, lock: str):
        self.path, self.created, self.lock = path, created, lock

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.lock)
        if self.created:  # the run made the directory: leave none behind when nothing else is in it
            with contextlib.suppress(OSError):
                os.rmdir(self.path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_output_dir(path: str, flag: str = "--output", reserved: tuple[str, ...] = ()) -> None:
    """BadInput unless PATH can take a run's results: not a file, no file on its way, no other live run writing
    there, and none of the RESERVED names (what the run writes) in it yet — earlier results are never
    overwritten; other files may be there and stay. Without RESERVED it must be empty. Writes nothing."""
    parent = path
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise BadInput(f"{flag} {path}: {'is a file' if parent == path else parent + ' is a file'}, not a directory")
    if not os.path.isdir(path):
        return
    owner = read_lock(os.path.join(path, LOCK_NAME))
    if owner and owner.get("live"):
        raise BadInput(f"{flag} {path}: another domaintune run (pid {owner.get('pid')}, run id {owner.get('run_id')}) "
                       f"is writing there; wait for it or choose another {flag}")
    present = [n for n in sorted(os.listdir(path)) if n != LOCK_NAME]
    taken = [n for n in present if n in reserved] if reserved else present
    if taken:
        raise BadInput(f"{flag} {path}: already holds {', '.join(taken)} (earlier results are never overwritten); "
                       f"choose another {flag}")


def read_lock(lock: str) -> dict | None:
    """The owner a lock file names, with `live`: whether that process still runs on this host (a lock left
    by a killed run is stale and may be taken over)."""
    import socket

    try:
        with open(lock, encoding="utf-8") as f:
            owner = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"live": False}
    if not isinstance(owner, dict):
        return {"live": False}
    pid = owner.get("pid")
    same_host = owner.get("host") == socket.gethostname()
    owner["live"] = (not same_host) or (isinstance(pid, int) and _alive(pid))
    return owner


def claim_dir(path: str, owner: dict, flag: str = "--output", reserved: tuple[str, ...] = ()) -> DirClaim:
    """Claim PATH for this run: create it if needed, then create its lock file exclusively (a second run given
    the same directory is refused; a stale lock of a killed run is taken over). Checks as `check_output_dir`."""
    import socket

    check_output_dir(path, flag, reserved)
    created = not os.path.exists(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"{flag} {path}: cannot create the directory ({exc.strerror})") from None
    lock = os.path.join(path, LOCK_NAME)
    stale = read_lock(lock)
    if stale is not None and not stale.get("live") and read_lock(lock) == stale:  # a killed run's: take it over
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        owner_now = read_lock(lock) or {}
        raise BadInput(f"{flag} {path}: another domaintune run (pid {owner_now.get('pid')}, run id "
                       f"{owner_now.get('run_id')}) is writing there; wait for it or choose another {flag}") from None
    with os.fdopen(fd, "w") as f:
        json.dump({**owner, "pid": os.getpid(), "host": socket.gethostname()}, f)
    return DirClaim(path, created, lock)


def move_into(staging: str, target: str) -> list[str]:
    """Move every entry of STAGING (built beside TARGET, on the same filesystem) into TARGET, each with one
    rename, then remove STAGING. Nothing in TARGET is replaced: when a name is already taken (a file that
    appeared there meanwhile), nothing is moved and the error (exit 1: the run itself went through) says where
    the results are. Returns the names."""
    from domaintune.components.core.errors import DomaintuneError

    names = sorted(os.listdir(staging))
    taken = [n for n in names if os.path.lexists(os.path.join(target, n))]
    if taken:
        raise DomaintuneError(f"--output {target}: {', '.join(taken)} appeared there during the run and were left as they "
                       f"are; this run's results are in {staging}")
    for name in names:
        os.rename(os.path.join(staging, name), os.path.join(target, name))
    os.rmdir(staging)
    return names


def write_json(path: str, obj) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _json_default(value):
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
