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
    from domaintune.components.ingest.stage import IngestParams, run_ingest
    from domaintune.components.core.runtime import csv_list, run_stage

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
    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.core.runtime import run_stage
    from domaintune.components.tokenize.stage import run_tokenize

    model_dir = run_stage("tokenize", resolve_model, base_model, s3_endpoint_url)
    stats = run_stage("tokenize", run_tokenize, splits.path, model_dir, tokens.path, max_length)
    tokens.metadata.update({name: s["examples"] for name, s in stats["splits"].items()})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def wants_pretraining_op(domain_corpus: str, pretrain_on_train_text: bool) -> bool:
    """KFP conditions cannot say "or"; this one-liner lets the pipeline branch on DAPT-or-TAPT."""
    return bool(domain_corpus) or pretrain_on_train_text


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def champion_op(model_name: str, mlflow_tracking_uri: str) -> str:
    """The version number holding `champion` now ("" when none): evaluate's cache key includes it."""
    from domaintune.components.registry.client import champion_version
    from domaintune.components.core.runtime import run_stage

    return run_stage("champion", champion_version, mlflow_tracking_uri, model_name)


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def pretrain_op(
    splits: Input[Dataset],
    base_model: str,
    s3_endpoint_url: str,
    domain_corpus: str,
    pretrain_on_train_text: bool,
    corpus_text_column: str,
    mlm_epochs: float,
    mlm_max_steps: int,
    mlm_learning_rate: float,
    mlm_probability: float,
    whole_word_masking: bool,
    mlm_batch_size: int,
    mlm_head_warmup_steps: int,
    max_length: int,
    precision: str,
    seed: int,
    checkpoint_dir: str,
    model: Output[Model],
    pretrain_report: Output[Artifact],
):
    import os

    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.pretrain.stage import PretrainParams, run_pretrain
    from domaintune.components.core.runtime import run_stage

    params = run_stage("pretrain", PretrainParams, domain_corpus=domain_corpus,
                       pretrain_on_train_text=pretrain_on_train_text, corpus_text_column=corpus_text_column,
                       mlm_epochs=mlm_epochs, mlm_max_steps=mlm_max_steps, mlm_learning_rate=mlm_learning_rate,
                       mlm_probability=mlm_probability, whole_word_masking=whole_word_masking,
                       mlm_batch_size=mlm_batch_size, mlm_head_warmup_steps=mlm_head_warmup_steps,
                       max_length=max_length, precision=precision, seed=seed,
                       # its own subfolder: finetune must never resume from a masked-LM checkpoint
                       checkpoint_dir=os.path.join(checkpoint_dir, "pretrain") if checkpoint_dir else "",
                       s3_endpoint_url=s3_endpoint_url)
    model_dir = run_stage("pretrain", resolve_model, base_model, s3_endpoint_url)
    run_stage("pretrain", run_pretrain, splits.path, model_dir, model.path, pretrain_report.path, params)


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
    freeze_embeddings: bool,
    checkpoint_dir: str,
    model: Output[Model],
    history: Output[Artifact],
    training_metrics: Output[Metrics],
):
    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.core.runtime import finetune_task, run_stage

    model_dir = run_stage("finetune", resolve_model, base_model, s3_endpoint_url)
    finetune_task(tokens.path, model_dir, model, history, training_metrics, epochs=epochs,
                  learning_rate=learning_rate, batch_size=batch_size, weight_decay=weight_decay,
                  warmup_ratio=warmup_ratio, early_stopping_patience=early_stopping_patience, seed=seed, lora=lora,
                  lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, precision=precision,
                  freeze_embeddings=freeze_embeddings, checkpoint_dir=checkpoint_dir)


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def finetune_adapted_op(
    tokens: Input[Dataset],
    adapted_model: Input[Model],
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
    freeze_embeddings: bool,
    checkpoint_dir: str,
    model: Output[Model],
    history: Output[Artifact],
    training_metrics: Output[Metrics],
):
    from domaintune.components.core.runtime import finetune_task

    finetune_task(tokens.path, adapted_model.path, model, history, training_metrics, epochs=epochs,
                  learning_rate=learning_rate, batch_size=batch_size, weight_decay=weight_decay,
                  warmup_ratio=warmup_ratio, early_stopping_patience=early_stopping_patience, seed=seed, lora=lora,
                  lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, precision=precision,
                  freeze_embeddings=freeze_embeddings, checkpoint_dir=checkpoint_dir)


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
    champion_version: str,
    evaluation: Output[Artifact],
    test_metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    bias_report: Output[Markdown],
):
    import json
    import os
    import shutil
    import tempfile

    from domaintune.components.evaluate.stage import EvaluateParams, run_evaluate
    from domaintune.components.evaluation.gate import Thresholds
    from domaintune.components.registry.client import fetch_champion
    from domaintune.components.core.runtime import csv_list, run_stage

    params = run_stage("evaluate", EvaluateParams,
                       thresholds=run_stage("evaluate", Thresholds, min_macro_f1=min_macro_f1,
                                            max_regression=max_regression, max_flip_rate=max_flip_rate,
                                            max_slice_gap=max_slice_gap, max_int8_drop=max_int8_drop),
                       slice_columns=csv_list(slice_columns), min_slice_size=min_slice_size,
                       identity_terms=identity_terms, flip_min_prob_change=flip_min_prob_change)
    with tempfile.TemporaryDirectory() as scratch:
        champion = fetch_champion(mlflow_tracking_uri, model_name, scratch, champion_version)
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

    from domaintune.components.export.stage import run_export
    from domaintune.components.core.runtime import run_stage

    report = run_stage("export", run_export, model.path, os.path.join(splits.path, "test.parquet"), onnx.path,
                       max_parity_diff=max_parity_diff, max_int8_drop=max_int8_drop, per_channel=int8_per_channel,
                       reduce_range=int8_reduce_range, latency_runs=export_latency_runs)
    shutil.copy(os.path.join(onnx.path, "export_report.md"), export_report.path)
    onnx.metadata.update({"deployable": report.get("deployable")})


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_op(
    model: Input[Model],
    data_report: Input[Artifact],
    tokens: Input[Dataset],
    history: Input[Artifact],
    evaluation: Input[Artifact],
    onnx: Input[Model],
    model_name: str,
    experiment_name: str,
    mlflow_tracking_uri: str,
    auto_promote: bool,
    base_model: str,
    pipeline_run_id: str,
    domain_corpus: str,
    pretrain_on_train_text: bool,
    corpus_text_column: str,
    mlm_epochs: float,
    mlm_max_steps: int,
    mlm_learning_rate: float,
    mlm_probability: float,
    whole_word_masking: bool,
    mlm_batch_size: int,
    mlm_head_warmup_steps: int,
    summary: Output[Artifact],
) -> str:
    import os

    from domaintune.components.register.stage import RegisterParams, RunInputs, run_register
    from domaintune.components.core.runtime import run_stage

    params = run_stage("register", RegisterParams, model_name=model_name, mlflow_tracking_uri=mlflow_tracking_uri,
                       experiment_name=experiment_name, auto_promote=auto_promote,
                       pipeline_run_id=pipeline_run_id, base_model=base_model,
                       # pretraining runs in one branch only: its parameters reach the MLflow run from here
                       pipeline_params=dict(domain_corpus=domain_corpus, pretrain_on_train_text=pretrain_on_train_text,
                                            corpus_text_column=corpus_text_column, mlm_epochs=mlm_epochs,
                                            mlm_max_steps=mlm_max_steps, mlm_learning_rate=mlm_learning_rate,
                                            mlm_probability=mlm_probability, whole_word_masking=whole_word_masking,
                                            mlm_batch_size=mlm_batch_size, mlm_head_warmup_steps=mlm_head_warmup_steps))
    inputs = RunInputs(model_dir=model.path, data_report=data_report.path,
                       token_stats=os.path.join(tokens.path, "token_stats.json"), history=history.path,
                       evaluation_dir=evaluation.path, export_dir=onnx.path)
    result = run_stage("register", run_register, inputs, summary.path, params)
    summary.metadata.update({"status": result["status"], "version": result["registry"]["version"]})
    # Also returned as a parameter: kfp.local can pick a parameter (not an artifact) out of dsl.OneOf.
    return summary.path
