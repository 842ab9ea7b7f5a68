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
