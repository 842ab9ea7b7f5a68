"""Token classification (named-entity recognition): a tag per word, entities as IOB2 spans.

Data (io/conll.py): CoNLL files, JSONL/Parquet with `tokens` + `tags`, or a text column + character spans.
Tags must be IOB2 (`O`, `B-X`, `I-X`); an `I-X` that does not continue an `X` entity (IOB1, or an
annotation slip) is repaired to `B-X` and counted in the data report. Split layout: `tokens`, `tags`,
`labels` (tag ids), `text` (the tokens joined by spaces), `doc`. The split keeps documents whole where the
data has `-DOCSTART-` markers. Predictor outputs for a frame are word-level logits per sentence.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pandas as pd

from domaintune.components.core.errors import BadInput, require
from domaintune.components.tasks.base import Task
from domaintune.components.tasks.tagging import entity_counts, group_split, repair_iob2, tag_order

class TokenClassification(Task):
    name = "token-classification"
    primary_metric = "entity_f1"
    quality_metric = "entity_f1"
    description = "named-entity tagging"
    model_kind = "a tagger"
    lora_task_type = "TOKEN_CLS"
    # A tagger reads word identity (names, rare words): with the word embeddings frozen, CoNLL-2003 valid entity
    # F1 was 0.57 points lower (0.9017 vs 0.9074, mean of two seeds; bench/BENCHMARKS.md)
    trains_input_embeddings = True

    # ------------------------------------------------------------------------------------------- data
    def read_file(self, uri, p):
        from domaintune.components.io.conll import read_tagged

        return read_tagged(uri, p.s3_endpoint_url, p.text_column, p.label_column)

    def read_rows(self, frame, uri, p):
        rows, repaired = [], 0
        conll = self._conll(uri)
        for tokens, tags, line in zip(frame["tokens"], frame["tags"], frame["line"]):
            where = f"{uri}: sentence at line {line}" if conll else f"{uri}: row {line}"
            if len(tokens) == 0:
                raise BadInput(f"{where}: empty sentence")
            if len(tokens) != len(tags):
                raise BadInput(f"{where}: {len(tokens)} tokens but {len(tags)} tags")
            place = ((lambda k, line=line: f"{uri}: line {line + k}") if conll
                     else (lambda k, where=where: f"{where}: token {k + 1}"))
            fixed, n = repair_iob2(list(tags), place, strict=bool(getattr(p, "strict_iob2", False)))
            repaired += n
            rows.append(fixed)
        out = pd.DataFrame({"tokens": [list(map(str, t)) for t in frame["tokens"]], "tags": rows,
                            "doc": frame["doc"].astype(int).to_numpy()})
        out["text"] = out["tokens"].map(" ".join)
        return out, {"rows_read": len(frame), "empty_texts_dropped": 0, "iob2_repaired_tags": repaired}

    @staticmethod
    def _conll(uri: str) -> bool:
        from domaintune.components.io.conll import is_conll

        return is_conll(uri)

    def duplicates(self, frame):
        return int(frame["text"].duplicated().sum())

    def label_space(self, train, uri, p):
        labels = tag_order(t for tags in train["tags"] for t in tags)
        require(len(labels) > 1, f"{uri}: no entity is annotated (every tag is O)")
        return labels

    def check_heldout(self, frame, labels, uri, p):
        unseen = sorted({t for tags in frame["tags"] for t in tags} - set(labels))
        if unseen:
            raise BadInput(f"{uri}: tags {unseen[:5]} do not occur in the training data {p.train_data} "
                           f"(its tags: {', '.join(labels)})")

    def split(self, frame, p):
        """Seeded; whole documents where the data has them, else sentences; identical sentences stay together."""
        groups = frame["doc"] if frame["doc"].nunique() > 1 else frame["text"]
        train, rest = group_split(frame, groups, p.validation_fraction + p.test_fraction, p.seed)
        share = p.test_fraction / (p.validation_fraction + p.test_fraction)
        rest_groups = groups.loc[rest.index]
        val, test = group_split(rest, rest_groups, share, p.seed)
        require(len(val) > 0 and len(test) > 0 and len(train) > 0,
                f"{p.train_data}: too few sentences ({len(frame)}) or documents to split; give explicit "
                "--validation-data and --test-data")
        return {"train": train, "validation": val, "test": test}, {
            "split_by": "document" if frame["doc"].nunique() > 1 else "sentence", "stratified": False}

    def carve(self, frame, share, seed):
        groups = frame["doc"] if frame["doc"].nunique() > 1 else frame["text"]
        return group_split(frame, groups, share, seed)

    def to_split_frame(self, frame, labels):
        index = {t: i for i, t in enumerate(labels)}
        df = frame.reset_index(drop=True).copy()
        df["labels"] = df["tags"].map(lambda tags: [index[t] for t in tags])
        return df[["text", "tokens", "tags", "labels", "doc"]]

    def data_report(self, splits, labels):
        return {"sentences": {n: len(df) for n, df in splits.items()},
                "documents": {n: int(df["doc"].nunique()) if (df["doc"] >= 0).any() else None for n, df in splits.items()},
                "entities": {n: entity_counts(df) for n, df in splits.items()},
                "length": {n: {"tokens_mean": round(float(df["tokens"].map(len).mean()), 2),
                               "tokens_max": int(df["tokens"].map(len).max())} for n, df in splits.items()},
                "leakage": {f"train_{n}": {"identical_texts": len(set(splits[n]["text"]) & set(splits["train"]["text"]))}
                            for n in ("validation", "test")}}

    # --------------------------------------------------------------------------------------- encoding
    def encode(self, tokenizer, frame, max_length, max_target_length=None):
        """Label alignment through word_ids: special tokens and later sub-tokens -100, a word's first sub-token its tag."""
        from domaintune.components.evaluation.entities import spans

        tokens = [list(t) for t in frame["tokens"]]
        full = tokenizer(tokens, is_split_into_words=True)
        enc = tokenizer(tokens, is_split_into_words=True, truncation=True, max_length=max_length)
        labels, cut_sentences, cut_entities = [], 0, 0
        for i, tags in enumerate(frame["labels"]):
            word_ids, previous, row = enc.word_ids(i), None, []
            for w in word_ids:
                row.append(-100 if w is None or w == previous else int(tags[w]))
                previous = w
            labels.append(row)
            kept = max((w for w in word_ids if w is not None), default=-1) + 1
            if kept < len(tags):
                cut_sentences += 1
                cut_entities += sum(1 for s, _, _ in spans(list(frame["tags"].iloc[i])) if s >= kept)
        lengths = np.array([len(x) for x in full["input_ids"]])
        columns = {k: enc[k] for k in enc.keys()}
        columns["labels"], columns["length"] = labels, [len(x) for x in enc["input_ids"]]
        return columns, {"examples": len(tokens), "tokens_mean": round(float(lengths.mean()), 2),
                         "tokens_p95": float(np.percentile(lengths, 95)), "tokens_max": int(lengths.max()),
                         "truncated": cut_sentences, "truncated_fraction": round(cut_sentences / len(tokens), 4),
                         "entities_cut_by_truncation": cut_entities}

    # --------------------------------------------------------------------------------------- training
    def auto_model_class(self):
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def lora_modules_to_save(self, model):
        return ["classifier"]

    def collator(self, tokenizer):
        from transformers import DataCollatorForTokenClassification

        return DataCollatorForTokenClassification(tokenizer)

    def compute_metrics(self, eval_pred, labels):
        from domaintune.components.evaluation.entities import entity_metrics

        logits, label_ids = eval_pred
        preds = np.asarray(logits).argmax(axis=-1)
        names = list(labels)
        gold, pred = [], []
        for p_row, l_row in zip(preds, np.asarray(label_ids)):
            keep = l_row != -100
            gold.append([names[i] for i in l_row[keep]])
            pred.append([names[i] for i in p_row[keep]])
        m = entity_metrics(gold, pred, analysis=False)
        return {k: m[k] for k in ("entity_f1", "entity_precision", "entity_recall", "token_accuracy")}

    # --------------------------------------------------------------------------------------- inference
    def load_predictor(self, ref):
        from domaintune.components.inference import token_backend

        if ref.endswith(".onnx") or (os.path.isdir(ref) and os.path.isfile(os.path.join(ref, "model.onnx"))):
            return token_backend.OnnxTagger(ref)
        if not os.path.exists(ref):
            raise BadInput(f"--model {ref}: no such file or directory")
        return token_backend.TorchTagger(ref)

    def serving_predictor(self, ref, intra_op_threads=None):
        """The export's ONNX tagger with its tokenizer read by `tokenizers`: no PyTorch in the server."""
        from domaintune.components.serving.predictors import ServingOnnxTagger

        return ServingOnnxTagger(ref, intra_op_threads=intra_op_threads)

    def predict_frame(self, predictor, frame, batch_size=32):
        return predictor.word_logits(list(frame["tokens"]), batch_size=batch_size)

    def format_predictions(self, predictor, outputs, texts):
        return [{"text": t, "entities": entities} for t, entities in zip(texts, outputs)]

    # -------------------------------------------------------------------------------------- evaluation
    def read_labeled(self, path, text_column, label_column, labels):
        from domaintune.components.io.conll import read_tagged

        frame, _ = read_tagged(path, "", text_column, label_column)
        rows, _ = self.read_rows(frame, path, None)
        self.check_heldout(rows, labels, path, SimpleNamespace(train_data="the model's training data"))
        return self.to_split_frame(rows, labels)

    def score(self, outputs, frame, labels):
        from domaintune.components.evaluation.entities import entity_metrics, tags_from_logits

        return entity_metrics([list(t) for t in frame["tags"]], tags_from_logits(outputs, labels))

    def prediction_table(self, frame, outputs, labels):
        from domaintune.components.evaluation.entities import tags_from_logits

        return pd.DataFrame({"text": frame["text"], "gold": frame["tags"].map(" ".join),
                             "predicted": [" ".join(t) for t in tags_from_logits(outputs, labels)]})

    def bias_checks(self, predictor, outputs, frame, labels, p):
        from domaintune.components.evaluation.bias.names import name_swap_probe

        return {"slices": None, "counterfactual": name_swap_probe(predictor, frame)}

    def write_plots(self, metrics, labels, directory):
        from domaintune.components.evaluation.entities import render_entity_report

        with open(os.path.join(directory, "entity_report.md"), "w") as f:
            f.write(render_entity_report(metrics))
        return ["entity_report.md"]

    def bias_report(self, bias, gate, thresholds):
        from domaintune.components.evaluation.bias.names import render_name_probe_report

        return render_name_probe_report(bias, gate, thresholds)

    # ------------------------------------------------------------------------------------------ export
    def onnx_outputs(self):
        return {"logits": {0: "batch", 1: "sequence"}}

    def read_test(self, path, labels):
        if path.endswith(".parquet"):
            frame = pd.read_parquet(path)
            if {"tokens", "tags"} <= set(frame.columns):
                frame["tokens"], frame["tags"] = frame["tokens"].map(list), frame["tags"].map(list)
                return frame
        return self.read_labeled(path, "text", "label", labels)

    def reference_outputs(self, model, tokenizer, frame, max_length):
        from domaintune.components.inference.token_backend import TorchTagger

        return TorchTagger(model=model, tokenizer=tokenizer, max_length=max_length).word_logits(list(frame["tokens"]))

    def onnx_outputs_of(self, path, frame):
        from domaintune.components.inference.token_backend import OnnxTagger

        return OnnxTagger(path).word_logits(list(frame["tokens"]))

    def max_abs_diff(self, a, b):
        return float(max((np.abs(x - y).max() for x, y in zip(a, b) if len(x)), default=0.0))

    def agreement(self, a, b):
        same = [(x.argmax(axis=-1) == y.argmax(axis=-1)) for x, y in zip(a, b) if len(x)]
        return float(np.concatenate(same).mean()) if same else 1.0

    def deployable_metrics(self, outputs, frame, labels):
        m = self.score(outputs, frame, labels)
        return {"entity_f1": m["entity_f1"], "entity_f1_strict": m["entity_f1_strict"], "n": m["n"]}

    # -------------------------------------------------------------------------------------- registry
    def summary_metrics(self, metrics):
        out = {k: metrics[k] for k in ("entity_f1", "entity_precision", "entity_recall", "entity_macro_f1",
                                       "entity_f1_strict", "token_accuracy", "n")}
        out.update({f"f1_{t}": v["f1"] for t, v in metrics["per_type"].items()})
        return out

    def card_context(self, labels, metrics, metrics_pytorch=None):
        types = sorted({t[2:] for t in labels if t != "O"})
        m, mp = metrics, metrics_pytorch or metrics
        return {"what": f"Named-entity tagging of {len(types)} entity types ({', '.join(f'`{t}`' for t in types)})",
                "auto_class": "AutoModelForTokenClassification", "label_kind": "entity type",
                "outputs": "entities (entity_group, score, word, start, end)",
                "headline": (f"Entity F1 **{m['entity_f1']:.4f}** (seqeval, CoNLL-eval mode; strict IOB2 "
                             f"{m['entity_f1_strict']:.4f}), precision {m['entity_precision']:.4f}, recall "
                             f"{m['entity_recall']:.4f}, n = {m['n']} sentences. Errors: "
                             + ", ".join(f"{k} {v}" for k, v in m["errors"].items()) + "."),
                "pytorch_headline": f"entity F1 {mp['entity_f1']:.4f} (strict {mp['entity_f1_strict']:.4f})"}

    def pyfunc_signature(self):
        return [("string", "text")], [("string", "entities")]
