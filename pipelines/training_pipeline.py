"""The pipeline: wiring only. Its signature is the one source of truth for every parameter — the CLI's
flags, config-file keys and the compiled YAML's inputs all come from it."""
from kfp import dsl

from domaintune.components.kfp_components import (champion_op, evaluate_op, export_op, finetune_adapted_op, finetune_op, ingest_op,
                                                  pretrain_op, register_op, tokenize_op, wants_pretraining_op)
from domaintune.pipelines.platform import configure

PIPELINE_NAME = "domaintune-training"


def evaluate_export_register(finetune, ingest, tokenize, slice_columns, min_slice_size, identity_terms,
                             flip_min_prob_change, min_macro_f1, max_regression, max_flip_rate, max_slice_gap,
                             max_int8_drop, max_parity_diff, int8_per_channel, int8_reduce_range, export_latency_runs,
                             model_name, experiment_name, mlflow_tracking_uri, auto_promote, base_model,
                             pretraining_params):
    """The stages after fine-tuning, wired the same way in each branch."""
    # Resolved after fine-tuning, never cached: evaluate compares with the champion of that moment, and its
    # own cache key names that version, so an identical rerun reuses the evaluation until the champion moves.
    champion = configure(champion_op(model_name=model_name, mlflow_tracking_uri=mlflow_tracking_uri), "champion")
    champion.after(finetune)
    champion.set_caching_options(False)
    evaluate = configure(evaluate_op(
        model=finetune.outputs["model"], splits=ingest.outputs["splits"], slice_columns=slice_columns,
        min_slice_size=min_slice_size, identity_terms=identity_terms, flip_min_prob_change=flip_min_prob_change,
        min_macro_f1=min_macro_f1, max_regression=max_regression, max_flip_rate=max_flip_rate,
        max_slice_gap=max_slice_gap, max_int8_drop=max_int8_drop, model_name=model_name,
        mlflow_tracking_uri=mlflow_tracking_uri, champion_version=champion.output,
    ), "evaluate")  # cached: its key names the champion version it compares with
    export = configure(export_op(
        model=finetune.outputs["model"], splits=ingest.outputs["splits"], max_int8_drop=max_int8_drop,
        max_parity_diff=max_parity_diff, int8_per_channel=int8_per_channel, int8_reduce_range=int8_reduce_range,
        export_latency_runs=export_latency_runs,
    ), "export")
    register = configure(register_op(
        model=finetune.outputs["model"], data_report=ingest.outputs["data_report"], tokens=tokenize.outputs["tokens"],
        history=finetune.outputs["history"], evaluation=evaluate.outputs["evaluation"], onnx=export.outputs["onnx"],
        model_name=model_name, experiment_name=experiment_name, mlflow_tracking_uri=mlflow_tracking_uri,
        auto_promote=auto_promote, base_model=base_model, pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        **pretraining_params,
    ), "register")
    register.set_caching_options(False)  # registry state is outside the cache's view
    return register


@dsl.pipeline(name=PIPELINE_NAME, description="Labeled domain text -> fine-tuned, evaluated, gated, registered classifier.")
def training_pipeline(
    train_data: str = "",
    validation_data: str = "",
    test_data: str = "",
    text_column: str = "text",
    label_column: str = "label",
    slice_columns: str = "",
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    data_version: str = "",
    s3_endpoint_url: str = "",
    base_model: str = "all-MiniLM-L6-v2",
    max_length: int = 128,
    domain_corpus: str = "",
    pretrain_on_train_text: bool = False,
    corpus_text_column: str = "text",
    mlm_epochs: float = 1.0,
    mlm_max_steps: int = 300,
    mlm_learning_rate: float = 1e-4,
    mlm_probability: float = 0.15,
    whole_word_masking: bool = False,
    mlm_batch_size: int = 32,
    mlm_head_warmup_steps: int = 200,
    epochs: float = 3.0,
    learning_rate: float = 1e-4,
    batch_size: int = 32,
    weight_decay: float = 0.01,
    warmup_ratio: float = 0.06,
    early_stopping_patience: int = 2,
    lora: bool = False,
    lora_r: int = 8,
    lora_alpha: int = 16,
    lora_dropout: float = 0.1,
    precision: str = "auto",
    freeze_embeddings: bool = True,
    checkpoint_dir: str = "",
    seed: int = 42,
    min_macro_f1: float = 0.6,
    max_regression: float = 0.01,
    max_flip_rate: float = 0.1,
    flip_min_prob_change: float = 0.1,
    max_slice_gap: float = 0.15,
    max_int8_drop: float = 0.01,
    max_parity_diff: float = 0.001,
    int8_per_channel: bool = True,
    int8_reduce_range: bool = False,
    export_latency_runs: int = 20,
    min_slice_size: int = 30,
    identity_terms: str = "",
    model_name: str = "domaintune-classifier",
    experiment_name: str = "domaintune",
    mlflow_tracking_uri: str = "",
    auto_promote: bool = False,
) -> str:
    """Fine-tune a transformer classifier on labeled domain text, evaluate and gate it, register it in MLflow.

    Args:
        train_data: Labeled training data: CSV, TSV, JSONL or Parquet; a local path or s3:// URI. Empty: the bundled sample (support tickets).
        validation_data: Optional validation file; when empty, a stratified share of train_data.
        test_data: Optional test file; when empty, a stratified share of train_data.
        text_column: Name of the text column.
        label_column: Name of the label column (strings or integers).
        slice_columns: Comma-separated data columns to compute per-slice metrics on (e.g. region,channel).
        validation_fraction: Share of train_data held out for validation when no validation file is given.
        test_fraction: Share of train_data held out for test when no test file is given.
        data_version: Snapshot/version of the data. Part of the cache key: change it when the data behind a URI changes (the CLI uses a content hash for local files).
        s3_endpoint_url: S3 endpoint for s3:// inputs (e.g. MinIO); empty uses AWS_ENDPOINT_URL or AWS.
        base_model: Base model: a local Hugging Face directory, s3:// prefix, the packaged all-MiniLM-L6-v2, or a hub id where a network exists.
        max_length: Maximum tokens per text; longer texts are truncated (and counted in the token stats).
        domain_corpus: Unlabeled domain text for masked-LM pretraining before fine-tuning (DAPT): a text file (one document per line), or CSV/JSONL with corpus_text_column; local or s3://. Empty: no DAPT.
        pretrain_on_train_text: Masked-LM pretraining on the training split's own texts (TAPT), when no domain_corpus is given.
        corpus_text_column: Text column of a CSV/JSONL domain corpus.
        mlm_epochs: Masked-LM pretraining epochs over the corpus (bounded by mlm_max_steps).
        mlm_max_steps: Upper bound on masked-LM optimizer steps (0: no bound beyond mlm_epochs).
        mlm_learning_rate: Masked-LM peak learning rate.
        mlm_probability: Share of tokens masked.
        whole_word_masking: Mask whole words (all their word pieces) instead of single tokens.
        mlm_batch_size: Masked-LM batch size (blocks of max_length tokens).
        mlm_head_warmup_steps: Steps training only the new MLM head (encoder frozen) before the "before" perplexity is measured: the packaged model ships no MLM head.
        epochs: Maximum training epochs (early stopping may end sooner).
        learning_rate: Peak learning rate (linear warm-up and decay). LoRA usually wants about 5e-4.
        batch_size: Training batch size per device.
        weight_decay: AdamW weight decay.
        warmup_ratio: Share of training steps used for learning-rate warm-up.
        early_stopping_patience: Epochs without validation macro-F1 improvement before stopping.
        lora: Train LoRA adapters (peft) instead of all weights; merged into the saved model.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling alpha.
        lora_dropout: LoRA dropout.
        precision: auto (bf16 where the hardware supports it natively, else fp32), bf16, fp16 or fp32.
        freeze_embeddings: Full fine-tuning keeps the input word-embedding matrix fixed (half of MiniLM's parameters; faster at the same accuracy, bench/BENCHMARKS.md). LoRA trains adapters only either way.
        checkpoint_dir: Where training checkpoints go; a retried run resumes from the last one there. Empty: beside the model output, removed after success.
        seed: Random seed for the split, initialisation and data order.
        min_macro_f1: Gate: the candidate's test macro-F1 must reach this.
        max_regression: Gate: the candidate may trail the champion's macro-F1 (same test split) by at most this.
        max_flip_rate: Gate: the largest share of predictions that flip when identity terms are swapped.
        flip_min_prob_change: A label change under an identity swap counts as a flip only if the predicted class's probability also moves by at least this (0: every label change counts).
        max_slice_gap: Gate: the largest accuracy/macro-F1 gap between data slices (slices of at least min_slice_size rows).
        max_int8_drop: Export: the int8 ONNX ships only if it loses at most this much test accuracy; else the fp32 ONNX ships.
        max_parity_diff: Export: the largest allowed absolute logit difference between ONNX fp32 and PyTorch on test inputs.
        int8_per_channel: Export: per-channel int8 weight quantization.
        int8_reduce_range: Export: 7-bit weight range (for CPUs without VNNI, where full-range int8 can overflow).
        export_latency_runs: Export: timed runs per latency measurement (0 skips the latency report).
        min_slice_size: Slices smaller than this are reported but not gated.
        identity_terms: YAML file of identity terms and probe templates; empty: the packaged lists.
        model_name: Registered model name in MLflow.
        experiment_name: MLflow experiment for the run.
        mlflow_tracking_uri: MLflow tracking URI; empty: MLFLOW_TRACKING_URI or ./mlflow.db.
        auto_promote: Give a blessed candidate that beats the champion the champion alias.
    """
    ingest = configure(ingest_op(
        train_data=train_data, validation_data=validation_data, test_data=test_data, text_column=text_column,
        label_column=label_column, slice_columns=slice_columns, validation_fraction=validation_fraction,
        test_fraction=test_fraction, seed=seed, s3_endpoint_url=s3_endpoint_url, data_version=data_version,
    ), "ingest")
    tokenize = configure(tokenize_op(
        splits=ingest.outputs["splits"], base_model=base_model, max_length=max_length, s3_endpoint_url=s3_endpoint_url,
    ), "tokenize")
    training = dict(epochs=epochs, learning_rate=learning_rate, batch_size=batch_size, weight_decay=weight_decay,
                    warmup_ratio=warmup_ratio, early_stopping_patience=early_stopping_patience, seed=seed, lora=lora,
                    lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, precision=precision,
                    freeze_embeddings=freeze_embeddings, checkpoint_dir=checkpoint_dir)
    pretraining = dict(splits=ingest.outputs["splits"], base_model=base_model, s3_endpoint_url=s3_endpoint_url,
                       domain_corpus=domain_corpus, pretrain_on_train_text=pretrain_on_train_text,
                       corpus_text_column=corpus_text_column, mlm_epochs=mlm_epochs, mlm_max_steps=mlm_max_steps,
                       mlm_learning_rate=mlm_learning_rate, mlm_probability=mlm_probability,
                       whole_word_masking=whole_word_masking, mlm_batch_size=mlm_batch_size,
                       mlm_head_warmup_steps=mlm_head_warmup_steps, max_length=max_length, precision=precision,
                       seed=seed, checkpoint_dir=checkpoint_dir)
    # Masked-LM pretraining (on the domain corpus, or the training texts) before fine-tuning, or not.
    # kfp.local resolves dsl.OneOf for parameters only, so each branch carries the whole tail and the
    # pipeline returns the summary's path (a parameter) from whichever branch ran.
    wants = configure(wants_pretraining_op(domain_corpus=domain_corpus, pretrain_on_train_text=pretrain_on_train_text),
                      "plan")
    tail = dict(ingest=ingest, tokenize=tokenize, slice_columns=slice_columns, min_slice_size=min_slice_size,
                identity_terms=identity_terms, flip_min_prob_change=flip_min_prob_change, min_macro_f1=min_macro_f1,
                max_regression=max_regression, max_flip_rate=max_flip_rate, max_slice_gap=max_slice_gap,
                max_int8_drop=max_int8_drop, max_parity_diff=max_parity_diff, int8_per_channel=int8_per_channel,
                int8_reduce_range=int8_reduce_range, export_latency_runs=export_latency_runs, model_name=model_name,
                experiment_name=experiment_name, mlflow_tracking_uri=mlflow_tracking_uri, auto_promote=auto_promote,
                base_model=base_model,
                pretraining_params={k: v for k, v in pretraining.items()
                                    if k not in ("splits", "base_model", "s3_endpoint_url", "max_length", "precision",
                                                 "seed", "checkpoint_dir")})
    with dsl.If(wants.output == True, name="pretrain-first"):  # noqa: E712 (a pipeline condition)
        pretrain = configure(pretrain_op(**pretraining), "pretrain")
        adapted = configure(finetune_adapted_op(tokens=tokenize.outputs["tokens"],
                                                adapted_model=pretrain.outputs["model"], **training), "finetune")
        after_pretraining = evaluate_export_register(adapted, **tail)
    with dsl.Else(name="base-model"):
        plain = configure(finetune_op(tokens=tokenize.outputs["tokens"], base_model=base_model,
                                      s3_endpoint_url=s3_endpoint_url, **training), "finetune")
        from_base = evaluate_export_register(plain, **tail)
    return dsl.OneOf(after_pretraining.outputs["Output"], from_base.outputs["Output"])

