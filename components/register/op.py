"""KFP shell of the register stage: its inputs are RegisterParams' fields, the run id placeholder and the
reports of every stage (tests/test_param_contract.py)."""
from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from domaintune.components.core.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_op(
    model: Input[Model],
    data_report: Input[Artifact],
    tokens: Input[Dataset],
    pretrain_plan: Input[Artifact],
    history: Input[Artifact],
    evaluation: Input[Artifact],
    onnx: Input[Model],
    model_name: str,
    experiment_name: str,
    mlflow_tracking_uri: str,
    auto_promote: bool,
    pipeline_run_id: str,
    summary: Output[Artifact],
) -> str:
    import os

    from domaintune.components.core.runtime import run_stage, stage_params
    from domaintune.components.register.stage import RegisterParams, RunInputs, run_register

    params = stage_params("register", RegisterParams, locals())
    inputs = RunInputs(model_dir=model.path, data_report=data_report.path,
                       token_stats=os.path.join(tokens.path, "token_stats.json"), history=history.path,
                       evaluation_dir=evaluation.path, export_dir=onnx.path, pretrain_plan=pretrain_plan.path)
    result = run_stage("register", run_register, inputs, summary.path, params, pipeline_run_id)
    summary.metadata.update({"status": result["status"], "version": result["registry"]["version"]})
    # Also returned as a parameter: kfp.local can pick a parameter (not an artifact) out of dsl.OneOf.
    return summary.path
