"""Thin KFP shells: each imports its stage from the installed `domaintune` package and calls it.

Lightweight components with the project's image and `install_kfp_package=False`: the same form runs
under `kfp.local` (SubprocessRunner, current environment) and on a cluster (the image has kfp and the
project). Bodies must stay self-contained: KFP ships only the function's source.
"""
import os

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

IMAGE = os.environ.get("DOMAINTUNE_IMAGE", "ghcr.io/domaintune/domaintune:0.1.0-cpu")
GPU_IMAGE = os.environ.get("DOMAINTUNE_GPU_IMAGE", "ghcr.io/domaintune/domaintune:0.1.0-cuda")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest_op(
    train_data: str,
    validation_data: str,
    test_data: str,
    text_column: str,
    label_column: str,
    slice_columns: str,
    validation_fraction: float,
    test_fraction: float,
    seed: int,
    s3_endpoint_url: str,
    data_version: str,
    splits: Output[Dataset],
    data_report: Output[Artifact],
):
    from domaintune.components.ingest import IngestParams, run_ingest
    from domaintune.components.runtime import csv_list, run_stage

    params = run_stage("ingest", IngestParams, train_data=train_data, validation_data=validation_data,
                       test_data=test_data, text_column=text_column, label_column=label_column,
                       slice_columns=csv_list(slice_columns), validation_fraction=validation_fraction,
                       test_fraction=test_fraction, seed=seed, s3_endpoint_url=s3_endpoint_url,
                       data_version=data_version)
    report = run_stage("ingest", run_ingest, params, splits.path, data_report.path)
    data_report.metadata.update({"rows": report["rows"], "labels": report["labels"]})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tokenize_op(
    splits: Input[Dataset],
    base_model: str,
    max_length: int,
    s3_endpoint_url: str,
    tokens: Output[Dataset],
):
    from domaintune.components.models import resolve_model
    from domaintune.components.runtime import run_stage
    from domaintune.components.tokenization import run_tokenize

    model_dir = run_stage("tokenize", resolve_model, base_model, s3_endpoint_url)
    stats = run_stage("tokenize", run_tokenize, splits.path, model_dir, tokens.path, max_length)
    tokens.metadata.update({name: s["examples"] for name, s in stats["splits"].items()})


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def finetune_op(
    tokens: Input[Dataset],
    base_model: str,
    s3_endpoint_url: str,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    weight_decay: float,
    warmup_ratio: float,
    early_stopping_patience: int,
    seed: int,
    lora: bool,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float,
    precision: str,
    checkpoint_dir: str,
    model: Output[Model],
    history: Output[Artifact],
    training_metrics: Output[Metrics],
):
    import json

    from domaintune.components.finetune import FinetuneParams, run_finetune
    from domaintune.components.models import resolve_model
    from domaintune.components.runtime import run_stage

    params = run_stage("finetune", FinetuneParams, epochs=epochs, learning_rate=learning_rate,
                       batch_size=batch_size, weight_decay=weight_decay, warmup_ratio=warmup_ratio,
                       early_stopping_patience=early_stopping_patience, seed=seed, lora=lora, lora_r=lora_r,
                       lora_alpha=lora_alpha, lora_dropout=lora_dropout, precision=precision,
                       checkpoint_dir=checkpoint_dir)
    model_dir = run_stage("finetune", resolve_model, base_model, s3_endpoint_url)
    result = run_stage("finetune", run_finetune, tokens.path, model_dir, model.path, history.path, params)
    for key in ("accuracy", "macro_f1"):
        training_metrics.log_metric(f"validation_{key}", result["validation"][key])
    training_metrics.log_metric("examples_per_second", result["examples_per_second"])
    with open(training_metrics.path, "w") as f:  # a real file, so local caching can hit
        json.dump(training_metrics.metadata, f)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_op(
    model: Input[Model],
    splits: Input[Dataset],
    slice_columns: str,
    min_slice_size: int,
    identity_terms: str,
    flip_min_prob_change: float,
    min_macro_f1: float,
    max_regression: float,
    max_flip_rate: float,
    max_slice_gap: float,
    max_int8_drop: float,
    model_name: str,
    mlflow_tracking_uri: str,
    evaluation: Output[Artifact],
    test_metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    bias_report: Output[Markdown],
):
    import json
    import os
    import shutil
    import tempfile

    from domaintune.components.evaluate import EvaluateParams, run_evaluate
    from domaintune.components.gate import Thresholds
    from domaintune.components.registry import fetch_champion
    from domaintune.components.runtime import csv_list, run_stage

    params = run_stage("evaluate", EvaluateParams,
                       thresholds=run_stage("evaluate", Thresholds, min_macro_f1=min_macro_f1,
                                            max_regression=max_regression, max_flip_rate=max_flip_rate,
                                            max_slice_gap=max_slice_gap, max_int8_drop=max_int8_drop),
                       slice_columns=csv_list(slice_columns), min_slice_size=min_slice_size,
                       identity_terms=identity_terms, flip_min_prob_change=flip_min_prob_change)
    with tempfile.TemporaryDirectory() as scratch:
        champion = fetch_champion(mlflow_tracking_uri, model_name, scratch)
        result = run_stage("evaluate", run_evaluate, model.path, splits.path, evaluation.path, params,
                           *(champion or (None, None)))
    metrics = result["metrics"]
    for key in ("accuracy", "macro_f1"):
        test_metrics.log_metric(key, metrics[key])
    test_metrics.log_metric("gate_passed", float(result["gate"]["passed"]))
    with open(test_metrics.path, "w") as f:
        json.dump(test_metrics.metadata, f)
    confusion.log_confusion_matrix(metrics["labels"], metrics["confusion_matrix"])
    with open(confusion.path, "w") as f:
        json.dump(confusion.metadata, f)
    shutil.copy(os.path.join(evaluation.path, "bias_report.md"), bias_report.path)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_op(
    model: Input[Model],
    data_report: Input[Artifact],
    tokens: Input[Dataset],
    history: Input[Artifact],
    evaluation: Input[Artifact],
    model_name: str,
    experiment_name: str,
    mlflow_tracking_uri: str,
    auto_promote: bool,
    base_model: str,
    pipeline_run_id: str,
    summary: Output[Artifact],
):
    import os

    from domaintune.components.register import RegisterParams, RunInputs, run_register
    from domaintune.components.runtime import run_stage

    params = run_stage("register", RegisterParams, model_name=model_name, mlflow_tracking_uri=mlflow_tracking_uri,
                       experiment_name=experiment_name, auto_promote=auto_promote,
                       pipeline_run_id=pipeline_run_id, base_model=base_model)
    inputs = RunInputs(model_dir=model.path, data_report=data_report.path,
                       token_stats=os.path.join(tokens.path, "token_stats.json"), history=history.path,
                       evaluation_dir=evaluation.path)
    result = run_stage("register", run_register, inputs, summary.path, params)
    summary.metadata.update({"status": result["status"], "version": result["registry"]["version"]})
