"""Cheap baselines for a classification run, scored on the same test split as the fine-tuned model: is
fine-tuning worth it on this data?

- `frozen_embeddings`: the base model frozen, its mean-pooled, L2-normalised token embeddings (what a
  sentence-transformers model such as the packaged MiniLM was trained to produce) + logistic regression;
- `tfidf`: word 1-2-gram TF-IDF + logistic regression.

Both fit on at most `max_rows` training rows (a seeded stratified sample), choose the regularisation C on
the validation split by macro-F1 (the fine-tuned model's early stopping sees validation too, so that is the
fair comparison), and report test accuracy/macro-F1, the seconds they took (embedding included) and the
lift of the fine-tuned model over each. sklearn does the fitting; only the mean pooling is written here
(transformers has no pooling helper for AutoModel outputs, and sentence-transformers is not a dependency).
"""
from __future__ import annotations

import time

import numpy as np
import pandas as pd

C_GRID = (0.1, 1.0, 10.0, 100.0)
EMBED_BATCH = 64


def capped(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """At most `max_rows` rows, stratified by label (every label keeps its share, at least one row)."""
    if len(frame) <= max_rows:
        return frame
    share = max_rows / len(frame)
    parts = [g.sample(n=max(1, int(round(len(g) * share))), random_state=seed) for _, g in frame.groupby("label")]
    return pd.concat(parts).sort_index()


def mean_pooled(model_dir: str, texts: list[str], max_length: int) -> np.ndarray:
    """Frozen base-model sentence embeddings: the attention-masked mean of the last hidden states, L2-normed."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from domaintune.components.inference.batching import length_sorted_batches

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for idx in length_sorted_batches([len(x) for x in enc["input_ids"]], EMBED_BATCH):
            batch = tokenizer.pad({k: [enc[k][i] for i in idx] for k in enc.keys()}, return_tensors="pt")
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def fit_and_score(x_train, y_train, x_val, y_val, x_test, y_test, labels: list[str], seed: int) -> dict:
    """Logistic regression with C chosen on validation macro-F1; the test metrics of the chosen one."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    best = None
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit(x_train, y_train)
        f1 = f1_score(y_val, clf.predict(x_val), average="macro", labels=range(len(labels)), zero_division=0)
        if best is None or f1 > best[0]:
            best = (f1, c, clf)
    _, c, clf = best
    pred = clf.predict(x_test)
    return {"accuracy": float(accuracy_score(y_test, pred)),
            "macro_f1": float(f1_score(y_test, pred, average="macro", labels=range(len(labels)), zero_division=0)),
            "validation_macro_f1": float(best[0]), "C": c}


def frozen_embeddings(base_dir: str, train, validation, test, labels, max_length: int, seed: int) -> dict:
    frames = (train, validation, test)
    vectors = mean_pooled(base_dir, [t for f in frames for t in f["text"].tolist()], max_length)
    a, b = len(train), len(train) + len(validation)
    return fit_and_score(vectors[:a], train["label"], vectors[a:b], validation["label"], vectors[b:], test["label"],
                         labels, seed)


def tfidf(train, validation, test, labels, seed: int) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1)
    x_train = vec.fit_transform(train["text"])
    return fit_and_score(x_train, train["label"], vec.transform(validation["text"]), validation["label"],
                         vec.transform(test["text"]), test["label"], labels, seed)


def run_baselines(base_dir: str, train, validation, test, labels: list[str], metrics: dict, metric: str,
                  max_length: int, max_rows: int, seed: int) -> dict:
    """Both baselines, their seconds and the lift of `metrics` (the deployable's) over each and the best."""
    train, validation = capped(train, max_rows, seed), capped(validation, max_rows, seed)
    results = {}
    for name, fit in (("frozen_embeddings", lambda: frozen_embeddings(base_dir, train, validation, test, labels,
                                                                        max_length, seed)),
                      ("tfidf", lambda: tfidf(train, validation, test, labels, seed))):
        started = time.monotonic()
        results[name] = {**fit(), "seconds": round(time.monotonic() - started, 2)}
        results[name]["lift"] = float(metrics[metric] - results[name][metric])
    best = max(results, key=lambda k: results[k][metric])
    return {"models": results, "metric": metric, "best": best, "lift": results[best]["lift"],
            "rows_fit": len(train), "rows_validation": len(validation), "n_test": len(test), "max_rows": max_rows}
