"""Classification metrics shared by the evaluate stage and `domaintune evaluate` (scikit-learn, offline)."""
from __future__ import annotations

import numpy as np


def classification_metrics(y_true, y_pred, labels: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=ids, zero_division=0
    )
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0)),
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                    "support": int(support[i])}
            for i, label in enumerate(labels)
        },
        "labels": list(labels),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def plot_confusion_matrix(matrix, labels: list[str], path: str, title: str = "Confusion matrix (test)") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    size = max(4.0, 0.9 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{matrix[i, j]}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(metrics: dict) -> str:
    """Per-label precision/recall/F1 (classes, or a tagger's entity types) and the headline numbers."""
    per_label = metrics.get("per_class") or metrics.get("per_type") or {}
    lines = [f"{'class' if 'per_class' in metrics else 'entity':<24}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>9}"]
    for label, m in per_label.items():
        lines.append(f"{label[:23]:<24}{m['precision']:>10.3f}{m['recall']:>10.3f}{m['f1']:>10.3f}{m['support']:>9}")
    if "accuracy" in metrics:
        lines.append(f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}   n {metrics['n']}")
    elif "entity_f1" not in metrics:  # another task's headline numbers (a summarizer's ROUGE, its margin over lead)
        return "   ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool))
    else:
        lines.append(f"entity F1 {metrics['entity_f1']:.4f} (strict {metrics['entity_f1_strict']:.4f})   "
                     f"precision {metrics['entity_precision']:.4f}   recall {metrics['entity_recall']:.4f}   n {metrics['n']}")
    return "\n".join(lines)
