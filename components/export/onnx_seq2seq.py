"""A seq2seq model as two ONNX graphs, the way Optimum exports encoder-decoder models (`encoder_model.onnx`,
`decoder_model.onnx`), here without past key values (acceptable for one-line summaries; the greedy loop in
inference/seq2seq_backend.py reruns the decoder on the prefix):

- `<stem>.onnx`, the encoder: input_ids, attention_mask [batch, source] -> encoder_hidden_states
  [batch, source, hidden];
- `<stem>.decoder.onnx`, the decoder with the LM head: decoder_input_ids [batch, target],
  encoder_hidden_states, encoder_attention_mask -> logits of the next token [batch, vocab] (only the last
  position: all greedy decoding needs, and a vocabulary-wide tensor per position less to copy each step).

The stem is the export stage's file name (`model.onnx`, `model.int8.onnx`), so the stage, the export
directory's layout and `resolve_model_file` stay what they are for every task. Same exporter settings as
onnx_build.py (legacy TorchScript exporter, opset 17, eager attention) and the same dynamic int8 per file.
"""
from __future__ import annotations

import os
import warnings

from domaintune.components.export.onnx_build import OPSET, quantize_onnx
from domaintune.components.inference.seq2seq_backend import decoder_file


def _modules(model):
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = model.get_encoder()

        def forward(self, input_ids, attention_mask):
            return self.encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, decoder_input_ids, encoder_hidden_states, encoder_attention_mask):
            out = self.model(encoder_outputs=(encoder_hidden_states,), attention_mask=encoder_attention_mask,
                             decoder_input_ids=decoder_input_ids, use_cache=False, return_dict=True)
            return out.logits[:, -1, :]

    return Encoder().eval(), Decoder().eval()


def export_pair(model_dir: str, path: str) -> list[str]:
    """Encoder at `path`, decoder beside it; the dummy batch is padded so the mask path is traced, and its
    decoder prefix has several positions so the causal mask is built for a dynamic length."""
    import torch
    from transformers import AutoTokenizer

    from domaintune.components.tasks.seq2seq_model import SharedSeq2Seq, plain_greedy

    model = SharedSeq2Seq.from_pretrained(model_dir, attn_implementation="eager", dtype=torch.float32).eval()
    plain_greedy(model)
    model.generation_config.save_pretrained(os.path.dirname(os.path.abspath(path)))  # start/end/pad, max_new_tokens
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dummy = tokenizer(["a short one", "a somewhat longer example sentence, with padding in the other"],
                      padding=True, return_tensors="pt")
    encoder, decoder = _modules(model)
    start = model.config.decoder_start_token_id
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(encoder, (dummy["input_ids"], dummy["attention_mask"]), path,
                          input_names=["input_ids", "attention_mask"], output_names=["encoder_hidden_states"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "source"}, "attention_mask": {0: "batch", 1: "source"},
                                        "encoder_hidden_states": {0: "batch", 1: "source"}},
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
        hidden = encoder(dummy["input_ids"], dummy["attention_mask"])
        prefix = torch.tensor([[start, 1000, 1001], [start, 1002, 1003]], dtype=torch.long)
        torch.onnx.export(decoder, (prefix, hidden, dummy["attention_mask"]), decoder_file(path),
                          input_names=["decoder_input_ids", "encoder_hidden_states", "encoder_attention_mask"],
                          output_names=["logits"],
                          dynamic_axes={"decoder_input_ids": {0: "batch", 1: "target"},
                                        "encoder_hidden_states": {0: "batch", 1: "source"},
                                        "encoder_attention_mask": {0: "batch", 1: "source"}, "logits": {0: "batch"}},
                          opset_version=OPSET, dynamo=False, do_constant_folding=True)
    return ["input_ids", "attention_mask"]


def quantize_pair(src: str, dst: str, *, per_channel: bool, reduce_range: bool) -> dict:
    """Dynamic int8 of both graphs (the same settings as the classifiers')."""
    report = quantize_onnx(src, dst, per_channel=per_channel, reduce_range=reduce_range)
    decoder = quantize_onnx(decoder_file(src), decoder_file(dst), per_channel=per_channel, reduce_range=reduce_range)
    return {**report, "files": [os.path.basename(dst), os.path.basename(decoder_file(dst))],
            "quantized_operators": {"encoder": report["quantized_operators"], "decoder": decoder["quantized_operators"]}}


def pair_files(path: str) -> list[str]:
    return [path, decoder_file(path)]
