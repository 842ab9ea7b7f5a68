"""The cheaper CPU dropout is still dropout: rate, scaling, gradient, eval mode, and which modules it replaces."""
import pytest
import torch

from domaintune.components.training.dropout import CheapCpuDropout, use_cheap_cpu_dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drops_at_rate_p_and_rescales_the_rest(p):
    torch.manual_seed(0)
    layer = CheapCpuDropout(p).train()
    x = torch.full((1_000_003,), 2.0)  # not a multiple of 4: the last random word is only partly used
    y = layer(x)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / x.numel()) ** 0.5  # within 5 standard errors
    assert torch.allclose(y[y != 0], torch.tensor(2.0 / (1 - p)))


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(1)
    x = torch.randn(64, 7, 33, dtype=torch.bfloat16, requires_grad=True)
    y = CheapCpuDropout(0.2).train()(x)
    y.float().sum().backward()
    kept = y != 0
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept].float(), torch.tensor(1 / 0.8), rtol=1e-2)


def test_identity_in_eval_mode_and_fresh_masks_per_call():
    layer = CheapCpuDropout(0.3)
    x = torch.randn(4, 100)
    assert torch.equal(layer.eval()(x), x)
    layer.train()
    assert not torch.equal(layer(x) == 0, layer(x) == 0)


def test_switches_a_bert_models_dropout_modules_and_keeps_its_outputs_in_eval():
    from transformers import AutoModelForSequenceClassification

    from domaintune.components.io.base_models import resolve_model

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(resolve_model("all-MiniLM-L6-v2"), num_labels=2).eval()
    ids = torch.tensor([[101, 7592, 2088, 102]])
    before = model(input_ids=ids).logits
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_cheap_cpu_dropout(model) == sum(1 for m in model.modules() if isinstance(m, torch.nn.Dropout)) > 10
    assert all(type(m) is CheapCpuDropout for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert torch.equal(model(input_ids=ids).logits, before)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    model.train()
    assert not torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)  # dropout is active
