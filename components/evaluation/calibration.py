"""Calibrated confidence for classifiers: temperature scaling (Guo et al. 2017) fitted on the validation
split, expected calibration error (ECE) and a reliability diagram on the test split.

One temperature T divides every logit before the softmax: the predicted class never changes, only how sure
the model says it is. Finetune fits T on the validation logits by minimising the negative log-likelihood
(scipy's bounded scalar search over log T: one parameter, no need for an optimiser loop) and saves it in
the model's `domaintune.json` (`calibration`); export copies that file, and every predictor (PyTorch,
onnxruntime, the pyfunc, serving) reads it (inference/batching.saved_temperature). sklearn's
CalibratedClassifierCV wraps estimators, not fixed logits, and has no ECE, so both are written here.
"""
from __future__ import annotations

import math

import numpy as np

N_BINS = 15  # Guo et al.'s choice; equal-width confidence bins
T_BOUNDS = (0.05, 20.0)


def _log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def nll(logits, labels, temperature: float = 1.0) -> float:
    lp = _log_softmax(logits, temperature)
    return float(-lp[np.arange(len(lp)), np.asarray(labels, dtype=int)].mean())


def fit_temperature(logits, labels) -> dict:
    """The temperature minimising validation NLL, with the NLL and ECE before and after."""
    from scipy.optimize import minimize_scalar

    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=int)
    lo, hi = (math.log(b) for b in T_BOUNDS)
    best = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)), bounds=(lo, hi), method="bounded")
    t = float(math.exp(best.x))
    before, after = np.exp(_log_softmax(logits, 1.0)), np.exp(_log_softmax(logits, t))
    return {"method": "temperature", "temperature": round(t, 6), "fitted_on": "validation", "n": int(len(labels)),
            "validation_nll_before": nll(logits, labels), "validation_nll_after": nll(logits, labels, t),
            "validation_ece_before": ece(before, labels), "validation_ece_after": ece(after, labels)}


def uncalibrated(probs, temperature: float) -> np.ndarray:
    """The probabilities before temperature scaling, from the calibrated ones: softmax(T · log p) (log p is
    z/T up to a per-row constant), so evaluate needs no second pass over the test split."""
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None))
    z = temperature * logp
    z = z - z.max(axis=1, keepdims=True)
    exp = np.exp(z)
    return exp / exp.sum(axis=1, keepdims=True)


def bins(probs, labels, n_bins: int = N_BINS) -> list[dict]:
    """Per equal-width confidence bin: rows, mean confidence, accuracy (the reliability diagram's points)."""
    probs, labels = np.asarray(probs), np.asarray(labels, dtype=int)
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        mask = which == b
        out.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "n": int(mask.sum()),
                    "confidence": float(conf[mask].mean()) if mask.any() else None,
                    "accuracy": float(correct[mask].mean()) if mask.any() else None})
    return out


def ece(probs, labels, n_bins: int = N_BINS) -> float:
    """Expected calibration error: the row-weighted mean |accuracy - confidence| over the bins."""
    n = len(labels)
    return float(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in bins(probs, labels, n_bins) if b["n"]))


def report(probs, labels, temperature: float) -> dict:
    """Test-split ECE with the saved temperature (what predictors return) and without it."""
    before = uncalibrated(probs, temperature)
    return {"temperature": temperature, "n": int(len(labels)), "n_bins": N_BINS,
            "ece_before": ece(before, labels), "ece_after": ece(probs, labels),
            "bins_before": bins(before, labels), "bins_after": bins(probs, labels)}


def plot_reliability(result: dict, path: str) -> None:
    """The reliability diagram: accuracy vs confidence per bin, before and after temperature scaling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    for key, label in (("before", "T = 1"), ("after", f"T = {result['temperature']:.2f}")):
        pts = [(b["confidence"], b["accuracy"]) for b in result[f"bins_{key}"] if b["n"]]
        ax.plot(*zip(*pts), marker="o", label=f"{label} (ECE {result[f'ece_{key}']:.3f})")
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"Reliability on the test split (n={result['n']})")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
