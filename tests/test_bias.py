"""Bias checks: slice metrics on hand-computed frames, identity-term swaps, and the counterfactual probe run
against stub classifiers built to be biased (or not)."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from domaintune.components.evaluation import bias
from domaintune.components.core.errors import BadInput

FEMALE = re.compile(r"\b(she|her|hers|herself|woman|women|girl|mother|sister|wife|daughter|mary|mrs|queen)\b", re.I)


class StubClassifier:
    """predict_proba from a rule; records every call so tests can check batching."""

    labels = ["negative", "positive"]

    def __init__(self, rule):
        self.rule = rule
        self.calls: list[int] = []

    def predict_proba(self, texts, batch_size=64):
        self.calls.append(len(texts))
        return np.array([[1 - p, p] for p in (self.rule(t) for t in texts)], dtype=float)


def sexist(text: str) -> float:
    """Negative whenever a female term is present, positive otherwise."""
    return 0.1 if FEMALE.search(text) else 0.9


def fair(text: str) -> float:
    """Sentiment from sentiment words only."""
    return 0.1 if re.search(r"\b(bad|awful|boring)\b", text) else 0.9


MALE_TEXTS = [
    "he loved the film and his friends did too",
    "my brother thought the ending was great",
    "the man at the counter was helpful",
    "his performance is the best thing in it",
    "john said the food was good",
    "the father in the story is wonderful",
    "i told him the show was on tonight",
    "the king rules with a gentle hand",
    "my husband enjoyed every minute",
    "he is a boring speaker but a kind one",
] * 3  # 30 texts, male terms only


# ------------------------------------------------------------------------------------------- swaps

@pytest.fixture(scope="module")
def terms():
    return bias.load_identity_terms(None)


@pytest.fixture(scope="module")
def gender(terms):
    return bias.AxisSwapper("gender", terms["axes"]["gender"])


@pytest.mark.parametrize("text, expected", [
    ("He said HIS car was fine.", "She said HER car was fine."),
    ("Mr. Smith met his wife.", "Mrs. Smith met her husband."),
    ("she sells shells by the shore", "he sells shells by the shore"),
    ("MEN and Women", "WOMEN and Men"),
    ("John met Mary.", "Mary met John."),
])
def test_swap_is_case_preserving(gender, text, expected):
    assert gender.swap(text, 0, 1) == expected


@pytest.mark.parametrize("text", ["the shell of the hermit", "mankind's history", "shepherd heroes",
                                  "manly herbs on the menu", "she-wolf"])
def test_swap_whole_words_only(gender, text):
    assert gender.swap(text, 0, 1) == text
    assert gender.groups_in(text) == []


@pytest.mark.parametrize("text, expected", [
    ("I saw her yesterday.", "I saw him yesterday."),     # object pronoun
    ("I told her about it.", "I told him about it."),
    ("I like her.", "I like him."),
    ("Her car is red.", "His car is red."),              # possessive determiner
    ("She did it her own way.", "He did it his own way."),
    ("The book is his.", "The book is hers."),           # possessive pronoun
    ("the book is hers .", "the book is his ."),
    ("his dog", "her dog"),
])
def test_her_and_his_disambiguation(gender, text, expected):
    assert gender.swap(text, 0, 1) == expected


def test_article_agrees_and_multiword_terms_match_first(terms):
    age = bias.AxisSwapper("age", terms["axes"]["age"])
    assert age.swap("a young director", 0, 1) == "an elderly director"
    assert age.swap("An elderly man", 0, 1) == "A young man"
    race = bias.AxisSwapper("race_ethnicity", terms["axes"]["race_ethnicity"])
    b, w = race.groups.index("black"), race.groups.index("white")
    assert race.swap("An African American woman spoke.", b, w) == "A European American woman spoke."
    assert race.swap("the black woman and the white man", b, w) == "the white woman and the black man"
    # colours alone are not race terms
    assert race.groups_in("a black comedy in white light") == []


def test_target_only_terms_are_not_detected(terms):
    dis = bias.AxisSwapper("disability", terms["axes"]["disability"])
    assert dis.groups_in("a court hearing") == []
    assert dis.swap("a deaf actor", 0, 1) == "a hearing actor"


# ------------------------------------------------------------------------------------------- probe

def test_biased_classifier_has_high_flip_rate(terms):
    clf = StubClassifier(sexist)
    out = bias.counterfactual_probe(clf, MALE_TEXTS, terms=terms)
    g = out["axes"]["gender"]
    assert g["n_pairs"] == 30 and g["source"] == "test_texts"
    assert g["flip_rate"] == 1.0
    assert g["mean_abs_prob_change"] == pytest.approx(0.8)
    assert out["worst_axis"] == "gender" and out["max_axis_flip_rate"] == 1.0
    ex = out["worst_examples"][0]
    assert ex["flipped"] and ex["original_pred"] != ex["counterfactual_pred"]
    assert {"original", "counterfactual", "original_prob", "counterfactual_prob", "axis", "swap"} <= set(ex)
    assert len(clf.calls) == 1, "all predictions must go through one batched predict_proba call"


def test_unbiased_classifier_has_zero_flip_rate(terms):
    out = bias.counterfactual_probe(StubClassifier(fair), MALE_TEXTS, terms=terms)
    assert out["n_pairs"] > 0
    assert out["flip_rate"] == 0.0 and out["mean_abs_prob_change"] == 0.0
    assert all(a["flip_rate"] == 0.0 for a in out["axes"].values())


def test_templates_used_when_texts_have_no_terms(terms):
    texts = ["the plot is thin but the music is lovely", "a boring two hours", "great fun"] * 10
    out = bias.counterfactual_probe(StubClassifier(sexist), texts, terms=terms)
    assert out["source"] == "templates" and out["n_texts_with_terms"] == 0
    for axis, a in out["axes"].items():
        assert a["source"] == "templates" and a["n_pairs"] >= 20 and a["gated"], axis
    # the sexist stub flips on the templates' gendered fillers, so the bias is still caught
    assert out["axes"]["gender"]["flip_rate"] > 0.5
    assert out["axes"]["religion"]["flip_rate"] == 0.0


def test_few_text_pairs_are_topped_up_with_templates(terms):
    out = bias.counterfactual_probe(StubClassifier(fair), MALE_TEXTS[:5], terms=terms)
    g = out["axes"]["gender"]
    assert g["source"] == "both"
    assert g["by_source"]["test_texts"]["n_pairs"] == 5 and g["by_source"]["templates"]["n_pairs"] > 0
    assert out["source"] == "both"
    # enough pairs -> texts only
    out = bias.counterfactual_probe(StubClassifier(fair), MALE_TEXTS, terms=terms)
    assert out["axes"]["gender"]["source"] == "test_texts"


def test_no_templates_and_no_terms_reports_nothing_measured(terms):
    out = bias.counterfactual_probe(StubClassifier(fair), ["plain text"] * 5, terms=terms, templates=[])
    assert out["n_pairs"] == 0 and out["flip_rate"] is None and out["source"] == "none"
    assert out["worst_axis"] is None


def test_max_texts_and_seed(terms):
    texts = [f"{t} number {i}" for i, t in enumerate(MALE_TEXTS * 4)]
    a = bias.counterfactual_probe(StubClassifier(fair), texts, terms=terms, max_texts=25, seed=1)
    b = bias.counterfactual_probe(StubClassifier(fair), texts, terms=terms, max_texts=25, seed=1)
    assert a["n_texts_probed"] == 25 and a["n_texts_with_terms"] == 120
    assert a["axes"]["gender"]["worst_examples"] == b["axes"]["gender"]["worst_examples"]


def test_multi_group_axis_caps_variants(terms):
    texts = ["the christian family next door was lovely"] * 1 + ["great fun"]
    out = bias.counterfactual_probe(StubClassifier(fair), texts, terms=terms, templates=[], min_pairs=1,
                                    max_variants=3)
    r = out["axes"]["religion"]
    assert r["n_pairs"] == 3 and all(s.startswith("christian->") for s in r["by_swap"])


def test_report_renders(terms):
    out = bias.counterfactual_probe(StubClassifier(sexist), MALE_TEXTS, terms=terms)
    frame = pd.DataFrame({"region": ["a"] * 30 + ["b"] * 30})
    sl = bias.slice_metrics(frame, [0, 1] * 30, [0, 1] * 15 + [1] * 30, ["negative", "positive"], ["region"])
    gate = {"passed": False, "reasons": ["counterfactual_flip_rate failed (1.0000 > 0.0500): ..."], "notes": [],
            "checks": [{"name": "counterfactual_flip_rate", "value": 1.0, "op": "<=", "threshold": 0.05,
                        "passed": False, "blocking": True, "skipped": False}]}
    md = bias.render_bias_report({"counterfactual": out, "slices": sl, "gate": gate,
                                  "thresholds": {"max_flip_rate": 0.05, "max_slice_gap": 0.15}})
    assert "REJECTED" in md and "| gender |" in md and "Largest changes" in md and "`region`" in md
    assert "No slice columns" in bias.render_bias_report({"counterfactual": None, "slices": None})


# ------------------------------------------------------------------------------------------ slices

def test_slice_metrics_hand_computed():
    labels = ["neg", "pos"]
    frame = pd.DataFrame({"lang": ["en"] * 4 + ["fr"] * 4 + ["de"]})
    y_true = [0, 0, 1, 1, 0, 0, 1, 1, 1]
    y_pred = [0, 0, 1, 1, 0, 1, 0, 0, 0]
    out = bias.slice_metrics(frame, y_true, y_pred, labels, ["lang"], min_slice_size=3)
    col = out["columns"]["lang"]
    en, fr, de = col["slices"]["en"], col["slices"]["fr"], col["slices"]["de"]
    assert en == {"n": 4, "accuracy": 1.0, "macro_f1": 1.0, "gated": True,
                  "per_class": {"neg": {"support": 2, "fpr": 0.0, "fnr": 0.0},
                                "pos": {"support": 2, "fpr": 0.0, "fnr": 0.0}}}
    # fr: true [0,0,1,1], pred [0,1,0,0]: accuracy 1/4; neg P=1/3 R=1/2 F1=0.4; pos P=0 R=0 F1=0
    assert fr["accuracy"] == pytest.approx(0.25)
    assert fr["macro_f1"] == pytest.approx(0.2)
    assert fr["per_class"]["neg"] == {"support": 2, "fpr": 1.0, "fnr": 0.5}   # both pos predicted neg; 1 of 2 neg missed
    assert fr["per_class"]["pos"] == {"support": 2, "fpr": 0.5, "fnr": 1.0}
    # de: a slice of one is reported, not gated
    assert de["n"] == 1 and de["gated"] is False and de["accuracy"] == 0.0
    assert col["n_gated"] == 2
    assert col["accuracy_gap"] == pytest.approx(0.75) and col["macro_f1_gap"] == pytest.approx(0.8)
    assert col["max_gap"] == pytest.approx(0.8) and col["worst_slice"] == "fr" and col["best_slice"] == "en"
    assert col["fpr_gap"] == pytest.approx(1.0) and col["fnr_gap"] == pytest.approx(1.0)
    assert out["max_slice_gap"] == pytest.approx(0.8) and out["worst_column"] == "lang"


def test_small_slices_not_gated():
    frame = pd.DataFrame({"src": ["web"] * 40 + ["mail"] * 5, "tier": ["x"] * 45})
    y_true = np.zeros(45, dtype=int)
    y_pred = np.r_[np.zeros(40, dtype=int), np.ones(5, dtype=int)]  # the tiny slice is all wrong
    out = bias.slice_metrics(frame, y_true, y_pred, ["a", "b"], ["src", "tier"], min_slice_size=30)
    src = out["columns"]["src"]
    assert src["slices"]["mail"]["gated"] is False and src["slices"]["mail"]["accuracy"] == 0.0
    assert src["n_gated"] == 1 and src["accuracy_gap"] is None and src["max_gap"] is None
    assert out["max_slice_gap"] is None and out["worst_column"] is None


def test_slice_metrics_string_labels_and_missing_values():
    frame = pd.DataFrame({"g": ["x", "x", None, None]})
    out = bias.slice_metrics(frame, ["pos", "neg", "pos", "pos"], ["pos", "pos", "pos", "neg"], ["neg", "pos"],
                             ["g"], min_slice_size=2)
    sl = out["columns"]["g"]["slices"]
    assert set(sl) == {"x", "(missing)"}
    assert sl["x"]["accuracy"] == 0.5 and sl["(missing)"]["accuracy"] == 0.5
    assert out["max_slice_gap"] == 0.0


def test_missing_slice_column_is_bad_input():
    frame = pd.DataFrame({"text": ["a", "b"]})
    with pytest.raises(BadInput, match="'region'"):
        bias.slice_metrics(frame, [0, 1], [0, 1], ["a", "b"], ["region"])


def test_unknown_label_is_bad_input():
    with pytest.raises(BadInput, match="unknown label"):
        bias.slice_metrics(pd.DataFrame({"g": ["x"]}), ["zzz"], ["a"], ["a", "b"], ["g"])


# ------------------------------------------------------------------------------------ terms files

def test_packaged_terms_cover_the_axes(terms):
    assert {"gender", "race_ethnicity", "religion", "nationality", "age", "disability",
            "sexual_orientation"} <= set(terms["axes"])
    gender_terms = {t for row in terms["axes"]["gender"]["terms"] for t in row}
    for t in ["he", "she", "him", "her", "his", "himself", "herself", "man", "woman", "men", "women", "boy",
              "girl", "brother", "sister", "father", "mother", "son", "daughter", "husband", "wife", "boyfriend",
              "girlfriend", "uncle", "aunt", "mr", "mrs", "male", "female", "gentleman", "lady", "king", "queen"]:
        assert t in gender_terms, t
    assert len(terms["templates"]) >= 10 and all("{person}" in t for t in terms["templates"])


def test_user_terms_file(tmp_path):
    p = tmp_path / "terms.yaml"
    p.write_text("templates: ['I am {person}.']\n"
                 "axes:\n  pets:\n    groups: [cat, dog]\n    terms: [[cat, dog], [kitten, puppy]]\n"
                 "    fillers: [[a cat person, a dog person]]\n")
    t = bias.load_identity_terms(str(p))
    assert t["source"] == str(p) and list(t["axes"]) == ["pets"]
    out = bias.counterfactual_probe(StubClassifier(lambda s: 0.1 if "dog" in s.lower() else 0.9),
                                    ["my Cat is great"] * 25, terms=t)
    assert out["axes"]["pets"]["flip_rate"] == 1.0
    assert out["worst_examples"][0]["counterfactual"] == "my Dog is great"


@pytest.mark.parametrize("content, fragment", [
    ("axes: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
    ("templates: []\n", "'axes'"),
    ("axes:\n  g:\n    groups: [a, b]\n    terms: [[x, y, z]]\n", "one per group"),
    ("axes:\n  g:\n    groups: [a]\n    terms: [[x]]\n", "two distinct group"),
    ("axes:\n  g:\n    groups: [a, b]\n    terms: [[x, 3]]\n", "non-empty strings"),
    ("templates: ['no slot here']\naxes:\n  g:\n    groups: [a, b]\n    terms: [[x, y]]\n", "{person}"),
    ("axes:\n  g:\n    groups: [a, b]\n    terms: [[x, y]]\n    colour: red\n", "unknown key"),
])
def test_malformed_terms_file_is_bad_input(tmp_path, content, fragment):
    p = tmp_path / "bad_terms.yaml"
    p.write_text(content)
    with pytest.raises(BadInput) as exc:
        bias.load_identity_terms(str(p))
    assert "bad_terms.yaml" in str(exc.value) and fragment in str(exc.value)


def test_missing_terms_file_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="nope.yaml"):
        bias.load_identity_terms(str(tmp_path / "nope.yaml"))


# ------------------------------------------------------------------------------ EEC bench pairing

@pytest.mark.shared_data
def test_eec_pairs_differ_only_in_the_person():
    from conftest import shared_data

    from bench import eec_bias

    df = eec_bias.load_eec(shared_data("eec", "Equity-Evaluation-Corpus.csv"))
    # a scorer that favours women by 0.2 and African-American names by 0.1, nothing else
    df["score"] = 0.5 + 0.2 * (df["Gender"] == "female") + 0.1 * (df["Race"] == "African-American")
    gender = eec_bias.summarize(eec_bias.gender_pairs(df))
    race = eec_bias.summarize(eec_bias.race_pairs(df))
    assert gender["all"]["n_pairs"] == 1728 and race["all"]["n_pairs"] == 288
    assert set(gender) == {"anger", "fear", "joy", "sadness", "none", "all"}
    for r in gender.values():
        assert r["mean_diff"] == pytest.approx(0.2) and r["share_first_higher"] == 1.0
    for r in race.values():
        assert r["mean_diff"] == pytest.approx(0.1) and r["share_second_higher"] == 0.0
    # a scorer blind to the person: no differences, nothing significant
    df["score"] = 0.5 + 0.01 * df["Emotion"].map({"anger": 1, "fear": 2, "joy": 3, "sadness": 4, "none": 5})
    for r in eec_bias.summarize(eec_bias.gender_pairs(df)).values():
        assert r["mean_diff"] == pytest.approx(0.0) and not r["significant"] and r["share_equal"] == 1.0


def test_label_changes_of_an_unsure_model_are_not_counted_as_flips(terms):
    """Near-uniform probabilities flip on any edit; only material probability moves count as flips."""
    clf = StubClassifier(lambda t: 0.49 if FEMALE.search(t) else 0.51)
    out = bias.counterfactual_probe(clf, MALE_TEXTS, terms=terms)
    g = out["axes"]["gender"]
    assert g["raw_flip_rate"] == 1.0 and g["flip_rate"] == 0.0
    strict = bias.counterfactual_probe(clf, MALE_TEXTS, terms=terms, min_prob_change=0.0)
    assert strict["axes"]["gender"]["flip_rate"] == 1.0
