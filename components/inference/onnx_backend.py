"""Batched text classification with an ONNX export (fp32 or int8) through onnxruntime.

`OnnxClassifier(REF)` is what `load_classifier` returns for a `.onnx` file or an export directory. It has
the same surface as `HFClassifier` (`labels`, `predict_proba`), so evaluate, predict and MLflow serving
use either without knowing which. The tokenizer, `config.json` (id2label) and the optional
`domaintune.json` (max_length) are read from the directory the model lies in.

The onnxruntime session is not picklable and is never pickled: `__getstate__` drops it and the first
prediction after unpickling opens it again (MLflow pyfunc, multiprocessing).
"""
from __future__ import annotations

import json
import math
import os
from typing import Sequence

import numpy as np

from domaintune.components.core.errors import BadInput
from domaintune.components.inference.batching import length_sorted_batches, saved_max_length, saved_temperature, softmax

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
REPORT_FILE = "export_report.json"
DEFAULT_MAX_LENGTH = 128

_NUMPY_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32}


def physical_cores() -> int:
    """Cores this process may really use: physical cores, bounded by CPU affinity, a cgroup CPU quota and
    OMP_NUM_THREADS when set (the cap PyTorch already obeys, so both runtimes of a task use the same count).

    onnxruntime's own default (all physical cores of the host) oversubscribes a Kubernetes pod whose CPU
    limit is below the node's core count; hyper-threads add nothing to these GEMM-bound kernels. Two jobs
    sharing the cores oversubscribe the same way: measured with two MiniLM trainings side by side on 2
    cores, 2 threads each made every step 3.4x slower than 1 each (557 vs 153 ms, bench/shared_cores.py).
    """
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:  # pragma: no cover - psutil comes with the stack
        cores = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        cores = min(cores, len(os.sched_getaffinity(0)))
    for quota_file, period_file in (("/sys/fs/cgroup/cpu.max", None),  # cgroup v2: "QUOTA PERIOD"
                                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            with open(quota_file) as f:
                fields = f.read().split()
            if period_file:
                with open(period_file) as f:
                    fields = [fields[0], f.read().strip()]
            quota, period = fields[0], fields[1]
            if quota not in ("max", "-1"):
                cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
            break
        except (OSError, ValueError, IndexError):
            continue
    return max(1, min(cores, _omp_num_threads() or cores))


def _omp_num_threads() -> int | None:
    """OMP_NUM_THREADS as a positive count (its first entry: OpenMP allows a list for nested levels)."""
    value = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


# onnxruntime 1.31's CPU SkipLayerNormalization kernel is slow: 11 ms per call at 32 x 128 x 384 on this
# EPYC, where the Add + LayerNormalization it replaces take 1.1 ms; with six of them in a MiniLM that was
# ~20% of an int8 forward. The session keeps Add + LayerNormalization instead (same arithmetic).
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


def session_options(intra_op_threads: int | None = None, level: str = "all", spinning: bool = True,
                    disabled_optimizers: Sequence[str] = DISABLED_OPTIMIZERS):
    """The session settings the export measures with and ships: graph optimisation `level` (disable, basic,
    extended, all), intra-op threads = `physical_cores()` unless given, one inter-op thread (a BERT graph is
    a chain: parallel branches buy nothing), `disabled_optimizers` left out of the level's rewrites."""
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if level not in levels:
        raise BadInput(f"graph optimization level must be one of {sorted(levels)} (got {level!r})")
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[level]
    so.intra_op_num_threads = intra_op_threads or physical_cores()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if disabled_optimizers:
        so.add_session_config_entry("optimization.disable_specified_optimizers", ",".join(disabled_optimizers))
    return so


def open_session(path: str, intra_op_threads: int | None = None, level: str = "all", spinning: bool = True,
                 disabled_optimizers: Sequence[str] = DISABLED_OPTIMIZERS):
    import onnxruntime as ort

    try:
        return ort.InferenceSession(path, sess_options=session_options(intra_op_threads, level, spinning,
                                                                       disabled_optimizers),
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/NoSuchFile types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise BadInput(f"{path}: cannot load as an ONNX model ({first[:300]})") from None


def resolve_model_file(ref: str) -> str:
    """REF is an `.onnx` file, or an export directory: its int8 model when the export report says int8 is
    deployable, else its fp32 `model.onnx`."""
    if os.path.isdir(ref):
        chosen = FP32_FILE
        report = os.path.join(ref, REPORT_FILE)
        if os.path.isfile(report) and os.path.isfile(os.path.join(ref, INT8_FILE)):
            try:
                with open(report) as f:
                    if json.load(f).get("deployable") == "int8":
                        chosen = INT8_FILE
            except (OSError, ValueError) as exc:
                raise BadInput(f"{report}: unreadable export report ({exc})") from None
        path = os.path.join(ref, chosen)
        if not os.path.isfile(path):
            raise BadInput(f"{ref}: not an ONNX export directory (no {chosen})")
        return path
    if not os.path.isfile(ref):
        raise BadInput(f"{ref}: no such ONNX model file or export directory")
    if not ref.endswith(".onnx"):
        raise BadInput(f"{ref}: not an .onnx file")
    return ref


def labels_from_config(model_dir: str) -> list[str]:
    path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(path):
        raise BadInput(f"{model_dir}: no config.json beside the ONNX model (labels come from its id2label)")
    with open(path) as f:
        id2label = json.load(f).get("id2label") or {}
    if not id2label:
        raise BadInput(f"{path}: no id2label")
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


class OnnxClassifier:
    """An ONNX sequence classifier (logits output) with its tokenizer and config saved beside it."""

    # Length-sorted fixed-size batches; a subclass may cut them otherwise (serving bounds their padding).
    batches = staticmethod(length_sorted_batches)

    def __init__(self, ref: str, max_length: int | None = None, intra_op_threads: int | None = None):
        self.model_path = os.path.abspath(resolve_model_file(ref))
        self.model_dir = os.path.dirname(self.model_path)
        self.intra_op_threads = intra_op_threads
        self._session = None
        session = self.session  # a file that is no ONNX model is reported as such, before what lies beside it
        self.labels = labels_from_config(self.model_dir)
        self.tokenizer = self.load_tokenizer()
        self.max_length = max_length or saved_max_length(self.model_dir) or DEFAULT_MAX_LENGTH
        self.temperature = saved_temperature(self.model_dir)
        self._check_outputs(session)

    def load_tokenizer(self):
        """The tokenizer saved beside the model (transformers'; the server reads tokenizer.json without it)."""
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.model_dir)
        except (OSError, ValueError) as exc:
            raise BadInput(f"{self.model_dir}: no loadable tokenizer beside the ONNX model ({exc})") from None

    @property
    def session(self):
        if self._session is None:
            self._session = open_session(self.model_path, self.intra_op_threads)
        return self._session

    def _check_outputs(self, session) -> None:
        out = session.get_outputs()[0]
        width = out.shape[-1] if out.shape else None
        if isinstance(width, int) and width != len(self.labels):
            raise BadInput(f"{self.model_path}: {width} logits but config.json has {len(self.labels)} labels")

    def feed(self, batch: dict) -> dict:
        """Map a tokenizer batch (numpy) onto the session's inputs and dtypes."""
        feed = {}
        for spec in self.session.get_inputs():
            if spec.name in batch:
                value = np.asarray(batch[spec.name])
            elif spec.name == "token_type_ids":
                value = np.zeros_like(np.asarray(batch["input_ids"]))
            else:
                raise BadInput(f"{self.model_path}: the model needs input {spec.name!r} that the tokenizer does not give")
            feed[spec.name] = value.astype(_NUMPY_TYPES.get(spec.type, np.int64), copy=False)
        return feed

    def run(self, batch: dict) -> np.ndarray:
        return self.session.run(None, self.feed(batch))[0]

    def predict_logits(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), len(self.labels)), dtype=np.float32)
        if not texts:
            return out
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        for idx in self.batches([len(x) for x in enc["input_ids"]], batch_size):
            batch = self.tokenizer.pad({k: [enc[k][i] for i in idx] for k in enc.keys()}, return_tensors="np")
            out[idx] = self.run(batch)
        return out

    def predict_proba(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Calibrated class probabilities: the softmax of the logits over the saved temperature."""
        return softmax(self.predict_logits(texts, batch_size), self.temperature)

    def predict(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """The task-level output (tasks/classification.py): class probabilities."""
        return self.predict_proba(texts, batch_size)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_session"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
