"""The `domaintune` command (docs/ARCHITECTURE.md, "Command line"). Heavy imports happen inside the commands so `--help` is quick."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from domaintune.components.core.errors import BadInput, DomaintuneError

COMMANDS = {
    "run": "run the whole pipeline locally through kfp.local (the embedded default with no arguments)",
    "evaluate": "score a model (directory, ONNX file or models:/ URI) on a labeled file",
    "predict": "predict labels, entities or summaries for texts or a file",
    "compile": "write the pipeline YAML for the KFP UI",
    "submit": "upload (or version) the pipeline on a KFP cluster and start a run",
    "schedule": "create a recurring retraining run on a KFP cluster (max one at a time, no catch-up)",
    "models": "list registered models and versions with aliases, metrics and gate status",
    "promote": "move an alias (default: champion) to a model version",
    "serve": "serve a model over HTTP (KServe V2, MLflow /invocations, /predict), batched, hot-swapping on promotion",
}
PIPELINE_COMMANDS = ("run", "submit", "schedule")  # commands whose flags are the pipeline's parameters


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="domaintune",
        description="Labeled domain text -> fine-tuned, bias-checked, exported, registered transformer (KFP + MLflow).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    parsers = {name: sub.add_parser(name, help=text, description=text) for name, text in COMMANDS.items()}

    run = parsers["run"]
    run.add_argument("--config", help="YAML file of pipeline parameters (snake_case keys); flags override it")
    run.add_argument("--output", help="run directory (default: ./domaintune-runs/<run id>)")
    run.add_argument("--verbose", action="store_true", help="stream every task's raw output")
    run.add_argument("--runner", choices=("subprocess", "docker"), default="subprocess",
                     help="subprocess: each task a process here (default); docker: each task a container of "
                          "DOMAINTUNE_IMAGE (build it with docker/build.sh; docker/README.md)")
    for name in ("submit", "schedule"):
        p = parsers[name]
        p.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
        p.add_argument("--config", help="YAML file of pipeline parameters (snake_case keys); flags override it")
        p.add_argument("--experiment", default="domaintune", help="KFP experiment (default: domaintune)")
        p.add_argument("--pipeline-name", default="domaintune-training", help="pipeline name in the KFP UI")
        p.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user installs)")
        p.add_argument("--run-name", default=None, help="name of the run or recurring run")
        p.add_argument("--service-account", default="domaintune-pipeline-runner",
                       help="Kubernetes ServiceAccount for the run's pods (k8s/base/pipeline); empty: KFP's default")
    parsers["schedule"].add_argument("--cron", required=True,
                                     help="cron expression, 5 fields (or 6 with seconds); the run's data_version is its scheduled time")
    if argv[:1] and argv[0] in PIPELINE_COMMANDS:  # only then pay for importing the pipeline
        from domaintune.pipelines.params import add_param_flags, pipeline_params

        for name in PIPELINE_COMMANDS:
            add_param_flags(parsers[name], pipeline_params())

    ev = parsers["evaluate"]
    ev.add_argument("--model", required=True, help="model directory, ONNX file, or models:/NAME@ALIAS | models:/NAME/N")
    ev.add_argument("--data", required=True, help="labeled CSV/TSV/JSONL/Parquet file (local or s3://)")
    ev.add_argument("--text-column", default="text")
    ev.add_argument("--label-column", default="label")
    ev.add_argument("--json", help="write the metrics as JSON here")
    ev.add_argument("--tracking-uri", default="", help="MLflow tracking URI for models:/ references "
                    "(default: MLFLOW_TRACKING_URI or ./mlflow.db)")

    pr = parsers["predict"]
    pr.add_argument("--model", required=True, help="model directory, ONNX file, or models:/NAME@ALIAS | models:/NAME/N")
    src = pr.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", nargs="+", action="extend", help="one or more texts (repeat --text or list several)")
    src.add_argument("--data", help="a CSV/TSV/JSONL/Parquet file with a text column")
    pr.add_argument("--text-column", default="text")
    pr.add_argument("--batch-size", type=int, default=64)
    pr.add_argument("--aggregation", choices=("first", "average", "max"), default="first",
                    help="taggers: how a word's sub-tokens decide its entity tag (as transformers' pipeline)")
    pr.add_argument("--max-new-tokens", type=int, help="summarizers: most tokens per summary (default: the model's)")
    pr.add_argument("--num-beams", type=int, help="summarizers: beam search width (PyTorch model; default 1, greedy)")
    pr.add_argument("--json", help="write predictions as JSON here")
    pr.add_argument("--tracking-uri", default="", help="MLflow tracking URI for models:/ references "
                    "(default: MLFLOW_TRACKING_URI or ./mlflow.db)")

    co = parsers["compile"]
    co.add_argument("--output", help="default: pipelines/training_pipeline.yaml beside the pipeline code")

    mo = parsers["models"]
    mo.add_argument("name", nargs="?", help="a registered model name (default: all)")
    mo.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)")

    pm = parsers["promote"]
    pm.add_argument("name")
    pm.add_argument("--version", type=int, required=True)
    pm.add_argument("--alias", default="champion")
    pm.add_argument("--force", action="store_true", help="promote even a version whose gate failed")
    pm.add_argument("--reason", default="", help="why (recorded as a tag)")
    pm.add_argument("--tracking-uri", default="")
    if argv[:1] == ["serve"]:
        from domaintune.components.serving.params import add_serve_flags

        add_serve_flags(parsers["serve"])
    return parser


def cmd_run(args) -> int:
    from domaintune.pipelines.local_run import run_local
    from domaintune.pipelines.params import load_config, pipeline_params, resolve

    params = pipeline_params()
    config = load_config(args.config, params) if args.config else {}
    values = resolve(params, config, vars(args))
    print(f"domaintune: running the pipeline locally ({'bundled sample data' if not values['train_data'] else values['train_data']})",
          file=sys.stderr)
    summary, code, message = run_local(values, args.output, verbose=args.verbose, runner=args.runner)
    if summary is None:
        print(f"error: {message}", file=sys.stderr)
        return code
    from domaintune.pipelines.summary_view import print_summary

    print_summary(summary)
    return code


def _cluster_params(args) -> dict:
    """Only what the user set (config file or flags): everything else keeps the compiled defaults."""
    from domaintune.pipelines.params import load_config, pipeline_params

    params = pipeline_params()
    chosen = load_config(args.config, params) if args.config else {}
    chosen.update({p.name: getattr(args, p.name) for p in params if getattr(args, p.name) is not None})
    return chosen


def cmd_submit(args) -> int:
    from domaintune.pipelines.cluster import submit

    print(submit(args.host, _cluster_params(args), args.experiment, args.pipeline_name, args.run_name, args.namespace,
                 args.service_account))
    return 0


def cmd_schedule(args) -> int:
    from domaintune.pipelines.cluster import schedule

    print(schedule(args.host, args.cron, _cluster_params(args), args.experiment, args.pipeline_name, args.run_name,
                   args.namespace, args.service_account))
    return 0


def _load_model(ref: str, scratch: str, tracking_uri: str = ""):
    """(task, predictor) for a model directory, an ONNX file or export directory, or a models:/ reference."""
    from domaintune.components.inference.loading import model_home
    from domaintune.components.registry.client import resolve_model_ref
    from domaintune.components.tasks import task_of

    local = resolve_model_ref(ref, scratch, tracking_uri)
    if not os.path.exists(local):
        raise BadInput(f"--model {ref}: no such file or directory")
    task = task_of(model_home(local))
    return task, task.load_predictor(local)


def cmd_evaluate(args) -> int:
    from domaintune.components.core.runtime import set_offline_defaults
    from domaintune.components.evaluation.metrics import format_table

    set_offline_defaults()
    with tempfile.TemporaryDirectory() as scratch:
        task, model = _load_model(args.model, scratch, args.tracking_uri)
        frame = task.read_labeled(args.data, args.text_column, args.label_column, list(model.labels))
        outputs = task.predict_frame(model, frame)
    metrics = task.score(outputs, frame, list(model.labels))
    print(format_table(metrics))
    if args.json:
        _write_json(args.json, metrics)
    return 0


def cmd_predict(args) -> int:
    from domaintune.components.core.runtime import set_offline_defaults

    set_offline_defaults()
    if args.batch_size <= 0:
        raise BadInput(f"--batch-size must be a positive integer (got {args.batch_size})")
    with tempfile.TemporaryDirectory() as scratch:
        task, model = _load_model(args.model, scratch, args.tracking_uri)
        for name in ("aggregation", "max_new_tokens", "num_beams"):  # the task options this predictor has
            if name != "aggregation" and (value := getattr(args, name)) is not None and value <= 0:
                raise BadInput(f"--{name.replace('_', '-')} must be a positive integer (got {value})")
            if hasattr(model, name) and getattr(args, name) is not None:
                setattr(model, name, getattr(args, name))
        texts = args.text if args.text else _read_texts(args)
        outputs = _predict_in_chunks(model, texts, args.batch_size, show=not args.text)
    results = task.format_predictions(model, outputs, texts)
    if args.json:
        _write_json(args.json, [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in results])
    if args.text or not args.json:
        for r in results:
            print("\t".join(f"{v:.4f}" if isinstance(v, float) else (json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                            for k, v in r.items() if k != "text") + f"\t{r['text']}")
    return 0


def _read_texts(args) -> list[str]:
    from domaintune.components.io.tables import read_table

    frame, _ = read_table(args.data)
    if args.text_column not in frame.columns:
        raise BadInput(f"{args.data}: no column {args.text_column!r} (columns: {', '.join(map(str, frame.columns))})")
    return frame[args.text_column].astype(str).tolist()


def _predict_in_chunks(model, texts: list[str], batch_size: int, show: bool):
    """Predict a file in chunks with a progress bar; length sorting happens inside each chunk."""
    import numpy as np
    from tqdm import tqdm

    chunk = max(batch_size * 16, 1024)
    parts = []
    with tqdm(total=len(texts), unit="text", file=sys.stderr, disable=None if show else True) as bar:
        for start in range(0, len(texts), chunk):
            parts.append(model.predict(texts[start:start + chunk], batch_size=batch_size))
            bar.update(len(texts[start:start + chunk]))
    if parts and all(isinstance(part, np.ndarray) for part in parts):
        return np.concatenate(parts)
    return [answer for part in parts for answer in part]  # per-text answers of other shapes (entities)


def cmd_compile(args) -> int:
    from domaintune.pipelines.compile import compile_pipeline

    path = compile_pipeline(args.output)
    print(path)
    return 0


def cmd_models(args) -> int:
    from domaintune.pipelines.registry_cli import list_models

    print(list_models(args.name, args.tracking_uri))
    return 0


def cmd_serve(args) -> int:
    from domaintune.components.serving.params import params_from_args
    from domaintune.components.serving.server import serve

    return serve(params_from_args(args))


def cmd_promote(args) -> int:
    from domaintune.pipelines.registry_cli import promote

    print(promote(args.name, args.version, args.alias, args.force, args.reason, args.tracking_uri))
    return 0


def _write_json(path: str, obj) -> None:
    from domaintune.components.io.storage import write_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_json(path, obj)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return globals()[f"cmd_{args.command}"](args)
    except DomaintuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
