"""The pipeline: wiring only. Its signature is where every parameter becomes a pipeline parameter; each
default is read from the stage's Params dataclass (the one place of defaults and validation), and each task
receives exactly the parameters its shell declares (`stage_args`). The CLI's flags, config-file keys and the
compiled YAML's inputs all come from this signature."""
from kfp import dsl

from domaintune.components.evaluate.op import champion_op, evaluate_op
from domaintune.components.evaluate.stage import EvaluateParams as E
from domaintune.components.export.op import export_op
from domaintune.components.export.stage import ExportParams as X
from domaintune.components.finetune.op import finetune_adapted_op, finetune_op
from domaintune.components.finetune.stage import FinetuneParams as F
from domaintune.components.ingest.op import ingest_op
from domaintune.components.ingest.stage import IngestParams as I
from domaintune.components.pretrain.op import pretrain_op, plan_op
from domaintune.components.pretrain.stage import PretrainParams as P
from domaintune.components.register.op import register_op
from domaintune.components.register.stage import RegisterParams as R
from domaintune.components.tokenize.op import tokenize_op
from domaintune.components.tokenize.stage import TokenizeParams as T
from domaintune.pipelines.platform import configure

PIPELINE_NAME = "domaintune-training"


def stage_args(op, values: dict) -> dict:
    """The pipeline parameters a shell declares, by name (names are the same from the pipeline to the stage)."""
    return {name: values[name] for name in op.component_spec.inputs if name in values}


def export_evaluate_register(finetune, ingest, tokenize, plan, values: dict):
    """The stages after fine-tuning, wired the same way in each branch."""
    model = finetune.outputs["model"]
    export = configure(export_op(model=model, splits=ingest.outputs["splits"], **stage_args(export_op, values)),
                       "export")
    # Resolved after fine-tuning, never cached: evaluate compares with the champion of that moment, and its
    # own cache key names that version, so an identical rerun reuses the evaluation until the champion moves.
    champion = configure(champion_op(**stage_args(champion_op, values)), "champion")
    champion.after(finetune)
    champion.set_caching_options(False)
    evaluate = configure(evaluate_op(model=model, onnx=export.outputs["onnx"], splits=ingest.outputs["splits"],
                                     champion_version=champion.output, **stage_args(evaluate_op, values)),
                         "evaluate")  # cached: its key names the champion version it compares with
    register = configure(register_op(
        model=model, data_report=ingest.outputs["data_report"], tokens=tokenize.outputs["tokens"],
        pretrain_plan=plan.outputs["plan"], history=finetune.outputs["history"],
        evaluation=evaluate.outputs["evaluation"], onnx=export.outputs["onnx"],
        pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, **stage_args(register_op, values),
    ), "register")
    register.set_caching_options(False)  # registry state is outside the cache's view
    return register


@dsl.pipeline(name=PIPELINE_NAME,
              description="Labeled domain text -> fine-tuned, exported, evaluated, gated, registered model.")
def training_pipeline(
    train_data: str = I.train_data,
    validation_data: str = I.validation_data,
    test_data: str = I.test_data,
    task: str = I.task,
    text_column: str = I.text_column,
    label_column: str = I.label_column,
    target_column: str = I.target_column,
    slice_columns: str = E.slice_columns,
    validation_fraction: float = I.validation_fraction,
    test_fraction: float = I.test_fraction,
    data_version: str = I.data_version,
    strict_iob2: bool = I.strict_iob2,
    s3_endpoint_url: str = I.s3_endpoint_url,
    base_model: str = T.base_model,
    max_length: int = T.max_length,
    max_target_length: int = T.max_target_length,
    domain_corpus: str = P.domain_corpus,
    pretrain_on_train_text: bool = P.pretrain_on_train_text,
    corpus_text_column: str = P.corpus_text_column,
    mlm_epochs: float = P.mlm_epochs,
    mlm_max_steps: int = P.mlm_max_steps,
    mlm_learning_rate: float = P.mlm_learning_rate,
    mlm_probability: float = P.mlm_probability,
    whole_word_masking: bool = P.whole_word_masking,
    mlm_batch_size: int = P.mlm_batch_size,
    mlm_head_warmup_steps: int = P.mlm_head_warmup_steps,
    epochs: float = F.epochs,
    learning_rate: float = F.learning_rate,
    batch_size: int = F.batch_size,
    weight_decay: float = F.weight_decay,
    warmup_ratio: float = F.warmup_ratio,
    early_stopping_patience: int = F.early_stopping_patience,
    lora: bool = F.lora,
    lora_r: int = F.lora_r,
    lora_alpha: int = F.lora_alpha,
    lora_dropout: float = F.lora_dropout,
    precision: str = F.precision,
    freeze_embeddings: bool = F.freeze_embeddings,
    checkpoint_dir: str = F.checkpoint_dir,
    num_processes: int = F.num_processes,
    gradient_accumulation_steps: int = F.gradient_accumulation_steps,
    seed: int = I.seed,
    min_macro_f1: float = E.min_macro_f1,
    max_regression: float = E.max_regression,
    max_flip_rate: float = E.max_flip_rate,
    flip_min_prob_change: float = E.flip_min_prob_change,
    max_slice_gap: float = E.max_slice_gap,
    min_lead_margin: float = E.min_lead_margin,
    max_unsupported_number_rate: float = E.max_unsupported_number_rate,
    min_distinct_summaries: float = E.min_distinct_summaries,
    max_bias_regression: float = E.max_bias_regression,
    bias_axes: str = E.bias_axes,
    min_lift: float = E.min_lift,
    baseline_max_rows: int = E.baseline_max_rows,
    ood_data: str = E.ood_data,
    ood_label_map: str = E.ood_label_map,
    max_ood_drop: float = E.max_ood_drop,
    max_int8_drop: float = X.max_int8_drop,
    max_parity_diff: float = X.max_parity_diff,
    int8_per_channel: bool = X.int8_per_channel,
    int8_reduce_range: bool = X.int8_reduce_range,
    export_latency_runs: int = X.export_latency_runs,
    min_slice_size: int = E.min_slice_size,
    identity_terms: str = E.identity_terms,
    model_name: str = R.model_name,
    experiment_name: str = R.experiment_name,
    mlflow_tracking_uri: str = R.mlflow_tracking_uri,
    auto_promote: bool = R.auto_promote,
) -> str:
    """Fine-tune a transformer on labeled domain text, export it, evaluate and gate the deployable, register it in MLflow.

    Args:
        train_data: Labeled training data: CSV, TSV, JSONL or Parquet; a local path or s3:// URI. Empty: the bundled sample (support tickets).
        validation_data: Optional validation file; when empty, a stratified share of train_data.
        test_data: Optional test file; when empty, a stratified share of train_data.
        task: What the model learns: classification (one label per text), token-classification (a tag per word: named entities; CoNLL, tokens+tags or text+spans data) or seq2seq (a generated target per text: summaries, headlines; text_column -> target_column).
        text_column: Name of the text column.
        label_column: Name of the label column (strings or integers).
        target_column: Seq2seq: name of the target (summary) column.
        slice_columns: Comma-separated data columns to compute per-slice metrics on (e.g. region,channel).
        validation_fraction: Share of train_data held out for validation when no validation file is given.
        test_fraction: Share of train_data held out for test when no test file is given.
        data_version: Snapshot/version of the data. Part of the cache key: change it when the data behind a URI changes (the CLI uses a content hash for local files).
        strict_iob2: Token classification: refuse an I-X tag that does not continue an X entity (IOB1, or an annotation slip) instead of repairing it to B-X.
        s3_endpoint_url: S3 endpoint for s3:// inputs (e.g. MinIO); empty uses AWS_ENDPOINT_URL or AWS.
        base_model: Base model: a local Hugging Face directory, s3:// prefix, the packaged all-MiniLM-L6-v2, or a hub id where a network exists.
        max_length: Maximum tokens per text; longer texts are truncated (and counted in the token stats).
        max_target_length: Seq2seq: maximum tokens per target (longer ones are truncated and counted) and per generated summary.
        domain_corpus: Unlabeled domain text for masked-LM pretraining before fine-tuning (DAPT): a text file (one document per line), or CSV/JSONL with corpus_text_column; local or s3://. Empty: no DAPT.
        pretrain_on_train_text: Masked-LM pretraining on the training split's own texts (TAPT), when no domain_corpus is given.
        corpus_text_column: Text column of a CSV/JSONL domain corpus.
        mlm_epochs: Masked-LM pretraining epochs over the corpus (bounded by mlm_max_steps).
        mlm_max_steps: Upper bound on masked-LM optimizer steps (0: no bound beyond mlm_epochs).
        mlm_learning_rate: Masked-LM peak learning rate.
        mlm_probability: Share of tokens masked.
        whole_word_masking: Mask whole words (all their word pieces) instead of single tokens.
        mlm_batch_size: Masked-LM batch size (blocks of max_length tokens): the global batch, split evenly over the processes.
        mlm_head_warmup_steps: Steps training only the new MLM head (encoder frozen) before the "before" perplexity is measured: the packaged model ships no MLM head.
        epochs: Maximum training epochs (early stopping may end sooner).
        learning_rate: Peak learning rate (linear warm-up and decay). LoRA usually wants about 5e-4.
        batch_size: Training batch size: the global batch of one optimizer step, split evenly over the processes and gradient_accumulation_steps. 0: chosen for the training set's size (the largest of 32, 16, 8 giving 250 optimizer steps per epoch, else 8; printed and recorded in history.json).
        weight_decay: AdamW weight decay.
        warmup_ratio: Share of training steps used for learning-rate warm-up.
        early_stopping_patience: Epochs without validation macro-F1 improvement before stopping.
        lora: Train LoRA adapters (peft) instead of all weights; merged into the saved model.
        lora_r: LoRA rank.
        lora_alpha: LoRA scaling alpha.
        lora_dropout: LoRA dropout.
        precision: auto (bf16 where the hardware supports it natively, else fp32), bf16, fp16 or fp32.
        freeze_embeddings: Full fine-tuning keeps the input word-embedding matrix fixed (half of MiniLM's parameters; faster at the same accuracy, bench/BENCHMARKS.md) for classification and seq2seq; token classification always trains it (word identity is what a tagger reads: +0.57 entity F1 on CoNLL-2003, two seeds). LoRA trains adapters only either way.
        checkpoint_dir: Where training checkpoints go; a retried run resumes from the last one there. Empty: beside the model output, removed after success.
        num_processes: Training processes per pod (DistributedDataParallel under torchrun when more than one; on CPU too). 0: one per GPU the pod has (DOMAINTUNE_GPUS at compile time), else one.
        gradient_accumulation_steps: Micro-batches accumulated per optimizer step (batch_size stays the global batch: each micro-batch is batch_size / processes / this).
        seed: Random seed for the split, initialisation and data order.
        min_macro_f1: Gate: the deployable's test macro-F1 (the task's primary metric) must reach this; -1: the task's floor (0.6 on macro-F1 / entity F1, 0.1 on ROUGE-L).
        max_regression: Gate: the candidate may trail the champion's macro-F1 (same test split) by at most this.
        max_flip_rate: Gate: the largest share of predictions that flip when identity terms are swapped in your test texts (and, for the bias_axes named, in the probe's templates).
        flip_min_prob_change: A label change under an identity swap counts as a flip only if the predicted class's probability also moves by at least this (0: every label change counts).
        max_slice_gap: Gate: the largest accuracy/macro-F1 gap between data slices (slices of at least min_slice_size rows).
        min_lead_margin: Gate (seq2seq): the deployable's test ROUGE-L minus the lead-N baseline's must reach this (in [-1, 1]).
        max_unsupported_number_rate: Gate (seq2seq): the largest share of summaries that state a number their source does not contain.
        min_distinct_summaries: Gate (seq2seq): the least share of distinct test sources whose summary no other source shares a copy of (distinct summaries / distinct sources; catches a model that collapsed onto a few stock summaries; 0: off).
        max_bias_regression: Gate: how much worse than the champion's any identity axis's flip rate may get (each axis and source, same texts and templates).
        bias_axes: Gate: axes whose template-only bias findings block (e.g. gender,race_ethnicity, or all). Default none: findings on your own test texts block, template-only ones are reported as warnings.
        min_lift: Gate (off at -1): the deployable's macro-F1 must beat the best baseline (frozen base-model embeddings + logistic regression, TF-IDF + logistic regression) by at least this.
        baseline_max_rows: Baselines: fit on at most this many training (and validation) rows, a stratified sample; 0 skips the baselines.
        ood_data: Out-of-domain evaluation: comma-separated labeled files (local or s3://) with the same text/label column names as the training data; metrics per set and the drop vs the in-domain test split.
        ood_label_map: Maps the out-of-domain files' label names onto the model's, e.g. Bearish=negative,Bullish=positive,Neutral=neutral.
        max_ood_drop: Gate (off at 1): the largest drop of macro-F1 on an out-of-domain set vs the in-domain test split.
        max_int8_drop: Export: the int8 ONNX ships only if it loses at most this much of the task's quality metric on the test split (accuracy for classification); else the fp32 ONNX ships.
        max_parity_diff: Export: the largest allowed absolute logit difference between ONNX fp32 and PyTorch on test inputs.
        int8_per_channel: Export: per-channel int8 weight quantization.
        int8_reduce_range: Export: 7-bit weight range (for CPUs without VNNI, where full-range int8 can overflow).
        export_latency_runs: Export: timed runs of the short latency probe (ORT fp32 and int8 at batch 1 x typical length; 0 skips it; bench/inference_latency.py has the full matrix with PyTorch and 32 x 128).
        min_slice_size: Slices smaller than this are reported but not gated.
        identity_terms: YAML file of identity terms and probe templates; empty: the packaged lists.
        model_name: Registered model name in MLflow.
        experiment_name: MLflow experiment for the run.
        mlflow_tracking_uri: MLflow tracking URI; empty: MLFLOW_TRACKING_URI or ./mlflow.db.
        auto_promote: Give a blessed candidate that beats the champion the champion alias.
    """
    values = dict(locals())
    ingest = configure(ingest_op(**stage_args(ingest_op, values)), "ingest")
    tokenize = configure(tokenize_op(splits=ingest.outputs["splits"], **stage_args(tokenize_op, values)), "tokenize")
    # Masked-LM pretraining (on the domain corpus, or the training texts) before fine-tuning, or not.
    # kfp.local resolves dsl.OneOf for parameters only, so each branch carries the whole tail and the
    # pipeline returns the summary's path (a parameter) from whichever branch ran.
    plan = configure(plan_op(**stage_args(plan_op, values)), "plan")
    with dsl.If(plan.outputs["Output"] == True, name="pretrain-first"):  # noqa: E712 (a pipeline condition)
        pretrain = configure(pretrain_op(splits=ingest.outputs["splits"], **stage_args(pretrain_op, values)),
                             "pretrain")
        adapted = configure(finetune_adapted_op(tokens=tokenize.outputs["tokens"], adapted_model=pretrain.outputs["model"],
                                                **stage_args(finetune_adapted_op, values)), "finetune")
        after_pretraining = export_evaluate_register(adapted, ingest, tokenize, plan, values)
    with dsl.Else(name="base-model"):
        plain = configure(finetune_op(tokens=tokenize.outputs["tokens"], **stage_args(finetune_op, values)),
                          "finetune")
        from_base = export_evaluate_register(plain, ingest, tokenize, plan, values)
    return dsl.OneOf(after_pretraining.outputs["Output"], from_base.outputs["Output"])
