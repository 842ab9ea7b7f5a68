"""Sequence classification: one label per text (support-ticket routing, sentiment, clause types...).

Split layout: `text`, `label` (class id), `label_name`, plus any slice columns. Predictor outputs are
class probabilities, N x C.
"""
from __future__ import annotations

import os
import numpy as np
import pandas as pd

from domaintune.components.core.errors import BadInput
from domaintune.components.tasks.classification_quality import ClassificationQuality
from domaintune.components.tasks.classification_serving import ClassificationServing
from domaintune.components.tasks.classification_split import carve_heldout, stratified_split


def label_str(value) -> str:
    """A label as text: 1.0 read from a CSV/JSON number column is the label "1"."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return str(value).strip()


def sorted_labels(names) -> list[str]:
    """Numeric labels sort as numbers (2 < 10), anything else as strings: a stable, explicit label2id."""
    unique = set(names)
    try:
        return sorted(unique, key=lambda s: (float(s), s))
    except ValueError:
        return sorted(unique)


def _texts(column: pd.Series) -> pd.Series:
    return column.map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))


def length_stats(texts: pd.Series) -> dict:
    words = texts.str.split().str.len().to_numpy()
    chars = texts.str.len().to_numpy()
    return {
        "words": {"mean": round(float(words.mean()), 2), "p50": float(np.median(words)),
                  "p95": float(np.percentile(words, 95)), "max": int(words.max())},
        "chars": {"mean": round(float(chars.mean()), 2), "max": int(chars.max())},
    }


class Classification(ClassificationQuality, ClassificationServing):
    name = "classification"
    primary_metric = "macro_f1"
    quality_metric = "accuracy"
    description = "text classification"
    model_kind = "a classifier"
    lora_task_type = "SEQ_CLS"

    # ------------------------------------------------------------------------------------------- data
    def read_rows(self, frame, uri, p):
        """Keep the text, label and slice columns; reject what cannot be trained on, report what was dropped."""
        for column in [p.text_column, p.label_column, *p.slice_column_list]:
            if column not in frame.columns:
                raise BadInput(f"{uri}: no column {column!r} (columns: {', '.join(map(str, frame.columns))})")
        texts = _texts(frame[p.text_column])
        empty = texts.str.strip() == ""
        if empty.all():
            raise BadInput(f"{uri}: column {p.text_column!r} is empty in every row")
        labels = frame[p.label_column]
        missing = labels.isna() | (labels.astype(str).str.strip() == "")
        if missing.any():
            row = int(np.flatnonzero(missing.to_numpy())[0]) + 1
            raise BadInput(f"{uri}: row {row}: empty value in label column {p.label_column!r}")
        out = pd.DataFrame({"text": texts, "label_name": labels.map(label_str)})
        for column in p.slice_column_list:
            out[column] = frame[column].astype(str)
        out = out[~empty.to_numpy()].reset_index(drop=True)
        return out, {"rows_read": len(frame), "empty_texts_dropped": int(empty.sum())}

    def duplicates(self, frame):
        return int(frame.duplicated(["text", "label_name"]).sum())

    def label_space(self, train, uri, p):
        labels = sorted_labels(train["label_name"])
        if len(labels) < 2:
            raise BadInput(f"{uri}: column {p.label_column!r} has a single class {labels[0]!r}; need at least 2")
        return labels

    def check_heldout(self, frame, labels, uri, p):
        unseen = ~frame["label_name"].isin(labels)
        if unseen.any():
            row = int(np.flatnonzero(unseen.to_numpy())[0])
            raise BadInput(f"{uri}: row {row + 1}: label {frame['label_name'].iloc[row]!r} "
                           f"does not occur in the training data {p.train_data}")

    def split(self, frame, p):
        return stratified_split(frame, p)

    def carve(self, frame, share, seed):
        return carve_heldout(frame, share, seed)

    def to_split_frame(self, frame, labels):
        label2id = {lab: i for i, lab in enumerate(labels)}
        df = frame.reset_index(drop=True)
        df.insert(1, "label", df["label_name"].map(label2id).astype("int64"))
        return df

    def data_report(self, splits, labels):
        train_texts = set(splits["train"]["text"])
        report = {
            "label_counts": {name: {lab: int((df["label_name"] == lab).sum()) for lab in labels}
                             for name, df in splits.items()},
            "length": {name: length_stats(df["text"]) for name, df in splits.items()},
            "duplicates": {},
            "leakage": {},
        }
        for name, df in splits.items():
            dup_texts = df["text"].duplicated(keep=False)
            conflicting = df[dup_texts].groupby("text")["label_name"].nunique()
            report["duplicates"][name] = {"duplicate_rows": int(df["text"].duplicated().sum()),
                                          "texts_with_conflicting_labels": int((conflicting > 1).sum())}
        for name in ("validation", "test"):
            shared = sorted(set(splits[name]["text"]) & train_texts)
            report["leakage"][f"train_{name}"] = {"identical_texts": len(shared), "examples": shared[:5]}
        return report

    # --------------------------------------------------------------------------------------- encoding
    def encode(self, tokenizer, frame, max_length, max_target_length=None):
        texts = frame["text"].tolist()
        full = tokenizer(texts)["input_ids"]
        lengths = np.fromiter((len(x) for x in full), dtype=np.int64, count=len(full))
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        columns = {k: encoded[k] for k in encoded.keys()}
        columns["labels"] = frame["label"].tolist()
        columns["length"] = [len(x) for x in encoded["input_ids"]]
        stats = {"examples": len(lengths), "tokens_mean": round(float(lengths.mean()), 2),
                 "tokens_p95": float(np.percentile(lengths, 95)), "tokens_max": int(lengths.max()),
                 "truncated": int((lengths > max_length).sum()),
                 "truncated_fraction": round(float((lengths > max_length).mean()), 4)}
        return columns, stats

    # --------------------------------------------------------------------------------------- training
    def auto_model_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def lora_modules_to_save(self, model):
        # The pooler is trained in full with the head where the model has one: BERT's classifier reads the
        # pooled [CLS] vector, and a frozen pooler from a checkpoint trained with mean pooling (such as the
        # packaged sentence-transformers MiniLM) starves it. Measured on 4,000 SST-2 rows, 1 epoch, lr 5e-4:
        # dev accuracy 0.575 -> 0.770 for 148k more trainable weights at the same speed (bench/BENCHMARKS.md).
        pooler = [name for name, _ in model.named_modules() if name.split(".")[-1] == "pooler"]
        return ["classifier", "pooler"] if pooler else None

    def collator(self, tokenizer):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)

    def compute_metrics(self, eval_pred, labels):
        from sklearn.metrics import accuracy_score, f1_score

        logits, labels = eval_pred
        preds = np.asarray(logits).argmax(axis=-1)
        return {"accuracy": accuracy_score(labels, preds), "macro_f1": f1_score(labels, preds, average="macro")}

    # --------------------------------------------------------------------------------------- inference
    def load_predictor(self, ref):
        """A model directory from a run (PyTorch), or an ONNX file / export directory (onnxruntime)."""
        if ref.endswith(".onnx") or (os.path.isdir(ref) and os.path.isfile(os.path.join(ref, "model.onnx"))):
            from domaintune.components.inference.onnx_backend import OnnxClassifier

            return OnnxClassifier(ref)
        if not os.path.exists(ref):
            raise BadInput(f"--model {ref}: no such file or directory")
        from domaintune.components.inference.torch_backend import HFClassifier

        return HFClassifier(ref)

    def format_predictions(self, predictor, outputs, texts):
        labels = predictor.labels
        return [{"text": t, "label": labels[int(p.argmax())], "score": float(p.max())}
                for t, p in zip(texts, outputs)]

    # -------------------------------------------------------------------------------------- evaluation
    def read_labeled(self, path, text_column, label_column, labels):
        from domaintune.components.io.tables import read_table

        frame, _ = read_table(path)
        for column in (text_column, label_column):
            if column not in frame.columns:
                raise BadInput(f"{path}: no column {column!r} (columns: {', '.join(map(str, frame.columns))})")
        index = {label: i for i, label in enumerate(labels)}
        names = frame[label_column].map(label_str)
        unknown = ~names.isin(list(index))
        if unknown.any():
            row = int(unknown.to_numpy().nonzero()[0][0])
            raise BadInput(f"{path}: row {row + 1}: label {names.iloc[row]!r} is not one of the model's labels {labels}")
        return pd.DataFrame({"text": frame[text_column].astype(str), "label": names.map(index).astype("int64"),
                             "label_name": names})

    def score(self, outputs, frame, labels):
        from domaintune.components.evaluation.metrics import classification_metrics

        return classification_metrics(frame["label"].to_numpy(), np.asarray(outputs).argmax(axis=1), labels)

    def prediction_table(self, frame, outputs, labels):
        out = frame[["text", "label"]].copy()
        out["predicted"] = np.asarray(outputs).argmax(axis=1)
        out["confidence"] = np.asarray(outputs).max(axis=1)
        return out

    def bias_checks(self, predictor, outputs, frame, labels, p):
        from domaintune.components.evaluation import bias

        preds = np.asarray(outputs).argmax(axis=1)
        slices = (bias.slice_metrics(frame, frame["label"].to_numpy(), preds, labels, p.slice_column_list,
                                     p.min_slice_size) if p.slice_column_list else None)
        terms = bias.load_identity_terms(p.identity_terms or None)
        probe = bias.counterfactual_probe(predictor, frame["text"].tolist(), terms=terms,
                                          max_texts=p.probe_max_texts, min_prob_change=p.flip_min_prob_change)
        return {"slices": slices, "counterfactual": probe}

    def bias_report(self, bias, gate, thresholds):
        from domaintune.components.evaluation import bias as probes

        return probes.render_bias_report({**bias, "gate": gate, "thresholds": thresholds})

    def write_plots(self, metrics, labels, directory):
        from domaintune.components.evaluation.metrics import plot_confusion_matrix

        plot_confusion_matrix(metrics["confusion_matrix"], labels, os.path.join(directory, "confusion_matrix.png"))
        return ["confusion_matrix.png"]

    # ------------------------------------------------------------------------------------------ export
    def onnx_outputs(self):
        return {"logits": {0: "batch"}}

    def read_test(self, path, labels):
        from domaintune.components.io.labeled import label_ids, read_labeled

        frame = read_labeled(path)
        frame["label"] = label_ids(frame, labels, path)
        return frame

    def reference_outputs(self, model, tokenizer, frame, max_length):
        from domaintune.components.inference.torch_backend import torch_logits

        return torch_logits(model, tokenizer, frame["text"].tolist(), max_length)

    def onnx_outputs_of(self, path, frame):
        from domaintune.components.inference.onnx_backend import OnnxClassifier

        return OnnxClassifier(path).predict_logits(frame["text"].tolist(), batch_size=32)

    def max_abs_diff(self, a, b):
        return float(np.abs(np.asarray(a) - np.asarray(b)).max())

    def agreement(self, a, b):
        return float((np.asarray(a).argmax(axis=-1) == np.asarray(b).argmax(axis=-1)).mean())

    def deployable_metrics(self, outputs, frame, labels):
        m = self.score(outputs, frame, labels)
        return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "n": m["n"]}

    # -------------------------------------------------------------------------------------- registry
    def summary_metrics(self, metrics):
        out = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "n": metrics["n"]}
        out.update({f"f1_{label}": v["f1"] for label, v in metrics["per_class"].items()})
        return out

    def card_context(self, labels, metrics, metrics_pytorch=None):
        return {"what": f"Text classification into {len(labels)} classes "
                        f"({', '.join(f'`{lab}`' for lab in labels) or '–'})",
                "auto_class": "AutoModelForSequenceClassification", "label_kind": "class",
                "outputs": "label, score"}

    def pyfunc_signature(self):
        return [("string", "text")], [("string", "label"), ("double", "score")]

