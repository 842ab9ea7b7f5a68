"""The MLflow pyfunc flavor of a domaintune model: `mlflow.pyfunc.load_model("models:/NAME@ALIAS")`
returns labels and scores. It holds no pickled session or torch module: everything loads in load_context."""
from __future__ import annotations

import mlflow.pyfunc
import pandas as pd


class DomaintuneClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from domaintune.components.inference import load_classifier

        self.classifier = load_classifier(context.artifacts["model"])

    def predict(self, context, model_input, params=None):
        texts = model_input["text"].astype(str).tolist() if isinstance(model_input, pd.DataFrame) else list(model_input)
        probs = self.classifier.predict_proba(texts)
        labels = self.classifier.labels
        return pd.DataFrame({"label": [labels[i] for i in probs.argmax(axis=1)], "score": probs.max(axis=1)})
