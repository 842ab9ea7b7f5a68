"""KFP shell of the ingest stage: its inputs are IngestParams' fields (tests/test_param_contract.py)."""
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Output

from domaintune.components.core.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest_op(
    train_data: str,
    validation_data: str,
    test_data: str,
    task: str,
    text_column: str,
    label_column: str,
    target_column: str,
    slice_columns: str,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    s3_endpoint_url: str,
    data_version: str,
    strict_iob2: bool,
    splits: Output[Dataset],
    data_report: Output[Artifact],
):
    from domaintune.components.core.runtime import run_stage, stage_params
    from domaintune.components.ingest.stage import IngestParams, run_ingest

    params = stage_params("ingest", IngestParams, locals())
    report = run_stage("ingest", run_ingest, params, splits.path, data_report.path)
    data_report.metadata.update({"task": report["task"], "rows": report["rows"], "labels": report["labels"]})
