"""NER: CoNLL-2003 train -> valid through `domaintune run --task token-classification` with the pipeline's
defaults, beside a plain transformers run_ner-style Trainer recipe on the same model (its defaults: lr 5e-5,
batch 8, fp32, no length grouping, dynamic padding, first sub-token labels), then the tagger scored on WNUT-17
dev as out-of-domain. Entity F1 (seqeval, CoNLL-eval and strict IOB2), examples/s, int8 vs PyTorch latency. With the recipe on the same sentences as ours, also the time each needs to the
recipe's final validation F1 ("at equal F1": ours from its per-epoch validation curve).

    python -m bench.ner_conll --json OUT [--limit N] [--recipe-limit N] [--recipe-epochs E] [--skip-recipe]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench._common import machine, write_json

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def cut(path: str, out: str, limit: int | None) -> str:
    """The first LIMIT sentences of a CoNLL file (all when None)."""
    if not limit:
        return os.path.abspath(path)
    kept, sentences = [], 0
    for line in open(path, encoding="utf-8"):
        kept.append(line)
        if not line.strip():
            sentences += 1
            if sentences >= limit:
                break
    open(out, "w", encoding="utf-8").write("".join(kept))
    return out


def run_pipeline(train: str, valid: str, work: str, extra: list[str]) -> dict:
    cmd = [os.path.join(os.path.dirname(sys.executable), "domaintune"), "run", "--task", "token-classification",
           "--train-data", train, "--validation-data", valid, "--test-data", valid, "--model-name", "bench-conll",
           "--output", os.path.join(work, "run"), *extra]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
    path = os.path.join(work, "run", "summary.json")
    if not os.path.isfile(path):
        sys.exit(proc.stderr[-3000:])
    s = json.load(open(path))
    return {"exit_code": proc.returncode, "wall_seconds": round(time.monotonic() - started, 1),
            "valid_pytorch": {k: s["metrics"]["test_pytorch"][k] for k in ("entity_f1", "entity_f1_strict",
                                                                          "entity_precision", "entity_recall")},
            "valid_deployable": {k: s["metrics"]["test"][k] for k in ("entity_f1", "entity_f1_strict")},
            "per_type_f1": {t: v["f1"] for t, v in s["metrics"]["test"]["per_type"].items()},
            "errors": s["metrics"]["test"]["errors"], "deployable": s["export"]["deployable"],
            "int8_quality_drop": s["export"]["int8_quality_drop"],
            "examples_per_second": s["training"]["examples_per_second"], "train_seconds": s["training"]["train_seconds"],
            "epochs_run": s["training"]["epochs_run"], "gate": s["gate"]["passed"], "gate_reasons": s["gate"]["reasons"],
            "name_probe": {a: {k: v.get(k) for k in ("flip_rate", "per_recall", "per_recall_gap")}
                           for a, v in ((s.get("bias") or {}).get("counterfactual") or {}).get("axes", {}).items()},
            "stages": s["stages"], "model_dir": s["model_dir"], "deployable_dir": os.path.dirname(s["deployable_path"])}


def run_recipe(train: str, valid: str, work: str, epochs: float) -> dict:
    """transformers' run_ner.py defaults on the same model and tokenized the same way (first sub-token)."""
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainingArguments)

    from domaintune.components.evaluation.entities import entity_metrics
    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.io.conll import read_conll
    from domaintune.components.tasks.token_classification import tag_order

    base = resolve_model("")
    tr, va = read_conll(train, train), read_conll(valid, valid)
    labels = tag_order(t for tags in tr["tags"] for t in tags)
    index = {t: i for i, t in enumerate(labels)}
    tokenizer = AutoTokenizer.from_pretrained(base)

    def encode(frame):
        enc = tokenizer(list(map(list, frame["tokens"])), is_split_into_words=True, truncation=True, max_length=128)
        rows = []
        for i, tags in enumerate(frame["tags"]):
            prev, row = None, []
            for w in enc.word_ids(i):
                row.append(-100 if w is None or w == prev else index.get(tags[w], 0))
                prev = w
            rows.append(row)
        return Dataset.from_dict({**{k: enc[k] for k in enc.keys()}, "labels": rows})

    model = AutoModelForTokenClassification.from_pretrained(base, num_labels=len(labels),
                                                            id2label=dict(enumerate(labels)), label2id=index)
    args = TrainingArguments(output_dir=os.path.join(work, "recipe"), learning_rate=5e-5, per_device_train_batch_size=8,
                             num_train_epochs=epochs, save_strategy="no", report_to=[], use_cpu=True, seed=42,
                             disable_tqdm=True, logging_steps=500)
    train_ds, valid_ds = encode(tr), encode(va)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, data_collator=DataCollatorForTokenClassification(tokenizer))
    started = time.monotonic()
    trainer.train()
    seconds = time.monotonic() - started
    out = trainer.predict(valid_ds)
    preds = out.predictions.argmax(-1)
    gold, pred = [], []
    for p_row, l_row in zip(preds, out.label_ids):
        keep = l_row != -100
        gold.append([labels[i] for i in l_row[keep]])
        pred.append([labels[i] for i in p_row[keep]])
    m = entity_metrics(gold, pred)
    return {"train_sentences": len(tr), "epochs": epochs, "train_seconds": round(seconds, 1),
            "examples_per_second": round(len(tr) * epochs / seconds, 2), "torch_threads": torch.get_num_threads(),
            "valid": {k: m[k] for k in ("entity_f1", "entity_f1_strict", "entity_precision", "entity_recall")}}


def epoch_curve(run_dir: str) -> list[dict]:
    """Validation entity F1 (CoNLL-eval mode) after each epoch of our run, with the training time at that point:
    the epochs have equal steps and each ends with the same evaluation, so epoch k ends at k/epochs of
    train_seconds (the Trainer's log has no wall clock)."""
    with open(os.path.join(run_dir, "reports", "history.json")) as f:
        h = json.load(f)
    per_epoch = h["train_seconds"] / h["epochs_run"]
    return [{"epoch": e["epoch"], "entity_f1": round(e["eval_entity_f1"], 4), "seconds": round(e["epoch"] * per_epoch, 1)}
            for e in h["log_history"] if "eval_entity_f1" in e]


def time_to_recipe_f1(curve: list[dict], recipe: dict) -> dict:
    """How much sooner our run reaches the recipe's final validation F1 (same metric, same sentences)."""
    target = recipe["valid"]["entity_f1"]
    reached = next((c for c in curve if c["entity_f1"] >= target), None)
    return {"recipe_entity_f1": target, "recipe_seconds": recipe["train_seconds"],
            "ours_epoch": reached and reached["epoch"], "ours_seconds": reached and reached["seconds"],
            "speedup": reached and round(recipe["train_seconds"] / reached["seconds"], 2)}


def out_of_domain(model_dir: str, deployable_dir: str, wnut: str) -> dict:
    """The CoNLL tagger on WNUT-17 dev: only the types both tag sets share can match (person, location)."""
    from domaintune.components.evaluation.entities import entity_metrics, tags_from_logits
    from domaintune.components.io.conll import read_conll
    from domaintune.components.tasks import task_of

    mapping = {"person": "PER", "location": "LOC", "corporation": "ORG", "group": "ORG"}
    frame = read_conll(wnut, wnut)
    gold = [[t[:2] + mapping[t[2:]] if t[2:] in mapping else "O" for t in tags] for tags in frame["tags"]]
    out = {}
    for name, ref in (("pytorch", model_dir), ("deployable", deployable_dir)):
        task = task_of(ref)
        predictor = task.load_predictor(ref)
        tags = tags_from_logits(predictor.word_logits(list(frame["tokens"])), predictor.labels)
        tags = [[t if t[2:] in ("PER", "LOC", "ORG") else "O" for t in s] for s in tags]  # MISC has no WNUT twin
        m = entity_metrics(gold, tags)
        out[name] = {k: m[k] for k in ("entity_f1", "entity_f1_strict", "entity_precision", "entity_recall")}
        out[name]["per_type_f1"] = {t: v["f1"] for t, v in m["per_type"].items()}
    out["mapping"] = mapping
    out["sentences"] = len(frame)
    return out


def latency(model_dir: str, deployable_dir: str, texts: list[str]) -> dict:
    from domaintune.components.export.latency import measure_latencies
    from domaintune.components.export.onnx_build import load_torch_model

    model, tokenizer = load_torch_model(model_dir)
    onnx = {"onnx_fp32": os.path.join(deployable_dir, "model.onnx"), "onnx_int8": os.path.join(deployable_dir, "model.int8.onnx")}
    return measure_latencies(model, tokenizer, onnx, texts, shapes=((1, 32), (32, 128)), runs=20, warmup=3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--limit", type=int, default=0, help="train sentences for the pipeline (0: all 14,041)")
    ap.add_argument("--recipe-limit", type=int, default=0, help="train sentences for the recipe (0: as --limit)")
    ap.add_argument("--recipe-epochs", type=float, default=3.0)
    ap.add_argument("--skip-recipe", action="store_true")
    ap.add_argument("--work", help="scratch directory, kept")
    ap.add_argument("extra", nargs="*", help="more `domaintune run` flags, after --")
    args = ap.parse_args()
    conll, wnut = os.path.join(DATA, "conll2003"), os.path.join(DATA, "wnut17", "dev.conll")
    if not os.path.isdir(conll):
        sys.exit(f"needs {os.path.abspath(conll)}")
    work = args.work or tempfile.mkdtemp(prefix="bench-ner-")
    os.makedirs(work, exist_ok=True)
    train = cut(os.path.join(conll, "train.txt"), os.path.join(work, "train.conll"), args.limit)
    valid = os.path.abspath(os.path.join(conll, "valid.txt"))
    result = {"machine": machine(), "limit": args.limit or None}
    result["ours"] = run_pipeline(train, valid, work, args.extra)
    print(json.dumps(result["ours"], indent=1, default=str)[:2000], file=sys.stderr)
    result["out_of_domain_wnut17"] = out_of_domain(result["ours"]["model_dir"], result["ours"]["deployable_dir"], wnut)
    from domaintune.components.io.conll import read_conll

    texts = [" ".join(t) for t in read_conll(valid, valid)["tokens"][:2000]]
    result["latency"] = latency(result["ours"]["model_dir"], result["ours"]["deployable_dir"], texts)
    if not args.skip_recipe:
        recipe_train = cut(os.path.join(conll, "train.txt"), os.path.join(work, "recipe.conll"), args.recipe_limit or args.limit)
        result["recipe"] = run_recipe(recipe_train, valid, work, args.recipe_epochs)
        result["speedup"] = round(result["ours"]["examples_per_second"] / result["recipe"]["examples_per_second"], 2)
        result["ours"]["epoch_curve"] = epoch_curve(os.path.join(work, "run"))
        if not (args.recipe_limit or args.limit) or args.recipe_limit == args.limit:  # same training set only
            result["time_to_recipe_f1"] = time_to_recipe_f1(result["ours"]["epoch_curve"], result["recipe"])
    write_json(args.json, result)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=1, default=str)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
