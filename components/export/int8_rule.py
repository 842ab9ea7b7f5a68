"""Which int8 ships: the one int8 rule (`gate.int8_acceptable`) applied to the all-int8 deployable, then, for a
deployable of several graphs (seq2seq: encoder + decoder), to the same deployable with only some graphs int8.

Why per file: quantization error is not spread evenly over the graphs. An encoder-decoder's decoder runs once per
generated token, so it is most of the generation time, and its int8 error compounds over the steps; the encoder
runs once. When the all-int8 pair loses more than `max_int8_drop`, a pair with one graph int8 and the other
fp32 can pass and still keep most of the speed-up, where the pair-or-nothing rule would ship fp32 outright.
Candidates are tried in the task's order (`Task.int8_subsets`, most useful first) and the first that passes
ships; each costs one evaluation on the test split, so the common case (all-int8 passes) costs nothing extra.
"""
from __future__ import annotations

import os

from domaintune.components.evaluation.gate import int8_acceptable


def choose_deployable(task, metrics: dict, max_int8_drop: float) -> tuple[str, float, str]:
    """(deployable, int8 quality drop, reason) by the one int8 rule on the metrics of the int8 ONNX."""
    q = task.quality_metric
    torch_q, int8_q = metrics["pytorch_fp32"][q], metrics["onnx_int8"][q]
    drop = torch_q - int8_q
    if int8_acceptable(drop, max_int8_drop):
        return "int8", drop, f"int8 {q} drop {drop * 100:.2f} points <= max_int8_drop {max_int8_drop * 100:.2f} points"
    return "fp32", drop, (f"int8 {q} {int8_q:.4f} is {drop * 100:.2f} points below PyTorch fp32 {torch_q:.4f} "
                          f"(max_int8_drop {max_int8_drop * 100:.2f} points): the fp32 ONNX ships")


def mixed_files(task, fp32_path: str, int8_path: str, dst: str, int8_parts: tuple[str, ...]) -> None:
    """The deployable at stem `dst` with the graphs named in `int8_parts` from the int8 files and the others from
    the fp32 ones (hard links where the file system allows: the graphs are tens of MB)."""
    names = task.onnx_parts
    for name, f32, i8, out in zip(names, task.onnx_files(fp32_path), task.onnx_files(int8_path), task.onnx_files(dst)):
        src = i8 if name in int8_parts else f32
        try:
            os.link(src, out)
        except OSError:
            import shutil

            shutil.copyfile(src, out)


def per_file_int8(task, built: dict, test, labels, metrics: dict, max_int8_drop: float) -> list[dict]:
    """After the all-int8 deployable failed the rule: try the task's partial-int8 subsets in order. The first
    that passes replaces the int8 files (and built's int8 outputs, and metrics["onnx_int8"]); returns what was
    tried, each {int8_files, <quality metric>, drop, accepted}."""
    q, fp32_path, int8_path = task.quality_metric, built["fp32_path"], built["int8_path"]
    stem, tried = os.path.join(os.path.dirname(int8_path), "candidate.int8.onnx"), []
    for parts in task.int8_subsets:
        mixed_files(task, fp32_path, int8_path, stem, parts)
        outputs = task.onnx_outputs_of(stem, test)
        candidate = task.deployable_metrics(outputs, test, labels)
        drop = metrics["pytorch_fp32"][q] - candidate[q]
        accepted = int8_acceptable(drop, max_int8_drop)
        tried.append({"int8_files": list(parts), q: candidate[q], "drop": drop, "accepted": accepted})
        if accepted:
            for src, dst in zip(task.onnx_files(stem), task.onnx_files(int8_path)):
                os.remove(dst)  # first: rename() onto a hard link of the same file does nothing
                os.rename(src, dst)
            built["logits"]["onnx_int8"], metrics["onnx_int8"] = outputs, candidate
            return tried
        for path in task.onnx_files(stem):
            os.remove(path)
    return tried


def decide_int8(task, built: dict, test, labels, metrics: dict, max_int8_drop: float) -> dict:
    """{deployable, drop, reason, int8_files, per_file}: the all-int8 deployable if it passes the rule, else the
    first partial-int8 one that does (its files replace the int8 files), else fp32."""
    deployable, drop, reason = choose_deployable(task, metrics, max_int8_drop)
    all_parts = list(task.onnx_parts)
    if deployable == "int8":
        return {"deployable": "int8", "drop": drop, "reason": reason, "int8_files": all_parts, "per_file": []}
    tried = per_file_int8(task, built, test, labels, metrics, max_int8_drop)
    passed = tried[-1] if tried and tried[-1]["accepted"] else None  # the search stops at the first that passes
    if passed is None:
        return {"deployable": "fp32", "drop": drop, "reason": reason, "int8_files": [], "per_file": tried}
    fp32_parts = [n for n in all_parts if n not in passed["int8_files"]]
    return {"deployable": "int8", "drop": passed["drop"], "per_file": tried, "int8_files": passed["int8_files"],
            "reason": (f"all-int8 {task.quality_metric} drop {drop * 100:.2f} points > max_int8_drop "
                       f"{max_int8_drop * 100:.2f}; int8 {'+'.join(passed['int8_files'])} with fp32 "
                       f"{'+'.join(fp32_parts)}: drop {passed['drop'] * 100:.2f} points, ships")}
