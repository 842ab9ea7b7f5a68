"""Models of the seq2seq task: any `AutoModelForSeq2SeqLM` checkpoint (T5, BART, ...), or, from an encoder-only
checkpoint such as the packaged MiniLM, a BERT2BERT `EncoderDecoderModel` warm-started from it with the
encoder's weights shared by the decoder (Rothe, Narayan & Severyn 2020, "Leveraging Pre-trained Checkpoints
for Sequence Generation Tasks": BERT2BERT-share matches the unshared model with about half the parameters).

transformers 5 dropped `tie_encoder_decoder`, so the sharing is done here: every decoder parameter with a
counterpart of the same name and shape in the encoder (embeddings, self-attention, feed-forward) becomes that
very parameter; the cross-attention stays the decoder's own. The shared names are declared as tied weights
(saved once) and written into the config (`domaintune_shared`), and `SharedSeq2Seq.from_pretrained` ties them
again after loading, so every stage that loads the model sees the shared one.
"""
from __future__ import annotations

import json
import os

from domaintune.components.core.errors import BadInput

SHARED_KEY = "domaintune_shared"  # config attribute: {decoder parameter name: encoder parameter name}


def source_prefix(config) -> str:
    """What goes before every source text: the checkpoint's own summarization prefix (T5 ships
    "summarize: " in task_specific_params), "summarize: " for any T5-family model, else nothing.
    CONFIG: a transformers config or the dict of its config.json."""
    get = config.get if isinstance(config, dict) else (lambda key: getattr(config, key, None))
    specific = (get("task_specific_params") or {}).get("summarization") or {}
    if specific.get("prefix"):
        return str(specific["prefix"])
    return "summarize: " if (get("model_type") or "") in {"t5", "mt5", "umt5", "longt5"} else ""


def prefix_of(model_dir: str) -> str:
    """The source prefix of a saved model, read from its config.json as JSON: predictors in the server never
    import transformers."""
    path = os.path.join(model_dir, "config.json") if model_dir else ""
    if not path or not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8") as f:
        return source_prefix(json.load(f))


def share_encoder_weights(model) -> dict[str, str]:
    """Make the decoder use the encoder's parameters wherever the names and shapes match (BERT2BERT-share);
    returns {decoder name: encoder name} as model-level keys, declared as tied so save_pretrained writes each once."""
    encoder = dict(model.encoder.named_parameters())
    inner_name, inner = next(((n, m) for n, m in model.decoder.named_children()
                              if type(m).__name__ == type(model.encoder).__name__), (None, None))
    if inner is None:
        return {}
    shared = {}
    for module_name, module in inner.named_modules():
        for param_name, param in list(module.named_parameters(recurse=False)):
            key = f"{module_name}.{param_name}" if module_name else param_name
            if key in encoder and encoder[key].shape == param.shape:
                setattr(module, param_name, encoder[key])
                shared[f"decoder.{inner_name}.{key}"] = f"encoder.{key}"
    # the LM head's projection is tied to the decoder's input embeddings, which are now the encoder's
    output, embeddings = model.decoder.get_output_embeddings(), model.decoder.get_input_embeddings()
    if output is not None and output.weight.shape == embeddings.weight.shape:
        output.weight = embeddings.weight
    model._tied_weights_keys = {**(getattr(model, "_tied_weights_keys", None) or {}), **shared}
    setattr(model.config, SHARED_KEY, shared)
    return shared


def retie(model):
    """Re-share what `share_encoder_weights` shared (the names come from the saved config)."""
    shared = getattr(model.config, SHARED_KEY, None) or {}
    if shared:
        share_encoder_weights(model)
    return model


class SharedSeq2Seq:
    """The loader every stage uses for this task (`auto_model_class`): AutoModelForSeq2SeqLM plus the re-tie."""

    @staticmethod
    def from_pretrained(path, **kwargs):
        import logging

        from transformers import AutoModelForSeq2SeqLM

        hf_logger = logging.getLogger("transformers.modeling_utils")
        level = hf_logger.level
        hf_logger.setLevel(logging.ERROR)  # the shared decoder weights are "missing" in the file by design
        try:
            return retie(AutoModelForSeq2SeqLM.from_pretrained(path, **kwargs))
        finally:
            hf_logger.setLevel(level)


def warm_started(model_dir: str):
    """BERT2BERT-share from an encoder checkpoint: [CLS] starts decoding, [SEP] ends it, [PAD] pads."""
    from transformers import AutoTokenizer, EncoderDecoderModel

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(model_dir, model_dir)
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if start is None or end is None or tokenizer.pad_token_id is None:
        raise BadInput(f"--base-model {model_dir}: its tokenizer has no start ([CLS]/bos), end ([SEP]/eos) or pad "
                       "token to decode with")
    model.config.decoder_start_token_id = start
    model.config.eos_token_id = end
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.vocab_size = model.config.decoder.vocab_size
    share_encoder_weights(model)
    return model


def build_seq2seq(model_dir: str):
    """A seq2seq checkpoint as it is, or BERT2BERT-share warm-started from an encoder checkpoint."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir)
        model = SharedSeq2Seq.from_pretrained(model_dir) if config.is_encoder_decoder else warm_started(model_dir)
    except (OSError, ValueError) as exc:
        raise BadInput(f"--base-model {model_dir}: cannot load as a seq2seq model or an encoder to warm-start one "
                       f"({str(exc).splitlines()[0]})") from None
    plain_greedy(model)
    return model


def plain_greedy(model) -> None:
    """Generation settings that make `generate(num_beams=1)` plain greedy decoding, the same algorithm the
    onnxruntime decoder runs (inference/seq2seq_backend.py): no forced tokens, no repetition rules, no minimum."""
    g = model.generation_config
    g.decoder_start_token_id = model.config.decoder_start_token_id
    g.eos_token_id = model.config.eos_token_id
    g.pad_token_id = model.config.pad_token_id
    # max_length too: the stages bound generation by max_new_tokens, and a saved max_length (transformers' default
    # 20) beside it makes every generate() call warn
    for name in ("max_length", "min_length", "no_repeat_ngram_size", "forced_bos_token_id", "forced_eos_token_id",
                 "repetition_penalty", "length_penalty", "early_stopping"):
        if hasattr(g, name):
            setattr(g, name, None)
    g.num_beams, g.do_sample = 1, False
