"""This machine's pip configuration, made usable by a `docker build` without baking any of it into a layer.

    python3 docker/pip_bridge.py DIR      (docker/build.sh starts it and stops it after the build)

Reads `pip config list` (files and PIP_* variables), writes into DIR (mode 700):
  pip.conf             the same settings, local paths replaced by loopback URLs, cert/constraint by secret paths
  pip-ca.crt           the CA bundle pip is configured with (`cert`), if any
  pip-constraints.txt  the constraint files pip is configured with (`constraint`), if any
and serves the local index and wheel directories it names (file:// URLs, plain directories) read-only on
127.0.0.1:PORT until killed; DIR/ready holds PORT once it listens. build.sh hands the three files to
the build as BuildKit secrets (mounted under /run/secrets only while a RUN step executes) and builds
with --network host, so the RUN steps reach the server and whatever index this machine's pip reaches.
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import urllib.parse

SECRETS = "/run/secrets"  # where BuildKit mounts `--mount=type=secret,id=NAME` by default
KEYS = ("index-url", "extra-index-url", "find-links", "cert", "constraint", "trusted-host", "timeout",
        "default-timeout", "retries", "no-index", "prefer-binary", "only-binary")


def pip_config() -> dict[str, str]:
    """Effective global/install settings: a PIP_* variable (`:env:`) wins over the files, as in pip."""
    pip = [shutil.which("pip")] if shutil.which("pip") else [sys.executable, "-m", "pip"]
    listing = subprocess.run(pip + ["config", "list"], capture_output=True, text=True, check=True).stdout
    rank = {":env:": 2, "install": 1, "global": 0}
    found: dict[str, tuple[int, str]] = {}
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if section in rank and name in KEYS and value:
            value = value.strip().strip("'\"")
            if name not in found or rank[section] >= found[name][0]:
                found[name] = (rank[section], value)
    return {name: value for name, (_, value) in found.items()}


class Bridge:
    """Maps local directories to loopback URLs and remembers which directories may be served."""

    def __init__(self, port: int):
        self.port = port
        self.roots: set[str] = set()

    def location(self, value: str, index: bool) -> str:
        path = urllib.parse.urlparse(value).path if value.startswith("file:") else value
        if "://" in value and not value.startswith("file:"):
            return value  # a URL the build reaches itself (host network)
        path = os.path.realpath(path)
        # An index's pages link to their files relatively (../../files/x.whl): serve the index's parent too.
        self.roots.add(os.path.dirname(path) if index else path)
        return f"http://127.0.0.1:{self.port}{urllib.parse.quote(path)}/"

    def allowed(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(real == root or real.startswith(root.rstrip("/") + "/") for root in self.roots)


def translate(config: dict[str, str], bridge: Bridge, out: str) -> str:
    lines = ["[global]"]
    for name, value in config.items():
        if name in ("index-url", "extra-index-url", "find-links"):
            value = " ".join(bridge.location(v, index=name != "find-links") for v in value.split())
        elif name == "cert":
            shutil.copyfile(value, os.path.join(out, "pip-ca.crt"))
            value = f"{SECRETS}/pip-ca.crt"
        elif name == "constraint":
            with open(os.path.join(out, "pip-constraints.txt"), "w") as f:
                for source in value.split():
                    with open(source) as part:
                        f.write(part.read().rstrip("\n") + "\n")
            value = f"{SECRETS}/pip-constraints.txt"
        lines.append(f"{name} = {value}")
    return "\n".join(lines) + "\n"


def handler(bridge: Bridge):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path):  # URL path = file system path, inside the configured roots only
            local = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
            return local if bridge.allowed(local) else "/nonexistent"

        def do_POST(self):  # read-only
            self.send_error(405)

        def log_message(self, *args):  # the build's own output names what pip fetched
            pass

    return functools.partial(Handler, directory="/")


def main(out: str) -> None:
    os.makedirs(out, mode=0o700, exist_ok=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), None)
    bridge = Bridge(server.server_address[1])
    text = translate(pip_config(), bridge, out)
    server.RequestHandlerClass = handler(bridge)
    with open(os.path.join(out, "pip.conf"), "w") as f:
        f.write(text)
    with open(os.path.join(out, "ready"), "w") as f:
        f.write(str(bridge.port))
    server.serve_forever()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: pip_bridge.py DIR")
    main(sys.argv[1])
