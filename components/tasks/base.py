"""The task interface: everything that differs between task families (sequence classification, token
classification, seq2seq) lives behind it, so the stages ask their task and never branch on its name.

A task is chosen once, by ingest (`--task`), and travels with the artifacts: ingest writes it into the
splits' `label_map.json`, tokenize copies that file, finetune writes it into the model's `domaintune.json`,
and every later stage (and `domaintune predict` / `evaluate`) reads it back with `tasks.task_of(dir)`.

What a task owns, in the order the pipeline asks:

| stage      | asks the task for |
|------------|-------------------|
| ingest     | `read_file`, `read_rows` (validate and normalise one file), `duplicates`, `label_space`, `check_heldout`, `split`, `carve`, `to_split_frame`, `data_report` |
| tokenize   | `encode` (token ids plus aligned labels; `max_target_length` for generated targets) |
| finetune   | `build_model`, `lora_task_type` / `lora_modules_to_save`, `collator`, `training_setup` (Trainer and arguments classes, extra arguments, a validation sample), `metric_function` (default: `compute_metrics`), `primary_metric`; optional: `calibrate` |
| export     | `read_test`, `model_labels`, `export_graph` / `quantize_graph` / `onnx_files` / `onnx_parts` / `int8_subsets` (defaults: one graph), `onnx_outputs` (output names and dynamic axes), `reference_outputs` / `onnx_outputs_of` (PyTorch and onnxruntime outputs), `max_abs_diff`, `agreement` (and its floor `min_parity_agreement`), `deployable_metrics` (the int8-vs-fp32 quality check), `quality_metric`, `latency` |
| evaluate   | `load_predictor`, `predict_frame`, `score`, `prediction_table`, `bias_checks`, `bias_report`, `write_plots`, `gate_checks` (the task's own gate rules; default none), `quality_floor`; optional: `baselines`, `calibration_report`, `read_ood` |
| register   | `summary_metrics`, `card_context`, `pyfunc_signature` |
| predict / pyfunc | `load_predictor`, `format_predictions`, `read_labeled` |
| serve      | `serving_predictor`, `serving_answers`, `serving_outputs` (defaults below) |

A predictor is what `load_predictor(ref)` returns for a model directory or an ONNX export: it has `labels` and
`predict(texts)`, whose output only the same task's `score`, `format_predictions` and `bias_checks` interpret.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Sequence

import pandas as pd

from domaintune.components.core.errors import BadInput


class Task(ABC):
    name: ClassVar[str]
    #: the one number that ranks models of this task: early stopping, the gate's floor and regression check,
    #: the registry's version tags
    primary_metric: ClassVar[str]
    # The gate's quality floor on primary_metric when --min-macro-f1 is left at -1 (evaluation/gate.py): it catches
    # a broken run, not a mediocre one; on F1 scales a collapsed model scores under 0.5.
    quality_floor: ClassVar[float] = 0.6
    #: the number the deployable check compares between PyTorch and int8 ONNX (gate rule 4)
    quality_metric: ClassVar[str]
    #: a short phrase for reports and the model card ("text classification", "named-entity tagging", ...)
    description: ClassVar[str]

    # ------------------------------------------------------------------------------------------- data
    def read_file(self, uri: str, p) -> tuple[pd.DataFrame, str]:
        """One input file as a frame, and its sha256 (lineage); tables by default."""
        from domaintune.components.io.tables import read_table

        return read_table(uri, p.s3_endpoint_url)

    @abstractmethod
    def read_rows(self, frame: pd.DataFrame, uri: str, p) -> tuple[pd.DataFrame, dict]:
        """One input file's rows, validated and normalised to the task's split columns; `p` is IngestParams."""

    @abstractmethod
    def duplicates(self, frame: pd.DataFrame) -> int:
        """Rows of one input file identical to an earlier row (input and label)."""

    @abstractmethod
    def label_space(self, train: pd.DataFrame, uri: str, p) -> list[str]:
        """The sorted label names of the training rows (the model's id2label)."""

    @abstractmethod
    def check_heldout(self, frame: pd.DataFrame, labels: list[str], uri: str, p) -> None:
        """Reject an explicit validation/test file whose labels the training data does not have."""

    @abstractmethod
    def split(self, frame: pd.DataFrame, p) -> tuple[dict[str, pd.DataFrame], dict]:
        """Train/validation/test from one file (seeded); returns the splits and what the split did."""

    @abstractmethod
    def carve(self, frame: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Hold out `share` of `frame` when one of validation/test is given and the other is not."""

    @abstractmethod
    def to_split_frame(self, frame: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
        """The frame as written to `<split>.parquet` (label ids added)."""

    @abstractmethod
    def data_report(self, splits: dict[str, pd.DataFrame], labels: list[str]) -> dict:
        """Per-split counts, lengths, duplicates and leakage for the data report."""

    # --------------------------------------------------------------------------------------- encoding
    @abstractmethod
    def encode(self, tokenizer, frame: pd.DataFrame, max_length: int,
               max_target_length: int | None = None) -> tuple[dict[str, list], dict]:
        """Columns of the tokenized dataset (input ids, attention mask, `labels`, `length`) and statistics.
        `max_target_length` bounds generated targets (seq2seq); tasks that predict per input ignore it."""

    # --------------------------------------------------------------------------------------- training
    #: what the error says a base model could not be loaded as ("a classifier", "a tagger")
    model_kind: ClassVar[str] = "a model of this task"

    def build_model(self, model_dir: str, labels: list[str]):
        """The task's head (`auto_model_class`) on the base encoder in `model_dir`, labelled with `labels`."""
        id2label = dict(enumerate(labels))
        try:
            return self.auto_model_class().from_pretrained(
                model_dir, num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()})
        except (OSError, ValueError) as exc:
            raise BadInput(f"--base-model {model_dir}: cannot load as {self.model_kind} "
                           f"({str(exc).splitlines()[0]})") from None

    @abstractmethod
    def auto_model_class(self):
        """The transformers Auto class that loads a fine-tuned model of this task."""

    lora_task_type: ClassVar[str]
    #: full fine-tuning trains the input word embeddings even under `freeze_embeddings` (finetune/stage.py)
    trains_input_embeddings: ClassVar[bool] = False

    def lora_modules_to_save(self, model) -> list[str] | None:
        """Modules trained in full beside the LoRA adapters (the new head)."""
    @abstractmethod
    def collator(self, tokenizer):
        """The Trainer's data collator (dynamic padding)."""

    @abstractmethod
    def compute_metrics(self, eval_pred, labels: list[str]) -> dict:
        """Validation metrics for the Trainer (bind `labels` with functools.partial); has `primary_metric`."""

    def metric_function(self, labels: list[str], tokenizer):
        """The Trainer's `compute_metrics`: `compute_metrics` with the labels bound (a generating task decodes
        with the tokenizer)."""
        import functools

        return functools.partial(self.compute_metrics, labels=labels)

    def training_setup(self, model, tokenizer, token_stats: dict) -> dict:
        """How finetune trains this task: the Trainer class, its arguments class, extra arguments for it, and
        `validation_rows` (a seeded sample of the validation split evaluated per epoch; None: all of it)."""
        from transformers import Trainer, TrainingArguments

        return {"trainer": Trainer, "arguments": TrainingArguments, "options": {}, "validation_rows": None}

    # --------------------------------------------------------------------------------------- inference
    @abstractmethod
    def load_predictor(self, ref: str):
        """A predictor for a model directory, an ONNX file or an export directory."""

    def predict_frame(self, predictor, frame: pd.DataFrame, batch_size: int = 64):
        """The predictor's outputs for the rows of a split frame (what `score` takes)."""
        return predictor.predict(frame["text"].tolist(), batch_size=batch_size)

    @abstractmethod
    def format_predictions(self, predictor, outputs, texts: Sequence[str]) -> list[dict]:
        """One JSON-ready answer per text (`domaintune predict`, the MLflow pyfunc, serving)."""

    # ----------------------------------------------------------------------------- serving (optional)
    def serving_predictor(self, ref: str, intra_op_threads: int | None = None):
        """The predictor `domaintune serve` runs for an export directory: the ONNX deployable, loaded without
        importing PyTorch where the task can. Default: `load_predictor`."""
        return self.load_predictor(ref)

    def serving_answers(self, predictor, outputs, texts: Sequence[str], details: bool = False) -> list[dict]:
        """The served answer per text: `format_predictions` without the echoed text, plus the task's optional
        detail (`details`: e.g. every class's score) when the client asks for it."""
        return [{k: v for k, v in a.items() if k != "text"} for a in self.format_predictions(predictor, outputs, texts)]

    def serving_outputs(self, labels: list[str]) -> list[dict]:
        """The Open Inference Protocol (V2) output tensors, one per answer key: `name`, `datatype`, `shape`
        (-1 = one row per text) and `detail` (sent only when asked for). Default: the pyfunc signature's
        output columns; a value that is no string or number (entity spans...) travels as JSON in BYTES."""
        types = {"string": "BYTES", "double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32",
                 "boolean": "BOOL"}
        return [{"name": column, "datatype": types.get(kind, "BYTES"), "shape": [-1], "detail": False}
                for kind, column in self.pyfunc_signature()[1]]

    # -------------------------------------------------------------------------------------- evaluation
    @abstractmethod
    def read_labeled(self, path: str, text_column: str, label_column: str, labels: list[str]) -> pd.DataFrame:
        """A labeled file in the split layout, labels mapped onto the model's ids (`domaintune evaluate`)."""

    @abstractmethod
    def score(self, outputs, frame: pd.DataFrame, labels: list[str]) -> dict:
        """Test metrics of a predictor's outputs on a split frame; contains `primary_metric` and `n`."""

    @abstractmethod
    def prediction_table(self, frame: pd.DataFrame, outputs, labels: list[str]) -> pd.DataFrame:
        """Per-example predictions written beside the evaluation."""

    @abstractmethod
    def bias_checks(self, predictor, outputs, frame: pd.DataFrame, labels: list[str], p) -> dict:
        """{"slices": ..., "counterfactual": ...} for the gate's fairness rules; `p` is EvaluateParams."""

    @abstractmethod
    def bias_report(self, bias: dict, gate: dict, thresholds: dict) -> str:
        """The Markdown bias report for the evaluation directory, the KFP UI and MLflow."""

    def write_plots(self, metrics: dict, labels: list[str], directory: str) -> list[str]:
        """Figures for the evaluation directory; returns their file names."""
        return []

    def gate_checks(self, metrics: dict, thresholds) -> list[dict]:
        """Gate checks of this task beyond rules 1-4 (evaluation/gate.py `_check` rows); blocking when failed."""
        return []
    # ---------------------------------------------------- quality beyond the test metrics (optional)
    def calibrate(self, trainer, dataset) -> dict | None:
        """Finetune: a confidence calibration fitted on the validation dataset, saved in the model's
        `domaintune.json` (`calibration`) and applied by its predictors; None where the task has none."""
        return None

    def calibration_report(self, predictor, outputs, frame: pd.DataFrame, directory: str) -> dict | None:
        """Evaluate: calibration of the test outputs (ECE before/after, a reliability diagram in `directory`)."""
        return None

    def baselines(self, model_dir: str, splits: dict[str, pd.DataFrame], labels: list[str], metrics: dict,
                  p) -> dict | None:
        """Evaluate: cheap baselines fitted on `splits["train"]` and scored on `splits["test"]`, with the lift of
        `metrics` (the deployable's) over them; `p` is EvaluateParams. None where the task has none."""
        return None

    def read_ood(self, uri: str, labels: list[str], p) -> pd.DataFrame | None:
        """Evaluate: one out-of-domain labeled file in the split layout (`p`: EvaluateParams, with the column
        names and `ood_label_map`); None where the task does not support out-of-domain sets."""
        return None

    # ------------------------------------------------------------------------------------------ export
    #: the least share of test inputs on which ONNX fp32 and PyTorch must agree (labels, tags, generated tokens)
    min_parity_agreement: ClassVar[float] = 0.0
    #: the deployable's graphs; which to try int8 alone when all-int8 fails the int8 rule (export/int8_rule.py)
    onnx_parts: ClassVar[tuple[str, ...]] = ("model",)
    int8_subsets: ClassVar[tuple[tuple[str, ...], ...]] = ()

    def export_graph(self, model_dir: str, path: str) -> list[str]:
        """Write the fp32 ONNX deployable at `path`; returns the input names. Default: one graph (onnx_build)."""
        from domaintune.components.export.onnx_build import export_onnx

        return export_onnx(model_dir, path, self.onnx_outputs())

    def quantize_graph(self, src: str, dst: str, per_channel: bool, reduce_range: bool) -> dict:
        from domaintune.components.export.onnx_build import quantize_onnx

        return quantize_onnx(src, dst, per_channel=per_channel, reduce_range=reduce_range)

    def onnx_files(self, path: str) -> list[str]:
        """The files of the ONNX deployable whose main file is `path` (sizes), in `onnx_parts` order."""
        return [path]

    def model_labels(self, model) -> list[str]:
        from domaintune.components.export.onnx_build import model_labels

        return model_labels(model)

    def latency(self, model, tokenizer, files: dict, texts, max_length: int, runs: int, warmup: int,
                typical_tokens: int | None = None) -> dict:
        """The export's short probe: the ONNX `files` ({name: path}) side by side at batch 1 x typical length,
        what a served request costs. Not PyTorch, not 32 x max_length: that matrix (4 backends x 2 shapes) cost
        more than the training on the bundled sample (bench/BENCHMARKS.md) and lives in
        `python -m bench.inference_latency`."""
        from domaintune.components.export.latency import measure_latencies, typical_length

        typical = typical_tokens or typical_length(tokenizer, texts, max_length)
        return measure_latencies(None, tokenizer, files, texts, shapes=[(1, min(typical, max_length))],
                                 runs=runs, warmup=warmup)

    @abstractmethod
    def onnx_outputs(self) -> dict[str, dict[int, str]]:
        """ONNX output names and their dynamic axes (inputs are always batch x sequence)."""

    @abstractmethod
    def read_test(self, path: str, labels: list[str]) -> pd.DataFrame:
        """A labeled test file (a split file, or any file the task reads) with label ids of `labels`."""

    @abstractmethod
    def reference_outputs(self, model, tokenizer, frame: pd.DataFrame, max_length: int):
        """PyTorch fp32 logits of a loaded model on the frame, in the batches the ONNX side uses."""

    @abstractmethod
    def onnx_outputs_of(self, path: str, frame: pd.DataFrame):
        """onnxruntime logits of the ONNX file at `path` on the frame."""

    @abstractmethod
    def max_abs_diff(self, a, b) -> float:
        """The largest absolute difference between two backends' logits (the parity check)."""

    @abstractmethod
    def agreement(self, a, b) -> float:
        """Share of predictions (labels, tags) on which two backends agree."""

    @abstractmethod
    def deployable_metrics(self, outputs, frame: pd.DataFrame, labels: list[str]) -> dict:
        """Quality of one backend's outputs on the test split; contains `quality_metric` and `n`."""

    # -------------------------------------------------------------------------------------- registry
    @abstractmethod
    def summary_metrics(self, metrics: dict) -> dict[str, Any]:
        """Test metrics as flat MLflow metric names (without the `test_` prefix)."""

    @abstractmethod
    def card_context(self, labels: list[str], metrics: dict, metrics_pytorch: dict | None = None) -> dict:
        """Task-specific parts of the model card: `what` (intended use), `auto_class`, `outputs`, `label_kind`,
        and optionally `headline` / `pytorch_headline` (the test metrics in a sentence)."""

    @abstractmethod
    def pyfunc_signature(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """The MLflow model signature: ([(type, input column)], [(type, output column)])."""
