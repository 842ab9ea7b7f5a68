"""The MLflow pyfunc flavor of a domaintune model: `mlflow.pyfunc.load_model("models:/NAME@ALIAS")`
returns labels and scores.

Its artifacts: `model` (the Hugging Face directory, always) and `onnx` (the export directory, when the
export stage ran). With `onnx` the model serves through onnxruntime (`OnnxClassifier`: the int8 file when
the export report says int8 is deployable, else fp32); without it, through PyTorch. It holds no pickled
session or torch module: everything loads in load_context.
"""
from __future__ import annotations

import os

import mlflow.pyfunc
import pandas as pd

from domaintune.components.inference.onnx_backend import FP32_FILE


class DomaintuneClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        onnx_dir = (context.artifacts or {}).get("onnx")
        if onnx_dir and os.path.isfile(os.path.join(onnx_dir, FP32_FILE)):
            from domaintune.components.inference.onnx_backend import OnnxClassifier

            self.classifier = OnnxClassifier(onnx_dir)
            self.backend = "onnx"
        else:
            from domaintune.components.inference.torch_backend import load_classifier

            self.classifier = load_classifier(context.artifacts["model"])
            self.backend = "pytorch"

    # The DataFrame hints keep MLflow from inferring a schema from them: the logged signature (text ->
    # label, score) is the contract.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = model_input["text"].astype(str).tolist() if isinstance(model_input, pd.DataFrame) else list(model_input)
        probs = self.classifier.predict_proba(texts)
        labels = self.classifier.labels
        return pd.DataFrame({"label": [labels[i] for i in probs.argmax(axis=1)], "score": probs.max(axis=1)})
