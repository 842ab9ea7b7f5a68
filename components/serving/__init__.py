"""`domaintune serve`: the gated ONNX deployable behind a production HTTP API.

params.py (ServeParams: defaults, validation, CLI flags) · server.py (uvicorn, graceful shutdown) ·
app.py (FastAPI routes: Open Inference Protocol V2, MLflow's scoring protocol, /predict, /metrics) ·
batcher.py (dynamic batching on one inference thread) · models.py (source, loaded versions, atomic hot
swap) · protocols.py and v2.py (request parsing and limits, V2 tensors) · observe.py (Prometheus metrics,
JSON logs) · predictors.py and tokenizer.py (the ONNX predictor without PyTorch on the request path).

Nothing heavy is imported here: the CLI imports params.py to build its parser.
"""
