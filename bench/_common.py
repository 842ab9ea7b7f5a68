"""Shared helpers for the benchmarks: environment, data preparation with the stages' own functions, machine info.

Importing this module sets the environment the benchmarks measure in, before torch is imported: offline
Hugging Face. OpenMP's wait policy is left as the user gets it (libgomp's default spins briefly before
sleeping): forcing OMP_WAIT_POLICY=PASSIVE, tried once to ride out a shared machine, cost the finetune stage
35% of its examples/s on a quiet one (195 vs 300-320 ex/s, 4000 SST-2 rows, bf16, batch 32). An
OMP_WAIT_POLICY set by the caller is kept and recorded in `machine()`.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
import time

for _key, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                     "HF_HUB_DISABLE_TELEMETRY": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)

HERE = os.path.dirname(os.path.abspath(__file__))
SST2 = os.path.abspath(os.path.join(HERE, "..", "..", "shared", "data", "sst2"))


def finetune_params(**overrides):
    """The finetune stage's parameters: its dataclass defaults (their one source), with OVERRIDES."""
    from domaintune.components.finetune.stage import FinetuneParams

    return FinetuneParams(**overrides)


def require_sst2() -> str:
    if not os.path.isfile(os.path.join(SST2, "train.tsv")):
        sys.exit(f"needs the SST-2 TSVs in {SST2} (train.tsv, dev.tsv: sentence<TAB>label)")
    return SST2


def prepare_sst2(work: str, rows: int, seed: int = 0) -> dict:
    """A seeded sample of SST-2 train as train, dev as validation and test, through the ingest and tokenize
    stages (their parameters' defaults). Returns paths and what each stage took."""
    import pandas as pd

    from domaintune.components.ingest.stage import IngestParams, run_ingest
    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.tokenize.stage import TokenizeParams, run_tokenize

    data = require_sst2()
    os.makedirs(work, exist_ok=True)
    train = pd.read_csv(os.path.join(data, "train.tsv"), sep="\t", quoting=3)
    sample = train.sample(n=min(rows, len(train)), random_state=seed)
    sample.to_csv(os.path.join(work, "train.tsv"), sep="\t", index=False)
    dev = os.path.join(data, "dev.tsv")
    params = IngestParams(train_data=os.path.join(work, "train.tsv"), validation_data=dev, test_data=dev,
                          text_column="sentence", label_column="label", slice_columns="")
    tokenize = TokenizeParams()
    model_dir = resolve_model(tokenize.base_model)
    t0 = time.monotonic()
    report = run_ingest(params, os.path.join(work, "splits"), os.path.join(work, "data_report.json"))
    t1 = time.monotonic()
    stats = run_tokenize(os.path.join(work, "splits"), model_dir, os.path.join(work, "tokens"), tokenize)
    t2 = time.monotonic()
    return {"splits": os.path.join(work, "splits"), "tokens": os.path.join(work, "tokens"), "model_dir": model_dir,
            "rows": report["rows"], "token_stats": stats["splits"], "max_length": tokenize.max_length,
            "ingest_seconds": round(t1 - t0, 2), "tokenize_seconds": round(t2 - t1, 2)}


def machine() -> dict:
    import torch

    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    return {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "cpu": model, "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_tile" in flags,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def cpu_seconds() -> float:
    """CPU time of this process, all threads (user + system)."""
    return time.process_time()


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=str)


def table(rows: list[tuple], headers: tuple) -> str:
    cells = [tuple(str(c) for c in r) for r in [headers, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
