import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "fixtures", "tiny.csv")
SHARED_DATA = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "data"))


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
    from domaintune.components.tokenize.stage import run_tokenize

    root = tmp_path_factory.mktemp("trained")
    run_ingest(ingest_params(slice_columns=["channel"], validation_fraction=0.2, test_fraction=0.2),
               str(root / "splits"), str(root / "data_report.json"))
    base = resolve_model("all-MiniLM-L6-v2")
    run_tokenize(str(root / "splits"), base, str(root / "tokens"), 64)
    history = run_finetune(str(root / "tokens"), base, str(root / "model"), str(root / "history.json"),
                           finetune_params(epochs=4, batch_size=8, learning_rate=3e-4))
    return {"root": root, "splits": str(root / "splits"), "tokens": str(root / "tokens"),
            "model": str(root / "model"), "history": history, "base": base}


def finetune_params(**overrides):
    """FinetuneParams with the pipeline's defaults (the pipeline signature is their one source)."""
    from domaintune.components.finetune.stage import FinetuneParams

    return FinetuneParams(**{**pipeline_defaults(FinetuneParams), **overrides})


def pipeline_defaults(cls):
    from domaintune.pipelines.params import pipeline_params

    defaults = {p.name: p.default for p in pipeline_params()}
    return {k: defaults[k] for k in cls.__dataclass_fields__ if k in defaults}


def ingest_params(**overrides):
    from domaintune.components.ingest.stage import IngestParams

    values = {**pipeline_defaults(IngestParams), "train_data": TINY, **overrides}
    if isinstance(values["slice_columns"], str):
        values["slice_columns"] = [c for c in values["slice_columns"].split(",") if c]
    return IngestParams(**values)
