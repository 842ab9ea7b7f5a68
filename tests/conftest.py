import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist each worker (and every process it starts: the pipeline's tasks, the containers, which
    are passed OMP_* variables) gets its share of the cores, before torch is imported. Two workers each running
    PyTorch and onnxruntime on all cores oversubscribe them, and spin-waiting threads then make every training
    step ~3.4x slower (557 vs 153 ms per MiniLM step, two side by side on 2 cores: bench/shared_cores.py)."""
    from domaintune.components.training.launch import threads_per_process  # imports no torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[key] = str(threads_per_process(workers))


_share_the_cores_between_workers()

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "fixtures", "tiny.csv")
SHARED_DATA = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "data"))


class JsonApiHandler(BaseHTTPRequestHandler):
    """What the fake API servers of the tests (KFP, Kubernetes) share: quiet, JSON replies."""

    def log_message(self, *args):
        pass

    def _reply(self, obj, status=200):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def use_mlflow_store(uri):
    """Point this process's MLflow at one store for tracking *and* registry: an earlier test's
    registry.client() (or a fixture restoring it) pins the registry URI process-wide, and set_tracking_uri
    alone would leave `models:/` lookups reading that other store."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def served_without_torch(directory: str, text: str):
    """Load DIRECTORY's serving predictor in a fresh process and answer TEXT; returns the answer's repr after
    asserting that neither torch nor transformers was imported (the server's promise: no PyTorch to start)."""
    code = ("import sys; from domaintune.components.tasks import task_of; d = sys.argv[1]; "
            "p = task_of(d).serving_predictor(d, 1); print(repr(p.predict([sys.argv[2]], 1))); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, directory, text], capture_output=True, text=True, check=True)
    answer, imported = out.stdout.strip().splitlines()[-2:]
    assert imported == "[]", out.stdout + out.stderr
    return answer


def shared_data(*parts):
    """Path under ../shared/data, or skip: a user's clone has no ../shared."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"needs ../shared/data/{'/'.join(parts)} (not in a user's clone)")
    return path


@pytest.fixture
def tiny_csv():
    return TINY


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """One tiny end-to-end training (ingest → tokenize → finetune) shared by the tests that need a model."""
    from domaintune.components.finetune.stage import FinetuneParams, run_finetune
    from domaintune.components.ingest.stage import IngestParams, run_ingest
    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.tokenize.stage import TokenizeParams, run_tokenize

    root = tmp_path_factory.mktemp("trained")
    run_ingest(ingest_params(slice_columns="channel", validation_fraction=0.2, test_fraction=0.2),
               str(root / "splits"), str(root / "data_report.json"))
    base = resolve_model("all-MiniLM-L6-v2")
    run_tokenize(str(root / "splits"), base, str(root / "tokens"), TokenizeParams(max_length=64))
    history = run_finetune(str(root / "tokens"), base, str(root / "model"), str(root / "history.json"),
                           finetune_params(epochs=4, batch_size=8, learning_rate=3e-4))
    return {"root": root, "splits": str(root / "splits"), "tokens": str(root / "tokens"),
            "model": str(root / "model"), "history": history, "base": base}


@pytest.fixture(scope="session")
def exported(trained):
    """The tiny trained model's ONNX export (the deployable evaluate scores)."""
    from domaintune.components.export.stage import ExportParams, run_export

    out = str(trained["root"] / "onnx")
    if not os.path.isdir(out):
        run_export(trained["model"], os.path.join(trained["splits"], "test.parquet"), out,
                   ExportParams(export_latency_runs=0))
    return out


def finetune_params(**overrides):
    """FinetuneParams with its defaults (the dataclass is their one place) and OVERRIDES."""
    from domaintune.components.finetune.stage import FinetuneParams

    return FinetuneParams(**overrides)


def pipeline_defaults(cls):
    """The pipeline's defaults for CLS's fields (tests/test_param_contract.py proves they are CLS's own)."""
    from domaintune.pipelines.params import pipeline_params

    defaults = {p.name: p.default for p in pipeline_params()}
    return {k: defaults[k] for k in cls.__dataclass_fields__ if k in defaults}


def ingest_params(**overrides):
    from domaintune.components.ingest.stage import IngestParams

    if isinstance(overrides.get("slice_columns"), list):
        overrides["slice_columns"] = ",".join(overrides["slice_columns"])
    return IngestParams(**{"train_data": TINY, **overrides})


@pytest.fixture(scope="session")
def tiny_tokens(tmp_path_factory):
    """The tiny sample ingested and tokenized (no training): for tests that train on their own terms."""
    from domaintune.components.ingest.stage import run_ingest
    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.tokenize.stage import TokenizeParams, run_tokenize

    root = tmp_path_factory.mktemp("tiny-tokens")
    run_ingest(ingest_params(validation_fraction=0.2, test_fraction=0.2), str(root / "splits"),
               str(root / "data_report.json"))
    base = resolve_model("all-MiniLM-L6-v2")
    run_tokenize(str(root / "splits"), base, str(root / "tokens"), TokenizeParams(max_length=64))
    return {"tokens": str(root / "tokens"), "base": base}
