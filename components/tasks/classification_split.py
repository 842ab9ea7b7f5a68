"""How the classification task splits one labeled file: stratified and seeded, identical rows never straddling
splits, checked first so that a data set too small for the fractions asked is one line saying what would work."""
from __future__ import annotations

import pandas as pd

from domaintune.components.core.errors import BadInput, require


def stratified_split(frame: pd.DataFrame, p) -> tuple[dict[str, pd.DataFrame], dict]:
    """Stratified, seeded split of the unique rows; identical (text, label) rows never straddle splits.

    Checked before splitting: every split gets at least one row and train at least one per class (sklearn's
    own rounding: the held-out share is ceil(fraction x rows)); after it, that every class is in train.
    Otherwise one line names the file, the rows left after de-duplication, the classes and what would work."""
    import math

    from sklearn.model_selection import train_test_split

    unique = frame.drop_duplicates(subset=["text", "label_name"]).reset_index(drop=True)
    info = {"duplicates_dropped_before_split": len(frame) - len(unique), "stratified": True}
    holdout = p.validation_fraction + p.test_fraction
    counts = unique["label_name"].value_counts()

    def sizes(n: int) -> tuple[int, int, int]:
        rest = math.ceil(holdout * n)
        test = math.ceil(p.test_fraction / holdout * rest)
        return n - rest, rest - test, test

    def fits(n: int) -> bool:
        train_n, val_n, test_n = sizes(n)
        return min(val_n, test_n) >= 1 and train_n >= len(counts)

    def left() -> str:
        shown = ", ".join(f"{lab}: {int(c)}" for lab, c in counts.items())
        return (f"{p.train_data}: {len(unique)} distinct rows left after dropping {len(frame) - len(unique)} exact "
                f"duplicates of {len(frame)} rows ({len(counts)} classes: {shown})")

    fractions = f"--validation-fraction {p.validation_fraction:g} and --test-fraction {p.test_fraction:g}"
    if not fits(len(unique)):
        need = next(n for n in range(len(unique) + 1, 100 * (len(unique) + len(counts)) + 1000) if fits(n))
        train_n, val_n, test_n = sizes(len(unique))
        raise BadInput(f"{left()}; {fractions} split them {train_n}/{val_n}/{test_n} (train/validation/test), "
                       f"but each split needs at least one row and train one per class: add distinct rows (at "
                       f"least {need} for these fractions) or give --validation-data and --test-data")
    try:
        train, rest = train_test_split(unique, test_size=holdout, random_state=p.seed,
                                       stratify=unique["label_name"])
        val, test = train_test_split(rest, test_size=p.test_fraction / holdout, random_state=p.seed,
                                     stratify=rest["label_name"])
    except ValueError:  # a class too small to appear in every split: fall back to a seeded random split
        info["stratified"] = False
        train, rest = train_test_split(unique, test_size=holdout, random_state=p.seed)
        val, test = train_test_split(rest, test_size=p.test_fraction / holdout, random_state=p.seed)
    require(len(val) > 0 and len(test) > 0, f"{p.train_data}: too few rows ({len(unique)}) to split")
    missing = [lab for lab in counts.index if lab not in set(train["label_name"])]
    if missing:
        raise BadInput(f"{left()}; after the split no training row is left for class "
                       f"{', '.join(map(repr, missing))}: add distinct rows of it (at least 2 per class for a "
                       f"stratified split, more for {fractions}) or give --validation-data and --test-data")
    return {"train": train, "validation": val, "test": test}, info


def carve_heldout(frame: pd.DataFrame, share: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The missing held-out split (SHARE of the unique training rows), seeded and stratified when every class
    can be; checked first to leave every class in train, with one line saying what would work."""
    import math

    from sklearn.model_selection import train_test_split

    unique = frame.drop_duplicates(subset=["text", "label_name"])
    counts = unique["label_name"].value_counts()
    carved = math.ceil(share * len(unique))
    shown = ", ".join(f"{lab}: {int(c)}" for lab, c in counts.items())
    what = (f"--train-data: {len(unique)} distinct rows left after dropping {len(frame) - len(unique)} exact "
            f"duplicates of {len(frame)} rows ({len(counts)} classes: {shown})")
    fix = "add distinct rows or give both --validation-data and --test-data"
    if len(unique) - carved < len(counts):
        raise BadInput(f"{what}; carving {share:g} of them ({carved}) for the missing held-out split leaves "
                       f"{len(unique) - carved} for training, fewer than one per class: {fix}")
    try:
        train, held = train_test_split(unique, test_size=share, random_state=seed, stratify=unique["label_name"])
    except ValueError:
        train, held = train_test_split(unique, test_size=share, random_state=seed)
    missing = [lab for lab in counts.index if lab not in set(train["label_name"])]
    if missing:
        raise BadInput(f"{what}; carving the missing held-out split leaves no training row for class "
                       f"{', '.join(map(repr, missing))}: {fix}")
    return train, held
