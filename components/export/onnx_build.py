"""Building the ONNX files: the legacy TorchScript export with dynamic axes, optional onnxruntime transformer
fusions, dynamic int8 quantization, and PyTorch reference logits in the batches the checks use."""
from __future__ import annotations

import os
import warnings

from domaintune.components.core.errors import BadInput
from domaintune.components.inference.torch_backend import model_input_names, torch_logits  # noqa: F401 (re-exported)

OPSET = 17
EVAL_BATCH_SIZE = 32


def load_torch_model(model_dir: str, attn_implementation: str | None = None):
    import torch
    from transformers import AutoTokenizer

    from domaintune.components.tasks import task_of

    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise BadInput(f"{model_dir}: not a model directory (no config.json)")
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = task_of(model_dir).auto_model_class().from_pretrained(model_dir, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as exc:
        raise BadInput(f"{model_dir}: cannot load the model or its tokenizer ({str(exc).splitlines()[0]})") from None
    return model.eval(), tokenizer


def model_labels(model) -> list[str]:
    id2label = model.config.id2label
    return [str(id2label[i]) for i in range(len(id2label))]


def _logits_module(model, names: list[str]):
    """The HF model with positional inputs and one output, `logits`, for the tracer."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *args):
            return self.model(**dict(zip(names, args)), return_dict=True).logits

    return LogitsOnly().eval()


def export_onnx(model_dir: str, path: str, outputs: dict | None = None) -> list[str]:
    """Legacy (TorchScript) export at opset 17, dynamic batch and sequence axes, output `logits`.

    The model is loaded with eager attention for the trace: its MatMul/Softmax pattern is the one
    onnxruntime's attention fusion recognises. The dummy batch has padding so the mask path is traced.
    """
    import torch

    model, tokenizer = load_torch_model(model_dir, attn_implementation="eager")
    names = model_input_names(model, tokenizer)
    dummy = tokenizer(["a short one", "a somewhat longer example sentence, with padding in the other"],
                      padding=True, return_tensors="pt")
    args = tuple(dummy[n] if n in dummy else torch.zeros_like(dummy["input_ids"]) for n in names)
    outputs = outputs or {"logits": {0: "batch"}}  # the task's output names and dynamic axes
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update(outputs)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(_logits_module(model, names), args, path, input_names=names, output_names=list(outputs),
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return names


def optimize_onnx(src: str, dst: str, config) -> dict:
    """onnxruntime's transformer fusions, written as a portable graph (opt_level 0: Python fusions only,
    nothing specific to this CPU; the session applies its level-ALL rewrites at load time)."""
    from onnxruntime.transformers.optimizer import optimize_model

    num_heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 0) or 0
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", 0) or 0
    optimized = optimize_model(src, model_type="bert", num_heads=num_heads, hidden_size=hidden, opt_level=0)
    optimized.save_model_to_file(dst)
    stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    return {"model_type": "bert", "num_heads": num_heads, "hidden_size": hidden, "fused_operators": stats}


def quantize_onnx(src: str, dst: str, *, per_channel: bool, reduce_range: bool) -> dict:
    """Dynamic int8: weights int8 (symmetric), activations uint8 quantized per batch at run time."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quant_logger = logging.getLogger()
    level = quant_logger.level
    quant_logger.setLevel(logging.ERROR)  # "consider pre-processing" warning: not applicable to dynamic mode here
    try:
        # onnx's shape inference cannot type the outputs of the fused com.microsoft ops; every activation
        # in this graph is float32, so that is the type to assume for the MatMuls that consume them.
        quantize_dynamic(src, dst, per_channel=per_channel, reduce_range=reduce_range, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        quant_logger.setLevel(level)
    ops: dict[str, int] = {}
    for node in onnx.load(dst, load_external_data=False).graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    quantized = {k: v for k, v in ops.items() if k in {"QAttention", "DynamicQuantizeMatMul", "MatMulInteger",
                                                      "QEmbedLayerNormalization", "DynamicQuantizeLinear",
                                                      "DequantizeLinear", "QGemm"}}
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weight_type": "QInt8 (symmetric)",
            "activation_type": "QUInt8 (dynamic, per tensor)", "per_channel": per_channel,
            "reduce_range": reduce_range, "quantized_operators": quantized}
