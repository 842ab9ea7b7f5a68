"""KFP shells of the evaluate stage and of the champion lookup before it. evaluate_op's inputs are
EvaluateParams' fields plus `champion_version` (champion_op's output); champion_op's are the registry's
coordinates (tests/test_param_contract.py)."""
from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from domaintune.components.core.images import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def champion_op(model_name: str, mlflow_tracking_uri: str) -> str:
    """The version number holding `champion` now ("" when none): evaluate's cache key includes it."""
    from domaintune.components.core.runtime import run_stage
    from domaintune.components.registry.client import champion_version

    return run_stage("champion", champion_version, mlflow_tracking_uri, model_name)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_op(
    model: Input[Model],
    onnx: Input[Model],
    splits: Input[Dataset],
    min_macro_f1: float,
    max_regression: float,
    max_flip_rate: float,
    max_slice_gap: float,
    min_lead_margin: float,
    max_unsupported_number_rate: float,
    min_distinct_summaries: float,
    max_bias_regression: float,
    bias_axes: str,
    min_lift: float,
    max_ood_drop: float,
    slice_columns: str,
    min_slice_size: int,
    identity_terms: str,
    flip_min_prob_change: float,
    model_name: str,
    mlflow_tracking_uri: str,
    baseline_max_rows: int,
    base_model: str,
    s3_endpoint_url: str,
    seed: int,
    ood_data: str,
    ood_label_map: str,
    text_column: str,
    label_column: str,
    champion_version: str,
    evaluation: Output[Artifact],
    test_metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    bias_report: Output[Markdown],
    quality_report: Output[Markdown],
):
    import json
    import os
    import shutil
    import tempfile

    from domaintune.components.core.runtime import log_metrics, run_stage, stage_params
    from domaintune.components.evaluate.stage import EvaluateParams, run_evaluate
    from domaintune.components.evaluation.quality import quality_metrics, render_quality_report
    from domaintune.components.registry.client import fetch_champion

    params = stage_params("evaluate", EvaluateParams, locals())
    with tempfile.TemporaryDirectory() as scratch:
        champion = run_stage("evaluate", fetch_champion, params.mlflow_tracking_uri, params.model_name, scratch,
                             champion_version)
        result = run_stage("evaluate", run_evaluate, model.path, onnx.path, splits.path, evaluation.path, params,
                           *(champion or (None, None)))
    metrics = result["metrics"]
    log_metrics(test_metrics, {**{k: v for k, v in metrics.items() if k != "n"},
                               "gate_passed": float(result["gate"]["passed"]), **quality_metrics(result)})
    if "confusion_matrix" in metrics:  # a classification task's confusion matrix, shown in the KFP UI
        confusion.log_confusion_matrix(metrics["labels"], metrics["confusion_matrix"])
    with open(confusion.path, "w") as f:
        json.dump(confusion.metadata, f)
    shutil.copy(os.path.join(evaluation.path, "bias_report.md"), bias_report.path)
    # baselines, calibration (the reliability diagram inlined) and out-of-domain sets, for the KFP UI
    with open(quality_report.path, "w") as f:
        f.write(render_quality_report(result, evaluation.path, inline_images=True))
