"""Data helpers of the token-classification task: IOB2 validation and repair, the tag order, entity counts,
and a seeded split that keeps groups (documents, or identical sentences) whole."""
from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd

from domaintune.components.core.errors import BadInput

TAG = re.compile(r"^(O|[BI]-\S+)$")


def repair_iob2(tags: list[str], where, strict: bool = False) -> tuple[list[str], int]:
    """Validated IOB2 tags; a stray I-X becomes B-X (returned count), or with `strict` is refused.
    `where(k)` names token k's place."""
    out, repaired, previous = [], 0, "O"
    for k, tag in enumerate(tags):
        if not TAG.match(tag):
            raise BadInput(f"{where(k)}: tag {tag!r} is not IOB2 (O, B-TYPE or I-TYPE)")
        if tag.startswith("I-") and previous[2:] != tag[2:]:
            if strict:
                raise BadInput(f"{where(k)}: {tag} does not continue a {tag[2:]} entity (--strict-iob2; without it "
                               f"it is repaired to B-{tag[2:]})")
            tag, repaired = "B-" + tag[2:], repaired + 1
        out.append(tag)
        previous = tag
    return out, repaired


def tag_order(tags) -> list[str]:
    """O first, then B-/I- of each entity type (both, whether or not I- occurs), types sorted."""
    types = sorted({t[2:] for t in tags if t != "O"})
    return ["O"] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def entity_counts(frame: pd.DataFrame) -> dict:
    return dict(sorted(Counter(t[2:] for tags in frame["tags"] for t in tags if t.startswith("B-")).items()))


def group_split(frame, groups, share: float, seed: int):
    keys = sorted(set(groups))
    rng = np.random.default_rng(seed)
    rng.shuffle(keys)
    sizes = frame.groupby(groups.to_numpy()).size()
    target, taken, held = share * len(frame), 0, set()
    for key in keys:
        if taken >= target:
            break
        held.add(key)
        taken += int(sizes[key])
    mask = groups.isin(held).to_numpy()
    return frame[~mask], frame[mask]
