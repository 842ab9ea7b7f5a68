"""KFP shell of the export stage: its inputs are ExportParams' fields (tests/test_param_contract.py)."""
from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Model, Output

from domaintune.components.core.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export_op(
    model: Input[Model],
    splits: Input[Dataset],
    max_int8_drop: float,
    max_parity_diff: float,
    int8_per_channel: bool,
    int8_reduce_range: bool,
    export_latency_runs: int,
    onnx: Output[Model],
    export_report: Output[Markdown],
):
    import os
    import shutil

    from domaintune.components.core.runtime import run_stage, stage_params
    from domaintune.components.export.stage import ExportParams, run_export

    params = stage_params("export", ExportParams, locals())
    report = run_stage("export", run_export, model.path, os.path.join(splits.path, "test.parquet"), onnx.path, params)
    shutil.copy(os.path.join(onnx.path, "export_report.md"), export_report.path)
    onnx.metadata.update({"deployable": report["deployable"]})
