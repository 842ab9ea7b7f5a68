"""The MLflow pyfunc flavor of a domaintune model: `mlflow.pyfunc.load_model("models:/NAME@ALIAS")`
answers in the task's output schema (classification: label, score).

Its artifacts: `model` (the Hugging Face directory, always) and `onnx` (the export directory, when the
export stage ran). With `onnx` the model serves through onnxruntime (the int8 file when the export report
says int8 is deployable, else fp32); without it, through PyTorch. The task recorded beside the model
(tasks.task_of) loads the predictor and formats its answers. It holds no pickled session or torch module:
everything loads in load_context.
"""
from __future__ import annotations

import json
import os

import mlflow.pyfunc
import pandas as pd

from domaintune.components.inference.onnx_backend import FP32_FILE


class DomaintuneModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from domaintune.components.tasks import task_of

        artifacts = context.artifacts or {}
        onnx_dir = artifacts.get("onnx")
        source = onnx_dir if onnx_dir and os.path.isfile(os.path.join(onnx_dir, FP32_FILE)) else artifacts["model"]
        self.backend = "onnx" if source == onnx_dir else "pytorch"
        self.task = task_of(source)
        self.predictor = self.task.load_predictor(source)

    # The DataFrame hints keep MLflow from inferring a schema from them: the logged signature is the contract.
    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        texts = model_input["text"].astype(str).tolist() if isinstance(model_input, pd.DataFrame) else list(model_input)
        answers = self.task.format_predictions(self.predictor, self.predictor.predict(texts), texts)
        # nested answers (a tagger's entities) travel as JSON strings: the signature's column type
        return pd.DataFrame([{k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in a.items() if k != "text"}
                             for a in answers])


DomaintuneClassifier = DomaintuneModel  # the name versions registered before tasks existed were pickled with
