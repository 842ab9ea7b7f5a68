"""Summarization (seq2seq): pairs validated and split on the source, token stats of both sides, ROUGE and the
baselines and faithfulness check, BERT2BERT-share from the packaged MiniLM, a tiny T5 from a config (the
AutoModelForSeq2SeqLM path), the chain ingest → tokenize → finetune → export → evaluate on the project's
made-up support conversations, and predict on a summarizer."""
import ast
import json
import os

import pandas as pd
import pytest
from conftest import HERE, served_without_torch, shared_data
from test_cli import cli, one_clear_line

from domaintune.components.core.errors import BadInput
from domaintune.components.evaluation import rouge as R
from domaintune.components.ingest.stage import IngestParams, run_ingest

PAIRS = os.path.join(HERE, "fixtures", "support_summaries.jsonl")


def ingest(tmp_path, train=PAIRS, **overrides):
    p = IngestParams(**{"train_data": train, "task": "seq2seq", "validation_fraction": 0.15, "test_fraction": 0.15,
                        **overrides})
    report = run_ingest(p, str(tmp_path / "splits"), str(tmp_path / "report.json"))
    return report, {n: pd.read_parquet(tmp_path / "splits" / f"{n}.parquet") for n in ("train", "validation", "test")}


def write_jsonl(tmp_path, rows, name="pairs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# --------------------------------------------------------------------------------------------- data

def test_pairs_split_on_the_source_and_report_lengths(tmp_path):
    rows = [json.loads(line) for line in open(PAIRS)]
    rows += [dict(rows[0], summary="Another summary of the same conversation.")] * 3  # one source, four targets
    report, splits = ingest(tmp_path, write_jsonl(tmp_path, rows))
    assert sum(report["rows"].values()) == 83 and report["labels"] == [] and report["split_by"] == "source text"
    holding = [n for n, df in splits.items() if rows[0]["text"] in set(df["text"])]
    assert len(holding) == 1 and (splits[holding[0]]["text"] == rows[0]["text"]).sum() == 4
    assert all(v["identical_texts"] == 0 for v in report["leakage"].values())
    length = report["length"]["train"]
    assert length["source_words_mean"] > length["target_words_mean"] and length["compression_ratio_mean"] > 1
    assert list(splits["test"].columns) == ["text", "summary"]


@pytest.mark.parametrize("row,needles", [
    ({"text": "", "summary": "x"}, ["row 2", "empty source"]),
    ({"text": "a long enough source text", "summary": "  "}, ["row 2", "empty target"]),
    ({"text": "short", "summary": "a summary much longer than its source"}, ["row 2", "more than its source",
                                                                              "--target-column summary"]),
])
def test_bad_pairs_name_the_row(tmp_path, row, needles):
    path = write_jsonl(tmp_path, [{"text": "a fine source text here", "summary": "fine"}, row])
    with pytest.raises(BadInput) as err:
        ingest(tmp_path, path)
    assert all(n in str(err.value) for n in needles), err.value


def test_missing_target_column_names_the_flag(tmp_path):
    path = write_jsonl(tmp_path, [{"dialogue": "a b c d", "summary": "a"}])
    with pytest.raises(BadInput, match="no column 'text'.*--text-column"):
        ingest(tmp_path, path)


def test_dialogsum_reads_with_its_columns(tmp_path):
    path = shared_data("dialogsum", "dev.jsonl")
    report, splits = ingest(tmp_path, path, text_column="dialogue")
    assert sum(report["rows"].values()) == 500 and report["length"]["train"]["compression_ratio_mean"] > 3
    assert R.turns(splits["test"]["text"].iloc[0])  # dialogues: the longest-turn baseline applies


def test_token_stats_count_truncation_on_both_sides(tmp_path):
    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.tokenize.stage import TokenizeParams, run_tokenize

    ingest(tmp_path)
    stats = run_tokenize(str(tmp_path / "splits"), resolve_model(""), str(tmp_path / "tokens"),
                         TokenizeParams(max_length=24, max_target_length=8))
    train = stats["splits"]["train"]
    assert train["truncated"] == train["examples"] and train["targets_truncated"] == train["examples"]
    assert train["compression_ratio_tokens"] > 1 and train["target_tokens_mean"] > 8
    from datasets import load_from_disk

    row = load_from_disk(str(tmp_path / "tokens" / "train"))[0]
    assert len(row["input_ids"]) == 24 and len(row["labels"]) == 7  # [CLS] dropped: the decoder starts from it
    assert row["labels"][-1] == 102  # [SEP] ends the target


# -------------------------------------------------------------------------------------------- metrics

def test_rouge_baselines_and_faithfulness():
    assert R.rouge(["the cat sat"], ["the cat sat"])["rougeL"] == 1.0
    assert R.sentences("One here. Two there!\nThree") == ["One here.", "Two there!", "Three"]
    dialogue = "#Person1#: Hi.\n#Person2#: My order 123 from Berlin never arrived at all.\n#Person1#: Sorry."
    assert R.longest_turn(dialogue) == "My order 123 from Berlin never arrived at all."
    found = R.unsupported("Order 124 from Berlin was lost by Anna.", dialogue)
    assert found == {"numbers": ["124"], "names": ["Anna"]}
    f = R.faithfulness(["Order 123 from Berlin.", "Order 999 lost."], [dialogue, dialogue])
    assert f["unsupported_number_rate"] == 0.5 and f["worst"][0]["numbers"] == ["999"]
    base = R.baselines([dialogue], ["My order never arrived."])
    assert set(base) == {"lead_1", "longest_turn"} and base["longest_turn"]["rougeL"] > base["lead_1"]["rougeL"]


def test_gate_blocks_on_lead_margin_and_unsupported_numbers():
    from domaintune.components.evaluation.gate import Thresholds, decide
    from domaintune.components.evaluation.seq2seq_metrics import gate_checks

    metrics = {"rougeL": 0.40, "lead_margin": -0.02, "unsupported_number_rate": 0.2, "lead_baseline": "lead_1",
               "baselines": {"lead_1": {"rougeL": 0.42}}, "distinct_summaries": 0.9}
    t = Thresholds(min_macro_f1=0.3)
    gate = decide(metrics, None, None, t, "rougeL", None, task_checks=gate_checks(metrics, t))
    assert not gate["passed"] and [r.split()[0] for r in gate["reasons"]] == ["lead_margin", "unsupported_numbers"]
    loose = Thresholds(min_macro_f1=0.3, min_lead_margin=-0.05, max_unsupported_number_rate=0.25)
    assert decide(metrics, None, None, loose, "rougeL", None, task_checks=gate_checks(metrics, loose))["passed"]
    with pytest.raises(BadInput, match="--min-lead-margin"):
        Thresholds(min_lead_margin=1.5)


def test_gate_blocks_a_summarizer_that_writes_a_few_stock_summaries():
    """What bench.seq2seq_dialogsum found: 7 distinct summaries for 100 dialogues, and still ahead of lead-1."""
    from domaintune.components.evaluation.gate import Thresholds
    from domaintune.components.evaluation.seq2seq_metrics import distinct_share, gate_checks

    sources = [f"dialogue {i}" for i in range(100)] + ["dialogue 0"]  # a repeated source may repeat its summary
    stock = ["#Person1# asks #Person2# to take a ticket."] * 58 + [f"summary {i % 6}" for i in range(43)]
    assert distinct_share(stock, sources) == 0.07
    assert distinct_share([f"s{i}" for i in range(100)] + ["s0"], sources) == 1
    metrics = {"rougeL": 0.23, "lead_margin": 0.056, "unsupported_number_rate": 0.0, "lead_baseline": "lead_1",
               "baselines": {"lead_1": {"rougeL": 0.177}}, "distinct_summaries": distinct_share(stock, sources)}
    failed = [c["name"] for c in gate_checks(metrics, Thresholds()) if not c["passed"]]
    assert failed == ["distinct_summaries"]
    assert all(c["passed"] for c in gate_checks(metrics, Thresholds(min_distinct_summaries=0)))  # 0: off
    assert not gate_checks({**metrics, "distinct_summaries": None}, Thresholds())[2]["passed"]  # fail closed
    with pytest.raises(BadInput, match="--min-distinct-summaries"):
        Thresholds(min_distinct_summaries=1.5)


def test_summary_swap_probe_counts_changes_beyond_the_swapped_term():
    from domaintune.components.evaluation.bias.summary_swap import summary_swap_probe

    class Echo:  # summarises by its first sentence: changes exactly by the swap
        def predict(self, texts, batch_size=16):
            return [R.lead(t) for t in texts]

    class Fixed:  # ignores the source: every counterfactual differs beyond the swap where the term was summarised
        def predict(self, texts, batch_size=16):
            return ["he called about a refund."] * len(texts)

    sources = ["He called about a refund. It was late.", "The invoice was wrong. Nothing else."]
    fair = summary_swap_probe(Echo(), sources, Echo().predict(sources))
    assert fair["n_pairs"] == 1 and fair["changed_beyond_swap"] == 0.0 and fair["axes"]["gender"]["pairs"] == 1
    unfair = summary_swap_probe(Fixed(), sources, Fixed().predict(sources))
    assert unfair["changed_beyond_swap"] == 1.0 and unfair["worst"][0]["expected"] == "she called about a refund."


# --------------------------------------------------------------------------------------------- models

def test_bert2bert_shares_the_encoder_and_stays_shared_after_saving(tmp_path):
    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.tasks.seq2seq_model import SharedSeq2Seq, build_seq2seq

    model = build_seq2seq(resolve_model(""))
    enc, dec = model.encoder.encoder.layer[0], model.decoder.bert.encoder.layer[0]
    assert dec.attention.self.query.weight is enc.attention.self.query.weight
    assert dec.crossattention.self.query.weight is not enc.attention.self.query.weight
    assert model.decoder.get_output_embeddings().weight is model.encoder.embeddings.word_embeddings.weight
    assert (model.config.decoder_start_token_id, model.config.eos_token_id, model.config.pad_token_id) == (101, 102, 0)
    assert model.config.vocab_size == 30522
    model.save_pretrained(tmp_path / "m")
    again = SharedSeq2Seq.from_pretrained(str(tmp_path / "m"))
    layer = again.decoder.bert.encoder.layer[0]
    assert layer.attention.self.query.weight is again.encoder.encoder.layer[0].attention.self.query.weight
    import torch

    assert torch.equal(layer.crossattention.self.query.weight, dec.crossattention.self.query.weight)


def tiny_t5(path):
    """A T5 built from a config (no seq2seq checkpoint exists offline), with the packaged WordPiece tokenizer."""
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from domaintune.components.io.base_models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(""))
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4,
                      decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.sep_token_id)
    import torch

    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_a_t5_checkpoint_trains_exports_and_matches_pytorch(tmp_path):
    from domaintune.components.export.stage import ExportParams, run_export
    from domaintune.components.finetune.stage import FinetuneParams, run_finetune
    from domaintune.components.tasks.seq2seq_model import prefix_of
    from domaintune.components.tokenize.stage import TokenizeParams, run_tokenize

    base = tiny_t5(tmp_path / "t5")
    assert prefix_of(base) == "summarize: "
    ingest(tmp_path)
    run_tokenize(str(tmp_path / "splits"), base, str(tmp_path / "tokens"), TokenizeParams(max_length=64,
                                                                                         max_target_length=24))
    history = run_finetune(str(tmp_path / "tokens"), base, str(tmp_path / "model"), str(tmp_path / "h.json"),
                           FinetuneParams(epochs=1, batch_size=16, learning_rate=1e-3, freeze_embeddings=False))
    assert "rougeL" in history["validation"]
    report = run_export(str(tmp_path / "model"), str(tmp_path / "splits" / "test.parquet"), str(tmp_path / "onnx"),
                        ExportParams(export_latency_runs=0))
    assert report["parity"]["fp32_agreement"] >= 0.99 and report["parity"]["max_abs_logit_diff"] <= 1e-3
    assert os.path.isfile(tmp_path / "onnx" / "model.decoder.onnx")


def test_lora_finds_the_attention_projections_of_every_model_type(tmp_path):
    """peft's own names for T5 (q, v); by module names for BERT2BERT (query, value: self- and cross-attention),
    which peft has no entry for; a clear error for a model without any."""
    import torch
    from transformers import AutoModelForSeq2SeqLM

    from domaintune.components.finetune.lora import lora_targets
    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.tasks.seq2seq_model import build_seq2seq

    assert lora_targets(AutoModelForSeq2SeqLM.from_pretrained(tiny_t5(tmp_path / "t5"))) == ["q", "v"]
    assert lora_targets(build_seq2seq(resolve_model(""))) == ["query", "value"]

    class NoAttention(torch.nn.Module):
        config = type("Config", (), {"model_type": "mlp"})()

        def __init__(self):
            super().__init__()
            self.dense = torch.nn.Linear(4, 4)

    with pytest.raises(BadInput, match="--lora: no attention projections to adapt found in this mlp"):
        lora_targets(NoAttention())


def test_a_t5_trains_with_lora_and_saves_a_merged_model(tmp_path):
    from domaintune.components.finetune.stage import FinetuneParams, run_finetune
    from domaintune.components.tokenize.stage import TokenizeParams, run_tokenize

    base = tiny_t5(tmp_path / "t5")
    ingest(tmp_path)
    run_tokenize(str(tmp_path / "splits"), base, str(tmp_path / "tokens"), TokenizeParams(max_length=48,
                                                                                         max_target_length=16))
    history = run_finetune(str(tmp_path / "tokens"), base, str(tmp_path / "model"), str(tmp_path / "h.json"),
                           FinetuneParams(epochs=1, batch_size=16, learning_rate=1e-3, lora=True))
    assert history["parameters"]["trainable"] < history["parameters"]["total"] and "rougeL" in history["validation"]
    saved = json.load(open(tmp_path / "model" / "domaintune.json"))
    assert saved["lora_merged"] and not os.path.isfile(tmp_path / "model" / "adapter_config.json")


# ------------------------------------------------------------------------------------------ the chain

@pytest.fixture(scope="module")
def summarizer(tmp_path_factory):
    """BERT2BERT-share from the packaged MiniLM trained on the fixture, exported and evaluated."""
    from domaintune.components.evaluate.stage import EvaluateParams, run_evaluate
    from domaintune.components.export.stage import ExportParams, run_export
    from domaintune.components.finetune.stage import FinetuneParams, run_finetune
    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.tokenize.stage import TokenizeParams, run_tokenize

    root = tmp_path_factory.mktemp("seq2seq")
    ingest(root)
    base = resolve_model("")
    run_tokenize(str(root / "splits"), base, str(root / "tokens"), TokenizeParams(max_length=64, max_target_length=32))
    history = run_finetune(str(root / "tokens"), base, str(root / "model"), str(root / "history.json"),
                           FinetuneParams(epochs=3, batch_size=8, learning_rate=3e-4))
    export = run_export(str(root / "model"), str(root / "splits" / "test.parquet"), str(root / "onnx"),
                        ExportParams(export_latency_runs=2))
    evaluation = run_evaluate(str(root / "model"), str(root / "onnx"), str(root / "splits"), str(root / "evaluation"),
                              EvaluateParams(min_macro_f1=0.0, min_lead_margin=-1, max_flip_rate=1,
                                             min_distinct_summaries=0))
    return {"root": root, "model": str(root / "model"), "onnx": str(root / "onnx"), "history": history,
            "export": export, "evaluation": evaluation}


def test_training_early_stops_on_generated_rouge(summarizer):
    h = summarizer["history"]
    assert h["validation"]["rougeL"] >= 0 and h["task"] == "seq2seq"
    meta = json.load(open(os.path.join(summarizer["model"], "domaintune.json")))
    assert meta["task"] == "seq2seq" and meta["labels"] == []


def test_onnx_greedy_matches_pytorch_and_int8_is_checked_on_rouge(summarizer):
    e = summarizer["export"]
    assert e["parity"]["fp32_agreement"] >= 0.99 and e["parity"]["max_abs_logit_diff"] <= 1e-3
    assert e["parity"]["n"] == e["metrics"]["onnx_fp32"]["n"] == summarizer["evaluation"]["metrics"]["n"]  # rows
    assert json.load(open(os.path.join(summarizer["onnx"], "generation_config.json")))["max_new_tokens"] == 32
    assert e["quality_metric"] == "rougeL" and set(e["metrics"]) == {"pytorch_fp32", "onnx_fp32", "onnx_int8"}
    assert (e["deployable"] == "int8") == (e["int8_quality_drop"] <= e["max_int8_drop"])
    assert (e["deployable"] == "int8") == bool(e["int8_files"])  # all-int8 or the first passing per-file subset
    assert e["int8_files"] in ([], ["encoder", "decoder"], ["decoder"], ["encoder"])
    assert set(e["latency"]["results"]["1 text, greedy summary"]) == {"pytorch_fp32", "onnx_fp32", "onnx_int8"}


def test_a_pair_with_only_the_decoder_int8_replaces_the_int8_files_when_it_passes(summarizer, tmp_path):
    """The per-file int8 step on the real export (a copy): the first subset (decoder only) is evaluated with
    onnxruntime and, passing, becomes `model.int8.*`: fp32 encoder bytes, int8 decoder bytes, nothing left over."""
    import filecmp
    import shutil

    from domaintune.components.export.int8_rule import per_file_int8
    from domaintune.components.tasks import get_task

    onnx = shutil.copytree(summarizer["onnx"], tmp_path / "onnx")
    task, test = get_task("seq2seq"), pd.read_parquet(os.path.join(summarizer["root"], "splits", "test.parquet"))
    built = {"fp32_path": str(onnx / "model.onnx"), "int8_path": str(onnx / "model.int8.onnx"), "logits": {}}
    int8_decoder = shutil.copyfile(onnx / "model.int8.decoder.onnx", tmp_path / "int8_decoder.onnx")
    metrics = {"pytorch_fp32": {"rougeL": 0.0}}
    tried = per_file_int8(task, built, test, [], metrics, max_int8_drop=0.99)  # any drop passes
    assert [t["int8_files"] for t in tried] == [["decoder"]] and tried[0]["accepted"]
    assert filecmp.cmp(onnx / "model.int8.onnx", onnx / "model.onnx", shallow=False)
    assert filecmp.cmp(onnx / "model.int8.decoder.onnx", int8_decoder, shallow=False)
    assert not [f for f in os.listdir(onnx) if f.startswith("candidate")]
    assert metrics["onnx_int8"]["n"] == len(test) and len(built["logits"]["onnx_int8"]["summaries"]) == len(test)


def test_evaluation_reports_baselines_faithfulness_and_worst_examples(summarizer):
    ev = summarizer["evaluation"]
    m = ev["metrics"]
    assert ev["scored"].startswith("onnx-") and set(R.ROUGE_TYPES) <= set(m)
    assert set(m["baselines"]) == {"lead_1", "longest_turn"}
    assert m["lead_margin"] == pytest.approx(m["rougeL"] - m["baselines"]["lead_1"]["rougeL"], abs=1e-4)
    assert 0 <= m["unsupported_number_rate"] <= 1 and len(m["lowest"]) == min(5, m["n"])
    names = [c["name"] for c in ev["gate"]["checks"]]
    assert {"quality", "lead_margin", "unsupported_numbers"} <= set(names)
    report = open(os.path.join(summarizer["root"], "evaluation", "summarization_report.md")).read()
    assert "lead_1" in report and "Lowest ROUGE-L" in report


def test_predict_writes_text_and_summary(summarizer, tmp_path):
    data = write_jsonl(tmp_path, [{"text": "Customer: Hi, my printer stopped charging.\nAgent: Sorry."}])
    code, _, err = cli("predict", "--model", summarizer["onnx"], "--data", data, "--json", str(tmp_path / "o.json"),
                       "--max-new-tokens", "8")
    assert code == 0, err
    [answer] = json.load(open(tmp_path / "o.json"))
    assert set(answer) == {"text", "summary"} and isinstance(answer["summary"], str)
    code, _, err = cli("predict", "--model", summarizer["model"], "--text", "Customer: my phone is broken.",
                       "--num-beams", "2", "--max-new-tokens", "8")
    assert code == 0, err
    code, _, err = cli("predict", "--model", summarizer["onnx"], "--text", "hello there", "--num-beams", "2")
    assert code == 2
    one_clear_line(err, "--num-beams")
    pairs = write_jsonl(tmp_path, [json.loads(line) for line in open(PAIRS)][:4], "four.jsonl")
    code, out, err = cli("evaluate", "--model", summarizer["onnx"], "--data", pairs, "--json", str(tmp_path / "m.json"))
    assert code == 0, err
    metrics = json.load(open(tmp_path / "m.json"))
    assert metrics["n"] == 4 and "rougeL" in out and "lead_1" in metrics["baselines"]


def test_serve_answers_with_summaries(summarizer):
    from domaintune.components.inference.seq2seq_backend import OnnxSummarizer
    from domaintune.components.serving.models import Source, load_model
    from domaintune.components.serving.tokenizer import JsonTokenizer

    model = load_model(Source.parse(summarizer["onnx"]), "local", 1, 4)
    texts = ["Customer: Hi, my router keeps restarting.\nAgent: Sorry, this is Tom."]
    [answer] = model.answers(model.predict(texts, 4), texts)
    assert set(answer) == {"summary"} and isinstance(answer["summary"], str)
    # the server's tokenizer (tokenizers, no transformers) gives `predict`'s summaries, word for word
    assert isinstance(model.predictor.tokenizer, JsonTokenizer)
    sources = [json.loads(line)["text"] for line in open(PAIRS)][:12]
    assert model.predict(sources, 4) == OnnxSummarizer(summarizer["onnx"]).predict(sources, 4)
    assert model.outputs == [{"name": "summary", "datatype": "BYTES", "shape": [-1], "detail": False}]
    assert model.file == ("model.int8.onnx" if summarizer["export"]["deployable"] == "int8" else "model.onnx")


def test_the_served_summarizer_imports_neither_torch_nor_transformers(summarizer):
    [summary] = ast.literal_eval(served_without_torch(summarizer["onnx"], "Customer: my card was charged twice."))
    assert isinstance(summary, str)


def test_the_servers_tokenizer_decodes_as_transformers_does():
    from transformers import AutoTokenizer

    from domaintune.components.io.base_models import resolve_model
    from domaintune.components.serving.tokenizer import JsonTokenizer, clean_up_spaces

    base = resolve_model("")
    ours, theirs = JsonTokenizer(base), AutoTokenizer.from_pretrained(base)
    texts = ["Refund of $120.50 isn't there, I'm told (order #A-17)!", "Hello, WORLD's café. Naïve—résumé?", ""]
    for ids in theirs(texts)["input_ids"]:
        assert ours.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
        assert ours.decode(ids, skip_special_tokens=False) == theirs.decode(ids)
    sample = "it is n't , he 's here . is it ? they 're ' fine ' !"
    assert clean_up_spaces(sample) == theirs.clean_up_tokenization(sample)
