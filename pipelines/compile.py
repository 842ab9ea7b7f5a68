"""Compile the pipeline to the YAML the KFP UI uploads. The committed file must equal this output
(a test checks it), so what users upload is what the code says."""
from __future__ import annotations

import os

DEFAULT_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "training_pipeline.yaml")


def compile_pipeline(path: str | None = None) -> str:
    from kfp import compiler

    from domaintune.pipelines.training_pipeline import training_pipeline

    path = os.path.abspath(path or DEFAULT_PATH)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    compiler.Compiler().compile(training_pipeline, path)
    return path
