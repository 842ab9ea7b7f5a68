"""tokenize and finetune on tiny data: what they write, that training learns, and their bad inputs."""
import json
import os

import numpy as np
import pytest
from conftest import finetune_params, ingest_params
from datasets import load_from_disk

from domaintune.components.core.errors import BadInput
from domaintune.components.finetune import sizing
from domaintune.components.finetune.stage import FinetuneParams, pick_precision, run_finetune
from domaintune.components.inference.loading import load_predictor as load_classifier
from domaintune.components.inference.torch_backend import HFClassifier
from domaintune.components.io.base_models import resolve_model
from domaintune.components.tokenize.stage import TokenizeParams, run_tokenize


def test_tokenize_stores_no_padding_and_counts_truncation(trained, tmp_path):
    stats = run_tokenize(trained["splits"], trained["base"], str(tmp_path / "tok"), TokenizeParams(max_length=12))
    train = load_from_disk(str(tmp_path / "tok" / "train"))
    lengths = [len(x) for x in train["input_ids"]]
    assert max(lengths) == 12 and min(lengths) < 12  # truncated to max_length, never padded
    assert train["length"][:] == lengths
    assert 0 < stats["splits"]["train"]["truncated"] <= sum(1 for n in lengths if n == 12)
    assert stats["splits"]["train"]["tokens_max"] > 12  # the untruncated length is what is reported
    assert json.load(open(tmp_path / "tok" / "label_map.json"))["labels"] == ["account_access", "billing", "shipping"]


@pytest.mark.parametrize("value", [0, -3, 100000])
def test_bad_max_length(trained, tmp_path, value):
    with pytest.raises(BadInput, match="--max-length"):
        run_tokenize(trained["splits"], trained["base"], str(tmp_path / "tok"), TokenizeParams(max_length=value))
    assert not (tmp_path / "tok").exists()


def test_base_model_that_does_not_exist():
    with pytest.raises(BadInput, match="--base-model /no/such/model: no such directory"):
        resolve_model("/no/such/model")


def test_finetune_learns_and_saves_a_complete_model(trained):
    history = trained["history"]
    losses = [h["loss"] for h in history["log_history"] if "loss" in h]
    assert losses[-1] < losses[0]
    assert history["validation"]["macro_f1"] > 0.5  # three well-separated classes
    assert history["global_steps"] > 0 and history["examples_per_second"] > 0
    model_dir = trained["model"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "domaintune.json"):
        assert os.path.isfile(os.path.join(model_dir, name)), name
    assert not os.path.exists(os.path.join(os.path.dirname(model_dir), "checkpoints"))  # cleaned after success
    clf = load_classifier(model_dir)
    assert clf.labels == ["account_access", "billing", "shipping"]
    probs = clf.predict_proba(["I was charged twice for my plan", "my parcel never arrived"])
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_length_sorted_inference_keeps_input_order(trained):
    clf = HFClassifier(trained["model"])
    texts = ["refund my double charge please, invoice 123 was billed twice to my card", "login fails", "where is my parcel"]
    together = clf.predict_proba(texts, batch_size=2)
    alone = np.vstack([clf.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-4)


def test_lora_trains_few_parameters_and_saves_a_merged_plain_model(trained, tmp_path):
    history = run_finetune(trained["tokens"], trained["base"], str(tmp_path / "lora"), str(tmp_path / "h.json"),
                           finetune_params(epochs=1, lora=True, learning_rate=5e-4))
    assert history["parameters"]["trainable"] < 0.05 * history["parameters"]["total"]
    assert history["train_batches"].startswith("random, packed")  # through the PEFT wrapper too
    # the batch was left to the rule (0), the learning rate given: the history says which is which
    assert set(history["chosen_for_data_size"]) == {"batch_size"}
    assert history["params"]["batch_size"] == sizing.auto_batch_size(history["train_examples"])
    assert history["params"]["learning_rate"] == 5e-4
    from safetensors import safe_open

    with safe_open(str(tmp_path / "lora" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert not [k for k in keys if "lora_" in k]  # merged: a plain BERT classifier
    with safe_open(os.path.join(trained["base"], "model.safetensors"), "pt") as f:
        base_pooler = f.get_tensor("pooler.dense.weight")
        base_key = f.get_tensor("encoder.layer.0.attention.self.key.weight")
    with safe_open(str(tmp_path / "lora" / "model.safetensors"), "pt") as f:
        assert not f.get_tensor("bert.pooler.dense.weight").equal(base_pooler)  # trained with the head
        assert f.get_tensor("bert.encoder.layer.0.attention.self.key.weight").equal(base_key)  # not a LoRA target
    assert load_classifier(str(tmp_path / "lora")).predict_proba(["hello"]).shape == (1, 3)


@pytest.mark.parametrize("name,value", [("epochs", 0), ("epochs", -1), ("batch_size", -1), ("learning_rate", 0),
                                        ("batch_size", 2.5),
                                        ("precision", "fp8"), ("warmup_ratio", 1.5), ("epochs", float("nan")),
                                        ("learning_rate", float("inf")), ("batch_size", True),
                                        ("lora_r", float("nan")), ("lora_dropout", float("inf")), ("lora_alpha", True)])
def test_bad_hyperparameters_name_the_flag(name, value):
    with pytest.raises(BadInput, match=f"--{name.replace('_', '-')}"):
        finetune_params(**{name: value})


def test_defaults_chosen_for_the_data_size_and_an_explicit_value_wins():
    """0 (the default) is the rule's: enough optimizer steps per epoch on small sets, batch 32 on large ones."""
    assert [sizing.auto_batch_size(n) for n in (436, 1000, 2000, 4000, 7900, 8000, 16000, 67349)] == \
        [8, 8, 8, 16, 16, 32, 32, 32]
    assert sizing.auto_batch_size(4000, parts=3) == 18  # splits evenly over 3 processes
    p, chosen = sizing.for_data_size(finetune_params(), 4000)
    assert p.batch_size == 16 and chosen["batch_size"]["steps_per_epoch"] == 250
    assert sizing.describe(chosen, 4000) == ("finetune: batch size 16 chosen for 4000 training rows (250 optimizer "
                                             "steps per epoch; --batch-size sets your own)")
    p, chosen = sizing.for_data_size(finetune_params(batch_size=64), 4000)
    assert (p.batch_size, chosen) == (64, {})
    p, _ = sizing.for_data_size(finetune_params(gradient_accumulation_steps=4), 1000, processes=1)
    assert p.batch_size == 8


def test_the_summary_says_when_the_batch_size_was_chosen_for_the_data():
    from domaintune.pipelines.summary_view import batch_note

    assert batch_note({"batch_size": 8, "batch_size_chosen_for": 436}) == \
        ", batch 8 (chosen for 436 training rows; --batch-size sets it)"
    assert batch_note({"batch_size": 32, "batch_size_chosen_for": None}) == ", batch 32"
    assert batch_note({}) == ""  # a summary written before the batch size was recorded


def test_precision_auto_resolves_to_a_concrete_choice():
    assert pick_precision("auto") in ("bf16", "fp16", "fp32")
    assert pick_precision("fp32") == "fp32"


def test_precision_auto_on_cpu_follows_the_machine_measurement_every_process_shares(tmp_path, monkeypatch):
    """The bf16-or-fp32 timing is taken once per machine and reused: a resumed training and its rerun must not
    flip precision on a noisy timing (they would stop being bit-identical)."""
    import json

    import torch

    from domaintune.components.training import precision

    if torch.cuda.is_available():
        pytest.skip("CUDA decides by capability, not by timing")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    try:
        precision.cpu_bf16_speedup.cache_clear()
        measured = precision.cpu_bf16_speedup()
        cache = tmp_path / "domaintune" / "cpu_bf16_speedup.json"
        if not native:
            assert measured == 0.0 and pick_precision("auto") == "fp32" and not cache.exists()
            return
        [(key, value)] = json.loads(cache.read_text()).items()
        assert value == measured > 0 and key == precision._machine_key(torch.__version__)
        for speedup, expected in ((2.0, "bf16"), (1.1, "fp32"), (0.5, "fp32")):  # later processes read it
            cache.write_text(json.dumps({key: speedup}))
            precision.cpu_bf16_speedup.cache_clear()
            assert pick_precision("auto") == expected
    finally:
        precision.cpu_bf16_speedup.cache_clear()


def test_resume_from_checkpoint_dir(trained, tmp_path):
    ckpt = tmp_path / "ckpt"
    first = run_finetune(trained["tokens"], trained["base"], str(tmp_path / "m1"), str(tmp_path / "h1.json"),
                         finetune_params(epochs=1, batch_size=16, checkpoint_dir=str(ckpt)))
    assert first["resumed_from"] is None and any(p.startswith("checkpoint-") for p in os.listdir(ckpt))
    assert (ckpt / "fingerprint.json").is_file()
    # the same training again (a retried task): resumes from its last checkpoint, with nothing left to train
    second = run_finetune(trained["tokens"], trained["base"], str(tmp_path / "m2"), str(tmp_path / "h2.json"),
                          finetune_params(epochs=1, batch_size=16, checkpoint_dir=str(ckpt)))
    assert second["resumed_from"] and second["resumed_from"].startswith(str(ckpt))
    assert second["steps_trained"] == 0 and second["global_steps"] == first["global_steps"]
    assert second["validation"] == first["validation"]
    # more epochs is another training (another learning-rate schedule): refused, not silently continued
    with pytest.raises(BadInput, match=r"holds checkpoints of another training \(epochs 1\.0 -> 2\.0\)"):
        run_finetune(trained["tokens"], trained["base"], str(tmp_path / "m3"), str(tmp_path / "h3.json"),
                     finetune_params(epochs=2, batch_size=16, checkpoint_dir=str(ckpt)))


def test_dataclass_fields_are_pipeline_parameters():
    from domaintune.pipelines.params import pipeline_params

    names = {p.name for p in pipeline_params()}
    assert set(FinetuneParams.__dataclass_fields__) <= names
    assert set(ingest_params().__dataclass_fields__) <= names


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_embeddings_keeps_the_word_embeddings_and_trains_the_rest(trained, tmp_path, freeze):
    from safetensors import safe_open

    history = run_finetune(trained["tokens"], trained["base"], str(tmp_path / "m"), str(tmp_path / "h.json"),
                           finetune_params(epochs=1, batch_size=16, freeze_embeddings=freeze))
    with safe_open(os.path.join(trained["base"], "model.safetensors"), "pt") as f:
        base = {k.removeprefix("bert."): f.get_tensor(k) for k in f.keys()}
    with safe_open(str(tmp_path / "m" / "model.safetensors"), "pt") as f:
        tuned = {k.removeprefix("bert."): f.get_tensor(k) for k in f.keys()}
    words = "embeddings.word_embeddings.weight"
    assert history["parameters"]["frozen_input_embeddings"] == (base[words].numel() if freeze else 0)
    assert history["cheap_cpu_dropout_modules"] > 0
    assert (base[words].equal(tuned[words])) == freeze
    for name in ("embeddings.position_embeddings.weight", "encoder.layer.0.attention.self.query.weight"):
        assert not base[name].equal(tuned[name]), name  # everything else still trains


def test_length_grouped_batches_come_in_random_order():
    """Like-length batches (little padding), but not Hugging Face's saw-tooth of 50 batches sorted longest
    first: that cost 4.4 points of SST-2 dev accuracy at 4,000 rows (bench/BENCHMARKS.md)."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from domaintune.components.training.trainer import shuffled_batches

    lengths = [int(x) for x in torch.randint(1, 60, (3200,), generator=torch.Generator().manual_seed(0))]
    sampler = shuffled_batches(LengthGroupedSampler(16, lengths=lengths))
    torch.manual_seed(1)
    order = list(sampler)
    assert sorted(order) == list(range(len(lengths)))
    batch_max = [max(lengths[i] for i in order[s:s + 16]) for s in range(0, len(order), 16)]
    batch_min = [min(lengths[i] for i in order[s:s + 16]) for s in range(0, len(order), 16)]
    assert batch_max[0] == max(lengths)  # the longest batch first
    assert sum(hi - lo for hi, lo in zip(batch_max, batch_min)) / len(batch_max) < 3  # still grouped by length
    falls = sum(a > b for a, b in zip(batch_max[1:50], batch_max[2:51]))
    assert 10 < falls < 40  # a random order, not 50 batches sorted longest first
    assert shuffled_batches(None) is None
