"""Sequence-to-sequence generation, summarization first: a source text (`--text-column`) -> a short target
(`--target-column`): a support conversation -> a one-line summary, a news story -> its headline.

Data (tasks/seq2seq_data.py): pairs from any table ingest reads (DialogSum's JSONL: `--text-column dialogue`),
split on the source text. Split layout: `text`, `summary`. Models (tasks/seq2seq_model.py): any
AutoModelForSeq2SeqLM checkpoint, or BERT2BERT-share warm-started from an encoder (the packaged MiniLM).
Training: Seq2SeqTrainer, labels padded with -100 by DataCollatorForSeq2Seq, early stopping on ROUGE-L of
greedy generations on a validation sample. Predictor outputs for a frame: one summary string per row.
Evaluation (evaluation/rouge.py): ROUGE-1/2/L/Lsum, lead-N (and longest-turn) baselines scored the same way,
generated vs reference length, unsupported numbers and names, the lowest-ROUGE examples.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from domaintune.components.tasks.base import Task
from domaintune.components.tasks.seq2seq_data import (COLUMNS, pairs_report, read_pairs, source_split,
                                                      token_stats)

LEAD_N = 1  # one-line targets: the first sentence is the extractive baseline to beat
VALIDATION_SAMPLE = 200  # validation rows generated for per-epoch ROUGE-L (bounded cost)


class Seq2Seq(Task):
    name = "seq2seq"
    primary_metric = "rougeL"
    # ROUGE-L of a model that emits fluent text unrelated to the target is ~0.05-0.1 (lead-1 on Reuters headlines:
    # 0.21); the margin over lead-N (--min-lead-margin) is the check that says whether the model learned the task.
    quality_floor = 0.1
    quality_metric = "rougeL"
    description = "summarization"
    model_kind = "a seq2seq model"
    lora_task_type = "SEQ_2_SEQ_LM"
    min_parity_agreement = 0.99  # greedy outputs token-identical, ONNX fp32 vs PyTorch (issue #14)

    # ------------------------------------------------------------------------------------------- data
    def read_rows(self, frame, uri, p):
        rows = read_pairs(frame, uri, p.text_column, getattr(p, "target_column", "summary"))
        return rows, {"rows_read": len(frame), "empty_texts_dropped": 0}

    def duplicates(self, frame):
        return int(frame.duplicated(subset=["text", "summary"]).sum())

    def label_space(self, train, uri, p):
        return []  # no label set: the vocabulary is the tokenizer's

    def check_heldout(self, frame, labels, uri, p):
        return None

    def split(self, frame, p):
        train, rest = source_split(frame, p.validation_fraction + p.test_fraction, p.seed)
        val, test = source_split(rest, p.test_fraction / (p.validation_fraction + p.test_fraction), p.seed)
        from domaintune.components.core.errors import require

        require(len(train) > 0 and len(val) > 0 and len(test) > 0,
                f"{p.train_data}: too few distinct sources ({frame['text'].nunique()}) to split; give explicit "
                "--validation-data and --test-data")
        return {"train": train, "validation": val, "test": test}, {"split_by": "source text", "stratified": False}

    def carve(self, frame, share, seed):
        return source_split(frame, share, seed)

    def to_split_frame(self, frame, labels):
        return frame.reset_index(drop=True)[COLUMNS]

    def data_report(self, splits, labels):
        return pairs_report(splits)

    # --------------------------------------------------------------------------------------- encoding
    def encode(self, tokenizer, frame, max_length, max_target_length=None):
        """Sources (with the model's prefix) and `text_target` labels, each truncated to its own bound; a
        leading [CLS] is dropped from the labels, since the decoder starts from it (BERT2BERT)."""
        from domaintune.components.tasks.seq2seq_model import prefix_of

        target_length = max_target_length or 64
        sources = [prefix_of(tokenizer.name_or_path) + t for t in frame["text"]]
        targets = list(frame["summary"])
        full_src, full_tgt = tokenizer(sources)["input_ids"], tokenizer(text_target=targets)["input_ids"]
        enc = tokenizer(sources, truncation=True, max_length=max_length)
        labels = tokenizer(text_target=targets, truncation=True, max_length=target_length)["input_ids"]
        cls = tokenizer.cls_token_id
        if cls is not None:
            labels = [row[1:] if row and row[0] == cls else row for row in labels]
        columns = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels,
                   "length": [len(x) for x in enc["input_ids"]]}
        return columns, {**token_stats(full_src, full_tgt, max_length, target_length),
                         "max_target_length": target_length}

    # --------------------------------------------------------------------------------------- training
    def auto_model_class(self):
        from domaintune.components.tasks.seq2seq_model import SharedSeq2Seq

        return SharedSeq2Seq

    def build_model(self, model_dir, labels):
        from domaintune.components.tasks.seq2seq_model import build_seq2seq

        return build_seq2seq(model_dir)

    def collator(self, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)

    def training_setup(self, model, tokenizer, token_stats):
        from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

        # generation stops where the targets were cut: tokenize's max_target_length (its params in token_stats)
        target = (token_stats.get("params") or {}).get("max_target_length") or token_stats.get("max_target_length")
        model.generation_config.max_new_tokens = int(target or 64)
        return {"trainer": Seq2SeqTrainer, "arguments": Seq2SeqTrainingArguments,
                "options": {"predict_with_generate": True, "generation_num_beams": 1},
                "validation_rows": VALIDATION_SAMPLE}

    def metric_function(self, labels, tokenizer):
        def rouge_of_generations(eval_pred):
            from domaintune.components.evaluation.rouge import rouge

            preds, label_ids = eval_pred
            preds = np.where(np.asarray(preds) < 0, tokenizer.pad_token_id, preds)
            label_ids = np.where(np.asarray(label_ids) < 0, tokenizer.pad_token_id, label_ids)
            decoded = tokenizer.batch_decode(preds, skip_special_tokens=True)
            references = tokenizer.batch_decode(label_ids, skip_special_tokens=True)
            return rouge([d.strip() for d in decoded], [r.strip() for r in references])

        return rouge_of_generations

    def compute_metrics(self, eval_pred, labels):
        raise NotImplementedError("seq2seq metrics need the tokenizer: metric_function")

    # --------------------------------------------------------------------------------------- inference
    def load_predictor(self, ref):
        from domaintune.components.core.errors import BadInput
        from domaintune.components.inference import seq2seq_backend as backend

        if ref.endswith(".onnx") or (os.path.isdir(ref) and os.path.isfile(os.path.join(ref, "model.onnx"))):
            return backend.OnnxSummarizer(ref)
        if not os.path.exists(ref):
            raise BadInput(f"--model {ref}: no such file or directory")
        return backend.TorchSummarizer(ref)

    def serving_predictor(self, ref, intra_op_threads=None):
        """The export's encoder/decoder pair with its tokenizer read by `tokenizers`: no PyTorch in the server."""
        from domaintune.components.serving.predictors import ServingOnnxSummarizer

        return ServingOnnxSummarizer(ref, intra_op_threads=intra_op_threads)

    def format_predictions(self, predictor, outputs, texts):
        return [{"text": t, "summary": s} for t, s in zip(texts, outputs)]

    # -------------------------------------------------------------------------------------- evaluation
    def read_labeled(self, path, text_column, label_column, labels):
        from domaintune.components.io.tables import read_table

        frame, _ = read_table(path)
        target = label_column if label_column in frame.columns else "summary"
        return self.to_split_frame(read_pairs(frame, path, text_column, target), labels)

    def score(self, outputs, frame, labels):
        from domaintune.components.evaluation.seq2seq_metrics import summary_scores

        return summary_scores(list(outputs), list(frame["summary"]), list(frame["text"]), LEAD_N)

    def prediction_table(self, frame, outputs, labels):
        return pd.DataFrame({"text": frame["text"], "reference": frame["summary"], "summary": list(outputs)})

    def bias_checks(self, predictor, outputs, frame, labels, p):
        """The summary swap probe, reported (evaluation/bias/summary_swap.py); no gated fairness check yet."""
        from domaintune.components.evaluation.bias.summary_swap import summary_swap_probe

        probe = summary_swap_probe(predictor, list(frame["text"]), list(outputs), p.identity_terms)
        return {"slices": None, "counterfactual": None, "summary_swap": probe}

    def bias_report(self, bias, gate, thresholds):
        from domaintune.components.evaluation.seq2seq_metrics import render_bias_note

        return render_bias_note(bias, gate)

    def write_plots(self, metrics, labels, directory):
        from domaintune.components.evaluation.seq2seq_metrics import render_report

        with open(os.path.join(directory, "summarization_report.md"), "w") as f:
            f.write(render_report(metrics))
        return ["summarization_report.md"]

    def gate_checks(self, metrics, thresholds):
        from domaintune.components.evaluation.seq2seq_metrics import gate_checks

        return gate_checks(metrics, thresholds)

    # ------------------------------------------------------------------------------------------ export
    def onnx_outputs(self):
        return {"logits": {0: "batch"}}

    onnx_parts = ("encoder", "decoder")
    # the decoder runs once per generated token, most of the generation time: int8 there first
    int8_subsets = (("decoder",), ("encoder",))

    def export_graph(self, model_dir, path):
        from domaintune.components.export.onnx_seq2seq import export_pair

        return export_pair(model_dir, path)

    def quantize_graph(self, src, dst, per_channel, reduce_range):
        from domaintune.components.export.onnx_seq2seq import quantize_pair

        return quantize_pair(src, dst, per_channel=per_channel, reduce_range=reduce_range)

    def onnx_files(self, path):
        from domaintune.components.export.onnx_seq2seq import pair_files

        return pair_files(path)

    def model_labels(self, model):
        return []

    def read_test(self, path, labels):
        if path.endswith(".parquet"):
            frame = pd.read_parquet(path)
            if set(COLUMNS) <= set(frame.columns):
                return frame
        return self.read_labeled(path, "text", "summary", labels)

    def reference_outputs(self, model, tokenizer, frame, max_length):
        from domaintune.components.evaluation.seq2seq_metrics import generated
        from domaintune.components.inference.seq2seq_backend import TorchSummarizer

        return generated(TorchSummarizer(model=model, tokenizer=tokenizer, max_length=max_length), frame)

    def onnx_outputs_of(self, path, frame):
        from domaintune.components.evaluation.seq2seq_metrics import generated
        from domaintune.components.inference.seq2seq_backend import OnnxSummarizer

        return generated(OnnxSummarizer(path), frame)

    def max_abs_diff(self, a, b):
        from domaintune.components.evaluation.seq2seq_metrics import step_logit_diff

        return step_logit_diff(a, b)

    def agreement(self, a, b):
        return float(np.mean([x == y for x, y in zip(a["ids"], b["ids"])])) if len(a["ids"]) else 1.0

    def deployable_metrics(self, outputs, frame, labels):
        from domaintune.components.evaluation.rouge import rouge

        return {**rouge(outputs["summaries"], list(frame["summary"])), "n": len(frame)}

    def latency(self, model, tokenizer, files, texts, max_length, runs, warmup, typical_tokens=None):
        from domaintune.components.evaluation.seq2seq_metrics import generation_latency

        return generation_latency(model, tokenizer, files, texts, max_length, runs, warmup)

    # -------------------------------------------------------------------------------------- registry
    def summary_metrics(self, metrics):
        from domaintune.components.evaluation.seq2seq_metrics import flat_metrics

        return flat_metrics(metrics)

    def card_context(self, labels, metrics, metrics_pytorch=None):
        from domaintune.components.evaluation.seq2seq_metrics import card_context

        return card_context(metrics, metrics_pytorch)

    def pyfunc_signature(self):
        return [("string", "text")], [("string", "summary")]
