"""pretrain (masked-LM DAPT/TAPT) on tiny data: packing, masking, what it writes, the classifier handoff, bad input."""
import os

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, ingest_params, pipeline_defaults

from domaintune.components.core.errors import BadInput
from domaintune.components.io.base_models import resolve_model
from domaintune.components.pretrain.stage import (Blocks, PretrainParams, make_collator, pack_blocks, read_corpus,
                                            run_pretrain, split_and_pack, tokenize_docs)
from domaintune.components.tokenize.stage import load_tokenizer

# The recommended defaults (bench/BENCHMARKS.md, "Domain-adaptive pretraining"); the pipeline signature is their
# one source once the stage is wired in, and then wins for every field it has.
RECOMMENDED = dict(domain_corpus="", pretrain_on_train_text=False, corpus_text_column="text", mlm_epochs=1.0,
                   mlm_max_steps=300, mlm_learning_rate=1e-4, mlm_probability=0.15, whole_word_masking=False,
                   mlm_batch_size=32, mlm_head_warmup_steps=200, max_length=128, precision="auto", seed=42,
                   checkpoint_dir="", s3_endpoint_url="")
# Small enough for two shared CPU cores: blocks of 32 tokens, a dozen steps.
FAST = dict(max_length=32, mlm_batch_size=8, mlm_max_steps=10, mlm_epochs=20.0, mlm_head_warmup_steps=4,
            mlm_learning_rate=5e-4)


def pretrain_params(**overrides):
    return PretrainParams(**{**RECOMMENDED, **pipeline_defaults(PretrainParams), **FAST, **overrides})


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Blocks of 32 tokens: a second intra-op thread only adds synchronisation, which on two shared, busy cores
    costs more than the work itself (measured: 5-10x slower steps with 2 threads at load 10)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base():
    return resolve_model("all-MiniLM-L6-v2")


@pytest.fixture(scope="module")
def tiny_run(base, tmp_path_factory):
    """Whole-word-masked DAPT on the tiny CSV's text column (one run shared by the tests below)."""
    root = tmp_path_factory.mktemp("pretrain")
    report = run_pretrain("", base, str(root / "dapt"), str(root / "pretrain_report.json"),
                          pretrain_params(domain_corpus=TINY, whole_word_masking=True))
    return {"root": root, "model": str(root / "dapt"), "report": report}


def test_packing_cuts_full_blocks_without_padding(base):
    tokenizer = load_tokenizer(base)
    docs = pd.read_csv(TINY)["text"].tolist()
    train, heldout, stats = split_and_pack(tokenizer, docs, 16, seed=0, offsets=False)
    ids = train["input_ids"]
    assert ids.shape[1] == 16 and len(ids) == stats["blocks_train"] > 0 and len(heldout["input_ids"]) >= 1
    assert (ids[:, 0] == tokenizer.cls_token_id).all() and (ids[:, -1] == tokenizer.sep_token_id).all()
    assert not (ids == tokenizer.pad_token_id).any()
    assert stats["documents_train"] + stats["documents_heldout"] == len(docs)
    # the bodies are the documents in order, separated by [SEP]: nothing lost but the last partial block
    enc = tokenize_docs(tokenizer, docs, offsets=False)
    stream = [t for i in range(3) for t in enc["input_ids"][i] + [tokenizer.sep_token_id]]
    packed = pack_blocks(enc, range(len(docs)), tokenizer, 16, offsets=False)["input_ids"][:, 1:-1].ravel()
    assert packed[: len(stream)].tolist() == stream
    special = train["special_tokens_mask"].astype(bool)
    assert (special == np.isin(ids, [tokenizer.cls_token_id, tokenizer.sep_token_id])).all()


def test_whole_word_masking_masks_every_piece_of_a_word(base):
    tokenizer = load_tokenizer(base)
    docs = ["unbelievably overcapitalised conglomerates restructured indebtedness"] * 12
    train, _, _ = split_and_pack(tokenizer, docs, 24, seed=0, offsets=True)
    collator = make_collator(tokenizer, 0.3, True, seed=0)
    batch = collator([Blocks(train)[i] for i in range(len(train["input_ids"]))])
    masked = batch["labels"] != -100
    ids = torch.where(masked, batch["labels"], batch["input_ids"])
    pieces = np.array([[t.startswith("##") for t in tokenizer.convert_ids_to_tokens(row)] for row in ids.tolist()])
    assert masked.any() and pieces.any()
    special = torch.tensor(train["special_tokens_mask"]).bool()
    checked = 0
    for r, c in zip(*np.nonzero(pieces)):  # a continuation piece is masked exactly when the piece before it is
        if not special[r, c - 1]:  # (a word cut by a block boundary starts afresh after [CLS])
            assert masked[r, c] == masked[r, c - 1]
            checked += 1
    assert checked > 20
    assert (batch["input_ids"][masked] == tokenizer.mask_token_id).all()  # 5.23: whole words get [MASK] only


def test_dapt_learns_and_reports_before_and_after(tiny_run):
    report = tiny_run["report"]
    losses = [h["loss"] for h in report["training"]["log_history"] if "loss" in h]
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    ppl = report["perplexity"]
    assert ppl["before"] > 1 and ppl["after"] > 1 and ppl["heldout_masked_tokens"] > 0
    assert ppl["untrained_head"] > ppl["before"]  # the head warm-up is what makes "before" meaningful
    assert "head-only" in ppl["method"] and report["head_warmup"]["steps"] == FAST["mlm_head_warmup_steps"]
    assert report["head_warmup"]["trained"] and all(n.startswith("cls.predictions.") for n in report["head_warmup"]["trained"])
    assert "cls.predictions.decoder.weight" not in report["head_warmup"]["trained"]  # tied to the frozen embeddings
    training = report["training"]
    assert training["steps"] == FAST["mlm_max_steps"]
    assert training["tokens_seen"] == FAST["mlm_max_steps"] * FAST["mlm_batch_size"] * FAST["max_length"]
    assert training["train_seconds"] > 0 and report["wall_seconds"] >= training["train_seconds"]
    assert report["corpus"]["sources"][0]["uri"] == TINY and report["corpus"]["documents"] == 48
    assert "whole-word" in training["masking"]


def test_artifacts_are_complete_and_checkpoints_removed(tiny_run):
    model = tiny_run["model"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "pretrain.json"):
        assert os.path.isfile(os.path.join(model, name)), name
    assert os.path.isfile(tiny_run["root"] / "pretrain_report.json")
    assert sorted(os.listdir(tiny_run["root"])) == ["dapt", "pretrain_report.json"]  # no checkpoints, no temp dirs


def test_output_loads_as_classifier_with_the_base_pooler(tiny_run, base):
    from transformers import AutoModel, AutoModelForSequenceClassification

    clf = AutoModelForSequenceClassification.from_pretrained(tiny_run["model"], num_labels=3)
    original = AutoModel.from_pretrained(base)
    for name in ("weight", "bias"):
        torch.testing.assert_close(getattr(clf.bert.pooler.dense, name), getattr(original.pooler.dense, name),
                                   rtol=0, atol=0)
    adapted = clf.bert.encoder.layer[0].attention.self.query.weight
    assert not torch.equal(adapted, original.encoder.layer[0].attention.self.query.weight)  # the encoder moved
    reload = tiny_run["report"]["classifier_reload"]
    assert reload["carried_over_from_base"] == ["bert.pooler.dense.bias", "bert.pooler.dense.weight"]
    assert reload["new_on_classifier_load"] == ["classifier.bias", "classifier.weight"]


def test_tapt_on_the_train_split_feeds_finetune(base, tmp_path):
    from conftest import finetune_params

    from domaintune.components.finetune.stage import run_finetune
    from domaintune.components.ingest.stage import run_ingest
    from domaintune.components.tokenize.stage import TokenizeParams, run_tokenize

    splits = str(tmp_path / "splits")
    run_ingest(ingest_params(validation_fraction=0.2, test_fraction=0.2), splits, str(tmp_path / "data.json"))
    report = run_pretrain(splits, base, str(tmp_path / "tapt"), str(tmp_path / "tapt.json"),
                          pretrain_params(pretrain_on_train_text=True, mlm_max_steps=4, mlm_head_warmup_steps=2))
    train_rows = len(pd.read_parquet(os.path.join(splits, "train.parquet")))
    assert report["corpus"]["sources"] == [{"kind": "train_text", "uri": os.path.join(splits, "train.parquet"),
                                            "sha256": report["corpus"]["sources"][0]["sha256"], "documents": train_rows}]
    run_tokenize(splits, base, str(tmp_path / "tokens"), TokenizeParams(max_length=32))
    history = run_finetune(str(tmp_path / "tokens"), str(tmp_path / "tapt"), str(tmp_path / "model"),
                           str(tmp_path / "history.json"), finetune_params(epochs=1, batch_size=16))
    assert history["global_steps"] > 0 and os.path.isfile(tmp_path / "model" / "model.safetensors")


def test_a_retry_resumes_from_the_checkpoint_dir(base, tmp_path, monkeypatch):
    import domaintune.components.pretrain.stage as pretrain

    monkeypatch.setattr(pretrain, "MIN_SAVE_STEPS", 2)
    ckpt = tmp_path / "ckpt"
    first = run_pretrain("", base, str(tmp_path / "m1"), str(tmp_path / "r1.json"),
                         pretrain_params(domain_corpus=TINY, mlm_max_steps=4, mlm_head_warmup_steps=2,
                                         checkpoint_dir=str(ckpt)))
    assert first["training"]["resumed_from"] is None and (ckpt / "pretrain" / "checkpoint-4").is_dir()
    second = run_pretrain("", base, str(tmp_path / "m2"), str(tmp_path / "r2.json"),
                          pretrain_params(domain_corpus=TINY, mlm_max_steps=6, mlm_head_warmup_steps=2,
                                          checkpoint_dir=str(ckpt)))
    assert second["training"]["resumed_from"] == str(ckpt / "pretrain" / "checkpoint-4")
    assert second["training"]["steps"] == 6
    assert second["perplexity"]["before"] == first["perplexity"]["before"]  # recorded once, not re-measured


def _write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


@pytest.mark.parametrize("name,data,message", [
    ("missing.txt", None, "no such file or directory"),
    ("empty.txt", b"", "empty file"),
    ("blank.txt", b"\n  \n\t\n", "no text (every line is blank)"),
    ("latin1.txt", "caf\u00e9 prices rose\n".encode("latin-1"), "not valid UTF-8 at byte 3 (line 1)"),
    ("notext.csv", b"sentence,label\nshares rose,positive\n", "no column 'text' (columns: sentence, label)"),
])
def test_bad_corpus_names_the_file_and_writes_nothing(base, tmp_path, name, data, message):
    path = str(tmp_path / name) if data is None else _write(tmp_path / name, data)
    out = tmp_path / "out"
    with pytest.raises(BadInput) as err:
        run_pretrain("", base, str(out / "model"), str(out / "report.json"), pretrain_params(domain_corpus=path))
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    assert "\n" not in str(err.value)
    assert not out.exists()


def test_corpus_from_s3(monkeypatch):
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        import boto3

        boto3.client("s3").create_bucket(Bucket="corpora")
        boto3.client("s3").put_object(Bucket="corpora", Key="news/reuters.txt", Body=b"\xef\xbb\xbfShares rose.\n\nBonds  fell\n")
        docs, sha = read_corpus("s3://corpora/news/reuters.txt", "text")
        assert docs == ["Shares rose.", "Bonds fell"] and len(sha) == 64
        with pytest.raises(BadInput, match="^s3://corpora/news/missing.txt: no such object or prefix$"):
            read_corpus("s3://corpora/news/missing.txt", "text")


def test_tapt_without_a_train_split(base, tmp_path):
    with pytest.raises(BadInput, match="train.parquet: no such file"):
        run_pretrain(str(tmp_path), base, str(tmp_path / "m"), str(tmp_path / "r.json"),
                     pretrain_params(pretrain_on_train_text=True))
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("overrides,flag", [
    (dict(mlm_epochs=0), "--mlm-epochs"),
    (dict(mlm_max_steps=-1), "--mlm-max-steps"),
    (dict(mlm_learning_rate=0), "--mlm-learning-rate"),
    (dict(mlm_probability=1.0), "--mlm-probability"),
    (dict(mlm_probability=0), "--mlm-probability"),
    (dict(mlm_batch_size=0), "--mlm-batch-size"),
    (dict(mlm_head_warmup_steps=-5), "--mlm-head-warmup-steps"),
    (dict(precision="fp8"), "--precision"),
    (dict(corpus_text_column=""), "--corpus-text-column"),
    (dict(mlm_epochs=float("nan")), "--mlm-epochs"),
    (dict(mlm_batch_size=True), "--mlm-batch-size"),
])
def test_bad_parameters_name_the_flag(overrides, flag):
    with pytest.raises(BadInput, match=flag):
        pretrain_params(**{"domain_corpus": TINY, **overrides})


def test_nothing_to_pretrain_on_is_refused_by_the_stage_not_by_the_plan(base, tmp_path):
    """The defaults (no corpus, no TAPT) are valid parameters: the plan task decides not to pretrain. Only the
    pretrain stage itself, asked to run without either, refuses."""
    params = pretrain_params(domain_corpus="", pretrain_on_train_text=False)
    assert not params.wanted and pretrain_params(pretrain_on_train_text=True).wanted
    with pytest.raises(BadInput, match="--domain-corpus or --pretrain-on-train-text"):
        run_pretrain(str(tmp_path), base, str(tmp_path / "m"), str(tmp_path / "r.json"), params)
    assert sorted(os.listdir(tmp_path)) == []


def test_too_little_text(base, tmp_path):
    path = _write(tmp_path / "short.txt", b"one short line\n")
    with pytest.raises(BadInput, match=f"^{path}: too little text for masked-LM pretraining"):
        run_pretrain("", base, str(tmp_path / "m"), str(tmp_path / "r.json"), pretrain_params(domain_corpus=path))
    assert sorted(os.listdir(tmp_path)) == ["short.txt"]
