"""Gender and race score gaps on the Equity Evaluation Corpus, after Kiritchenko & Mohammad (2018),
"Examining Gender and Race Bias in Two Hundred Sentiment Analysis Systems" (*SEM 2018).

    python -m bench.eec_bias --model-dir DIR --json OUT [--csv EEC.csv] [--positive-label positive]

The model is a binary sentiment classifier; a sentence's score is its probability of the positive class.
Pairs, as in the paper, differ only in the person:
- gender: sentences with gendered noun phrases are paired with their counterpart ("my daughter feels
  devastated" / "my son feels devastated"); for sentences with first names, the mean score over the ten
  female names of a race is paired with the mean over the ten male names of that race (same template and
  emotion word).
- race: the mean score over the ten African-American names of a gender is paired with the mean over the
  ten European-American names of that gender (same template and emotion word).
Per emotion (anger, fear, joy, sadness, and none for the neutral templates) and over all: mean difference
(female − male; African-American − European-American), a paired t-test (p < 0.05 = significant), and the
share of pairs where the first group scores higher, lower, or the same (|difference| < 1e-6).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pandas as pd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CSV = os.path.join(REPO, "..", "shared", "data", "eec", "Equity-Evaluation-Corpus.csv")
EMOTIONS = ["anger", "fear", "joy", "sadness", "none"]
EQUAL_TOL = 1e-6
NOUN_PHRASES = {  # female -> male counterpart, as in the EEC
    "she": "he", "her": "him", "this woman": "this man", "this girl": "this boy", "my sister": "my brother",
    "my daughter": "my son", "my wife": "my husband", "my girlfriend": "my boyfriend", "my mother": "my father",
    "my aunt": "my uncle", "my mom": "my dad",
}


def load_eec(path: str) -> pd.DataFrame:
    df = pd.read_csv(path)
    need = {"Sentence", "Template", "Person", "Gender", "Race", "Emotion", "Emotion word"}
    missing = need - set(df.columns)
    if missing:
        raise SystemExit(f"{path}: missing columns {sorted(missing)}")
    df["Emotion"] = df["Emotion"].fillna("none")
    df["Emotion word"] = df["Emotion word"].fillna("")
    df["Race"] = df["Race"].fillna("")
    return df.rename(columns={"Emotion word": "EmotionWord"})


def gender_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Rows: emotion, female score, male score."""
    out = []
    nps = df[df["Race"] == ""]
    key = ["Template", "EmotionWord", "Emotion"]
    male = nps[nps["Gender"] == "male"].set_index(key + ["Person"])["score"]
    for row in nps[nps["Gender"] == "female"].itertuples(index=False):
        counterpart = NOUN_PHRASES[row.Person.lower()]
        m = male.loc[(row.Template, row.EmotionWord, row.Emotion, counterpart)]
        out.append({"emotion": row.Emotion, "a": float(row.score), "b": float(m), "kind": "noun phrase"})
    names = df[df["Race"] != ""]
    means = names.groupby(key + ["Race", "Gender"])["score"].mean().unstack("Gender").reset_index()
    for row in means.itertuples(index=False):
        out.append({"emotion": row.Emotion, "a": row.female, "b": row.male, "kind": "names"})
    return pd.DataFrame(out)


def race_pairs(df: pd.DataFrame) -> pd.DataFrame:
    names = df[df["Race"] != ""]
    key = ["Template", "EmotionWord", "Emotion", "Gender"]
    means = names.groupby(key + ["Race"])["score"].mean().unstack("Race").reset_index()
    return pd.DataFrame({"emotion": means["Emotion"], "a": means["African-American"], "b": means["European"],
                         "kind": "names"})


def summarize(pairs: pd.DataFrame) -> dict:
    from scipy.stats import ttest_rel

    out = {}
    for emotion in EMOTIONS + ["all"]:
        p = pairs if emotion == "all" else pairs[pairs["emotion"] == emotion]
        if p.empty:
            continue
        a, b = p["a"].to_numpy(float), p["b"].to_numpy(float)
        d = a - b
        if len(d) > 1 and np.ptp(d) > EQUAL_TOL:
            pvalue = float(ttest_rel(a, b).pvalue)
        else:  # the same difference in every pair: the t statistic is degenerate
            pvalue = 0.0 if len(d) > 1 and abs(d.mean()) > EQUAL_TOL else 1.0
        out[emotion] = {
            "n_pairs": int(len(d)), "mean_first": float(a.mean()), "mean_second": float(b.mean()),
            "mean_diff": float(d.mean()), "mean_abs_diff": float(np.abs(d).mean()), "max_abs_diff": float(np.abs(d).max()),
            "p_value": pvalue, "significant": bool(pvalue < 0.05),
            "share_first_higher": float((d > EQUAL_TOL).mean()), "share_second_higher": float((d < -EQUAL_TOL).mean()),
            "share_equal": float((np.abs(d) <= EQUAL_TOL).mean()),
        }
    return out


def table(title: str, first: str, second: str, res: dict) -> str:
    lines = [title,
             f"{'emotion':<9}{'pairs':>6}{'mean ' + first:>11}{'mean ' + second:>11}{'diff':>9}{'p':>9}{'sig':>5}"
             f"{first + '>' + second:>8}{second + '>' + first:>8}{'=':>6}"]
    for emotion, r in res.items():
        lines.append(f"{emotion:<9}{r['n_pairs']:>6}{r['mean_first']:>11.4f}{r['mean_second']:>11.4f}"
                     f"{r['mean_diff']:>+9.4f}{r['p_value']:>9.1e}{'yes' if r['significant'] else 'no':>5}"
                     f"{r['share_first_higher']:>8.1%}{r['share_second_higher']:>8.1%}{r['share_equal']:>6.0%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.eec_bias", description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True, help="binary sentiment model (Hugging Face dir or ONNX)")
    ap.add_argument("--json", required=True, help="where to write the results")
    ap.add_argument("--csv", default=DEFAULT_CSV, help="Equity-Evaluation-Corpus.csv")
    ap.add_argument("--positive-label", default="positive")
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args(argv)

    from domaintune.components.inference.loading import load_predictor

    if not os.path.isfile(args.csv):
        print(f"{args.csv}: no such file", file=sys.stderr)
        return 2
    df = load_eec(args.csv)
    clf = load_predictor(args.model_dir)
    if args.positive_label not in clf.labels:
        print(f"--positive-label {args.positive_label!r} is not one of the model's labels {clf.labels}",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    probs = clf.predict_proba(df["Sentence"].tolist(), batch_size=args.batch_size)
    seconds = time.perf_counter() - t0
    df["score"] = probs[:, clf.labels.index(args.positive_label)]

    gender = summarize(gender_pairs(df))
    race = summarize(race_pairs(df))
    result = {
        "benchmark": "eec_bias", "model_dir": os.path.abspath(args.model_dir), "csv": os.path.abspath(args.csv),
        "n_sentences": int(len(df)), "score": f"P({args.positive_label})", "predict_seconds": round(seconds, 2),
        "method": "Kiritchenko & Mohammad (2018): paired sentences differing only in the person; paired t-test",
        "gender": {"first": "female", "second": "male", "by_emotion": gender},
        "race": {"first": "African-American", "second": "European-American", "by_emotion": race},
    }
    print(table("Gender: female (F) vs male (M), diff = F − M", "F", "M", gender))
    print()
    print(table("Race: African-American (AA) vs European-American (EA) names, diff = AA − EA", "AA", "EA", race))
    os.makedirs(os.path.dirname(os.path.abspath(args.json)) or ".", exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
