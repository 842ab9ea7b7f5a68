"""What `domaintune serve` asks of the classification task (tasks/base.py, "serving (optional)").

Kept beside tasks/classification.py rather than in it (that module is at the 300-line limit of
tests/test_layout.py); `Classification` inherits it, so it is the classification task's own code.
"""
from __future__ import annotations

from domaintune.components.tasks.base import Task


class ClassificationServing(Task):
    def serving_predictor(self, ref, intra_op_threads=None):
        """The export's ONNX classifier (int8 or fp32, as the export decided) with its tokenizer read by
        `tokenizers`: no PyTorch in the server process."""
        from domaintune.components.serving.predictors import ServingOnnxClassifier

        return ServingOnnxClassifier(ref, intra_op_threads)

    def serving_answers(self, predictor, outputs, texts, details=False):
        """label + score per text; with `details`, every class's probability as {label: score}."""
        answers = super().serving_answers(predictor, outputs, texts, details)
        if details:
            for answer, probs in zip(answers, outputs):
                answer["scores"] = {label: float(p) for label, p in zip(predictor.labels, probs)}
        return answers

    def serving_outputs(self, labels):
        """label (BYTES) and score (FP64) per text, and on request `scores` (FP32, N x classes)."""
        return super().serving_outputs(labels) + [
            {"name": "scores", "datatype": "FP32", "shape": [-1, len(labels)], "detail": True}]
