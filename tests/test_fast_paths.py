"""The fast paths (`mmreason.models.fast_paths`) compute what the stock modules compute: the patch embedding as a
matrix product, grouped-query attention under masks; on their own and inside every family's tiny model, values and
gradients alike."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from family_models import FAMILIES, load, samples
from mmreason.processors import build_inputs, collate
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from mmreason.models import fast_paths
from mmreason.models.fast_paths import GROUPED_SDPA, MatmulPatchConv3d, apply_fast_paths, grouped_sdpa


def test_patch_conv_is_a_matrix_product_on_one_kernel_inputs():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(3, 8, kernel_size=(2, 4, 4), stride=(2, 4, 4), bias=True)
    fast = copy.deepcopy(conv)
    assert apply_fast_paths(fast) == 1 and isinstance(fast, MatmulPatchConv3d)
    assert isinstance(fast, torch.nn.Conv3d) and fast.state_dict().keys() == conv.state_dict().keys()
    x = torch.randn(50, 3, 2, 4, 4, requires_grad=True)
    torch.testing.assert_close(fast(x), conv(x), atol=1e-5, rtol=1e-5)
    (conv(x) ** 2).sum().backward()
    grads = (x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone())
    x.grad = None
    (fast(x) ** 2).sum().backward()
    for a, b in zip((x.grad, fast.weight.grad, fast.bias.grad), grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    bigger = torch.randn(2, 3, 4, 8, 8)  # several kernels per input: the convolution itself
    torch.testing.assert_close(fast(bigger), conv(bigger))


@pytest.mark.parametrize(
    "conv",
    [
        torch.nn.Conv3d(3, 8, kernel_size=3, stride=1),  # overlapping kernels
        torch.nn.Conv3d(3, 8, kernel_size=2, stride=2, padding=1),
        torch.nn.Conv3d(4, 8, kernel_size=2, stride=2, groups=2),
        torch.nn.Conv2d(3, 8, kernel_size=4, stride=4),
    ],
)
def test_other_convolutions_are_left_alone(conv):
    assert apply_fast_paths(conv) == 0 and type(conv) in (torch.nn.Conv3d, torch.nn.Conv2d)


def _causal(n_queries: int, n_keys: int) -> torch.Tensor:
    """[Q, K] causal, the queries being the last Q keys."""
    return torch.ones(n_queries, n_keys, dtype=torch.bool).tril(n_keys - n_queries)


class _Attn(torch.nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.num_key_value_groups, self.is_causal = groups, True


@pytest.mark.parametrize("groups", [2, 4])
@pytest.mark.parametrize("kind", ["causal_padded", "random", "bidirectional", "additive"])
def test_grouped_sdpa_equals_sdpa(groups, kind):
    """Values and gradients of queries [B, H, Q, D] on a cached prefix, against transformers' sdpa forward."""
    torch.manual_seed(1)
    b, heads, q, k, d = 3, 4, 37, 60, 8
    mask = _causal(q, k).expand(b, 1, q, k).clone()
    if kind == "causal_padded":
        mask[0, ..., :9] = False  # left padding of the cached prompt
        mask[2, ..., 40:] = False  # right padding of the continuation (keys only)
    elif kind == "random":
        mask = torch.rand(b, 1, q, k) > 0.3
    elif kind == "bidirectional":
        mask[:] = True
    else:
        mask = torch.where(mask, torch.randn(mask.shape), torch.finfo(torch.float32).min)
    query = torch.randn(b, heads, q, d, requires_grad=True)
    key = torch.randn(b, heads // groups, k, d, requires_grad=True)
    value = torch.randn(b, heads // groups, k, d, requires_grad=True)
    module = _Attn(groups)
    results = []
    for fn in (sdpa_attention_forward, grouped_sdpa):
        out, _ = fn(module, query, key, value, mask, scaling=0.3)
        grads = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum(), (query, key, value))
        results.append((out, grads))
    (ref, ref_grads), (got, got_grads) = results
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    for a, r in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, r, atol=1e-6, rtol=1e-5)


def test_grouped_sdpa_hands_other_calls_to_sdpa(monkeypatch):
    calls = []
    monkeypatch.setattr(fast_paths, "sdpa_attention_forward", lambda *a, **k: calls.append(k) or ("stock", None))
    q, kv = torch.randn(1, 4, 20, 8), torch.randn(1, 2, 22, 8)
    mask = _causal(20, 22)[None, None]
    assert grouped_sdpa(_Attn(2), q[:, :, :1], kv, kv, mask[..., :1, :])[0] == "stock"  # decoding
    assert grouped_sdpa(_Attn(2), q, kv, kv, None)[0] == "stock"  # no mask: transformers groups them itself
    assert grouped_sdpa(_Attn(1), q, q, q, mask[..., :20])[0] == "stock"  # no groups
    assert len(calls) == 3
    assert grouped_sdpa(_Attn(2), q, kv, kv, mask)[0].shape == (1, 20, 4, 8)


def _batch(arch, processor):
    rows = [build_inputs(processor, s.messages, images=s.images) for s in samples(arch)]
    return collate(rows, pad_id=processor.tokenizer.pad_token_id, side="left")


@pytest.mark.parametrize("arch", FAMILIES)
def test_every_family_scores_alike_with_fast_paths(arch, tiny_root):
    """A padded two-prompt forward of the family's tiny model: the same logits and gradients with the fast paths;
    the grouped attention is the language model's only, and never written to a saved config."""
    model, processor = load(arch, tiny_root)
    fast = copy.deepcopy(model)
    assert apply_fast_paths(fast) >= 1
    impls = {getattr(getattr(m, "config", None), "_attn_implementation", None) for m in fast.modules()}
    assert GROUPED_SDPA in impls
    assert fast.config._attn_implementation == model.config._attn_implementation
    batch = _batch(arch, processor)
    outs = []
    for m in (model, fast):
        m.zero_grad()
        logits = m(**batch, use_cache=False).logits
        (logits.float().log_softmax(-1)[..., :50] * batch["attention_mask"][..., None]).mean().backward()
        outs.append((logits.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    (ref, ref_grads), (got, got_grads) = outs
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert got_grads.keys() == ref_grads.keys()
    worst = max(((got_grads[n] - g).norm() / g.norm().clamp_min(1e-12)).item() for n, g in ref_grads.items())
    # relative L2 difference of each parameter's gradient: about 1e-6, except Qwen3.5, whose gated delta rule
    # amplifies the patch embedding's float rounding to 1.5e-4 (as large as a change of summation order anywhere)
    assert worst < 5e-4, worst


def test_saved_model_loads_with_stock_attention(tiny_root, tmp_path):
    model, _ = load("qwen2_5_vl", tiny_root)
    apply_fast_paths(model)
    model.save_pretrained(tmp_path)
    assert GROUPED_SDPA not in json.dumps(json.loads((tmp_path / "config.json").read_text()))


@pytest.mark.parametrize("on", [True, False])
def test_model_fast_paths_switch(on, tiny_root):
    from family_models import saved

    from mmreason.config import ModelConfig
    from mmreason.models.fast_paths import uses_fast_paths
    from mmreason.models.policy import build_policy

    policy = build_policy(ModelConfig(name=str(saved("qwen3_vl", tiny_root)), fast_paths=on), device="cpu")
    assert uses_fast_paths(policy.model) is on
