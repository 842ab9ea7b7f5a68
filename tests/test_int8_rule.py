"""The int8 rule per file (export/int8_rule.py) on a fake two-graph task: the files hold their precision as text,
and the fake scores a deployable by which of its graphs are int8, so every branch of the choice is exercised."""
import os

import pytest

from domaintune.components.export.int8_rule import decide_int8


class TwoGraphTask:
    quality_metric = "rougeL"

    def __init__(self, loss_of):
        self.loss_of = loss_of  # {graph name: quality lost when that graph is int8}

    onnx_parts = ("encoder", "decoder")
    int8_subsets = (("decoder",), ("encoder",))

    def onnx_files(self, path):
        return [path, path[: -len(".onnx")] + ".decoder.onnx"]

    def onnx_outputs_of(self, path, test):
        return {name: open(f).read() for name, f in zip(self.onnx_parts, self.onnx_files(path))}

    def deployable_metrics(self, outputs, test, labels):
        return {"rougeL": 0.5 - sum(self.loss_of[name] for name, kind in outputs.items() if kind == "int8"), "n": 1}


def built_in(tmp_path, task):
    paths = {}
    for kind, stem in (("fp32", "model.onnx"), ("int8", "model.int8.onnx")):
        paths[kind] = str(tmp_path / stem)
        for f in task.onnx_files(paths[kind]):
            open(f, "w").write(kind)
    metrics = {"pytorch_fp32": {"rougeL": 0.5}, "onnx_int8": task.deployable_metrics(
        task.onnx_outputs_of(paths["int8"], None), None, [])}
    built = {"fp32_path": paths["fp32"], "int8_path": paths["int8"], "logits": {"onnx_int8": None}}
    return built, metrics


def contents(task, path):
    return [open(f).read() for f in task.onnx_files(path)]


def test_all_int8_ships_when_it_passes_and_nothing_else_is_tried(tmp_path):
    task = TwoGraphTask({"encoder": 0.002, "decoder": 0.004})
    built, metrics = built_in(tmp_path, task)
    d = decide_int8(task, built, None, [], metrics, 0.01)
    assert d["deployable"] == "int8" and d["int8_files"] == ["encoder", "decoder"] and d["per_file"] == []
    assert contents(task, built["int8_path"]) == ["int8", "int8"]


def test_a_decoder_only_int8_ships_when_the_pair_fails_and_it_passes(tmp_path):
    task = TwoGraphTask({"encoder": 0.009, "decoder": 0.006})  # pair drops 1.5 points, decoder alone 0.6
    built, metrics = built_in(tmp_path, task)
    d = decide_int8(task, built, None, [], metrics, 0.01)
    assert d["deployable"] == "int8" and d["int8_files"] == ["decoder"]
    assert d["drop"] == pytest.approx(0.006) and "drop 0.60 points, ships" in d["reason"]
    assert [t["accepted"] for t in d["per_file"]] == [True]
    assert contents(task, built["int8_path"]) == ["fp32", "int8"]  # the int8 stem now holds the mixed pair
    assert metrics["onnx_int8"]["rougeL"] == pytest.approx(0.494) and built["logits"]["onnx_int8"]["decoder"] == "int8"
    assert sorted(os.listdir(tmp_path)) == ["model.decoder.onnx", "model.int8.decoder.onnx", "model.int8.onnx",
                                            "model.onnx"]  # no candidate left behind


def test_fp32_ships_when_no_subset_passes_and_the_int8_files_stay_as_they_were(tmp_path):
    task = TwoGraphTask({"encoder": 0.02, "decoder": 0.03})
    built, metrics = built_in(tmp_path, task)
    d = decide_int8(task, built, None, [], metrics, 0.01)
    assert d["deployable"] == "fp32" and d["int8_files"] == [] and d["drop"] == pytest.approx(0.05)
    assert [(t["int8_files"], t["accepted"]) for t in d["per_file"]] == [(["decoder"], False), (["encoder"], False)]
    assert contents(task, built["int8_path"]) == ["int8", "int8"] and len(os.listdir(tmp_path)) == 4
