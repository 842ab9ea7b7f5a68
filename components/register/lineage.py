"""Lineage of a run: the code (git commit), the packages, the data files with their sha256, as MLflow tags
and dataset inputs."""
from __future__ import annotations

import os
import platform
import subprocess
import time

PACKAGES = ("domaintune", "torch", "transformers", "peft", "datasets", "kfp", "mlflow", "onnxruntime")


def package_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def git_commit(source_dir: str | None = None) -> tuple[str, bool | None]:
    """(commit, dirty) of the code that ran.

    `git rev-parse HEAD` in the installed package's source directory when that directory is a git checkout
    that tracks the package (an editable install; not a venv that merely sits inside some repository),
    else the DOMAINTUNE_GIT_COMMIT variable (the image build sets it), else "unknown". `dirty` is whether
    tracked files differ from the commit (None when not known)."""
    if source_dir is None:
        import domaintune.components as package

        source_dir = os.path.dirname(os.path.abspath(package.__file__))

    def git(*args):
        return subprocess.run(["git", "-C", source_dir, *args], capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "HEAD")
        tracked = git("ls-files", "--error-unmatch", "--", "__init__.py")
        if head.returncode == 0 and tracked.returncode == 0 and len(head.stdout.strip()) >= 40:
            status = git("status", "--porcelain", "--untracked-files=no")
            return head.stdout.strip(), (bool(status.stdout.strip()) if status.returncode == 0 else None)
    except (OSError, subprocess.SubprocessError):
        pass
    return os.environ.get("DOMAINTUNE_GIT_COMMIT", "").strip() or "unknown", None


def data_sources(data: dict) -> dict:
    """{role: {"uri", "sha256"}} for the data files ingest read (train_data, validation_data, test_data)."""
    sha = data.get("data_sha256") or {}
    params = data.get("params") or {}
    out = {}
    for role in ("train_data", "validation_data", "test_data"):
        uri = params.get(role) or ""
        if uri in sha:
            out[role] = {"uri": uri, "sha256": sha[uri]}
    for uri, digest in sha.items():  # anything not matched to a role still counts
        if not any(v["uri"] == uri for v in out.values()):
            out[f"data_{len(out)}"] = {"uri": uri, "sha256": digest}
    return out


def lineage_tags(data: dict, pipeline_run_id: str, base_model: str) -> dict:
    commit, dirty = git_commit()
    tags = {"pipeline_run_id": pipeline_run_id, "kfp.run_id": pipeline_run_id, "git_commit": commit,
            "mlflow.source.git.commit": commit, "base_model": base_model,
            "data_version": str((data.get("params") or {}).get("data_version", ""))}
    if dirty is not None:
        tags["git_dirty"] = str(dirty).lower()
    for role, src in data_sources(data).items():
        tags[f"data.{role}.uri"] = src["uri"]
        tags[f"data.{role}.sha256"] = src["sha256"]
    tags.update({f"version.{k}": v for k, v in package_versions().items()})
    return tags


def log_datasets(mlflow, data: dict) -> None:
    """The data files as MLflow dataset inputs (source URI + content digest): the UI's Datasets column.
    Concurrent runs logging the same dataset race on its first insert: retried."""
    import warnings

    try:
        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
    except ImportError:
        return
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
    for role, src in data_sources(data).items():
        for attempt in range(3):
            try:
                uri = src["uri"] if "://" in src["uri"] else os.path.abspath(src["uri"])
                dataset = MetaDataset(source=resolve_dataset_source(uri), name=os.path.basename(src["uri"]) or role,
                                      digest=src["sha256"][:32])
                mlflow.log_input(dataset, context=role.removesuffix("_data"))
                break
            except Exception as exc:  # lineage is also in the tags: this is no reason to fail a registration
                if attempt == 2:
                    print(f"register: {role} not logged as an MLflow dataset input ({type(exc).__name__}: {exc})")
                time.sleep(0.3 * (attempt + 1))
