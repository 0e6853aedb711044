"""GRPO maths against cases worked out by hand, plus the properties the trainer relies on."""

from __future__ import annotations

import math

import pytest
import torch

from mmreason.rollout.types import completion_mask_from_ids
from mmreason.train.rl import (
    LOSS_AGGREGATIONS,
    aggregate_loss,
    clipped_surrogate,
    group_advantages,
    grpo_loss,
    k3_kl,
    loss_mask,
    masked_mean,
    token_entropy,
    token_logprobs,
    zero_variance_groups,
)

LN2 = math.log(2.0)


def _logits_1234() -> torch.Tensor:
    # softmax(log([1,2,3,4])) = [0.1, 0.2, 0.3, 0.4]
    return torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0]))


# ---------------------------------------------------------------- log-probs and entropy


def test_token_logprobs_hand_case():
    logits = _logits_1234().expand(1, 3, 4).clone()
    tokens = torch.tensor([[3, 0, 1]])
    # ln 0.4 = -0.916291, ln 0.1 = -2.302585, ln 0.2 = -1.609438
    expected = torch.tensor([[-0.916291, -2.302585, -1.609438]])
    assert torch.allclose(token_logprobs(logits, tokens), expected, atol=1e-5)


def test_token_logprobs_is_stable_and_float32_for_bf16():
    # two equal logits past exp()'s float32 range (e^100 = inf): the answer is still ln(1/2) = -0.693147
    logits = torch.full((2, 1, 2), 100.0, dtype=torch.bfloat16)
    out = token_logprobs(logits, torch.zeros(2, 1, dtype=torch.long))
    assert out.dtype == torch.float32
    assert torch.allclose(out, torch.full((2, 1), -0.693147), atol=1e-5)


def test_token_logprobs_matches_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g)
    tokens = torch.randint(0, 11, (3, 5), generator=g)
    ref = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, tokens), ref, atol=1e-6)


def test_token_logprobs_gradient_flows():
    logits = torch.zeros(1, 1, 2, requires_grad=True)
    token_logprobs(logits, torch.tensor([[0]])).sum().backward()
    # d/dz0 log softmax(z)_0 = 1 - p0 = 0.5; d/dz1 = -p1 = -0.5
    assert torch.allclose(logits.grad, torch.tensor([[[0.5, -0.5]]]))


@pytest.mark.parametrize(
    "logits, expected",
    [
        # uniform over 4: ln 4 = 1.386294
        (torch.zeros(4), 1.386294),
        # p = [.1,.2,.3,.4]: .230259 + .321888 + .361192 + .366516 = 1.279854
        (_logits_1234(), 1.279854),
        # one token with all the mass: 0
        (torch.tensor([100.0, 0.0, 0.0]), 0.0),
    ],
)
def test_token_entropy_hand_cases(logits, expected):
    out = token_entropy(logits.expand(2, 3, -1))
    assert out.shape == (2, 3)
    assert torch.allclose(out, torch.full((2, 3), expected), atol=1e-5)


@pytest.mark.parametrize(
    "call",
    [
        lambda: token_logprobs(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)),
        lambda: token_logprobs(torch.zeros(2, 3, 4), torch.zeros(2, 2, dtype=torch.long)),
        lambda: token_entropy(torch.zeros(2, 3)),
    ],
)
def test_logprob_shape_errors(call):
    with pytest.raises(ValueError, match=r"\[B,T"):
        call()


# ---------------------------------------------------------------- advantages


def test_group_advantages_hand_case():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    # group 1: mean .25, deviations [.75,-.25,-.25,-.25], unbiased var = (.5625 + 3 * .0625) / 3 = .25, std .5
    #   -> .75 / .5001 = 1.49970, -.25 / .5001 = -.49990
    # group 2: mean .5, deviations +-.5, unbiased var = 1 / 3, std .577350 -> .5 / .577450 = .865875
    # group 3: all equal -> 0
    expected = [1.49970, -0.49990, -0.49990, -0.49990, 0.865875, 0.865875, -0.865875, -0.865875, 0, 0, 0, 0]
    assert torch.allclose(group_advantages(rewards, 4), torch.tensor(expected), atol=1e-5)
    # Dr.GRPO: r - mean only
    dr = [0.75, -0.25, -0.25, -0.25, 0.5, 0.5, -0.5, -0.5, 0, 0, 0, 0]
    assert torch.allclose(group_advantages(rewards, 4, scale_std=False), torch.tensor(dr))


@pytest.mark.parametrize("scale_std", [True, False])
@pytest.mark.parametrize("group_size", [2, 3, 8])
def test_group_advantages_sum_to_zero_per_group(scale_std, group_size):
    g = torch.Generator().manual_seed(group_size)
    rewards = torch.rand(5 * group_size, generator=g)
    adv = group_advantages(rewards, group_size, scale_std=scale_std)
    assert torch.allclose(adv.view(5, group_size).sum(1), torch.zeros(5), atol=1e-5)


@pytest.mark.parametrize(
    "rewards, group_size, match",
    [
        (torch.zeros(6), 4, "not a multiple of group_size=4"),
        (torch.zeros(4), 1, "group_size must be >= 2"),
        (torch.zeros(2, 2), 2, "must be 1-D"),
        (torch.tensor([1.0, float("nan")]), 2, "NaN or inf"),
        (torch.tensor([1.0, float("inf")]), 2, "NaN or inf"),
    ],
)
def test_group_advantages_errors(rewards, group_size, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, group_size)


def test_zero_variance_groups():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 0.0])
    assert zero_variance_groups(rewards, 4).tolist() == [False, True, True]
    # a tolerance lets float noise of a weighted sum count as equal
    assert zero_variance_groups(torch.tensor([0.3, 0.3 + 1e-9]), 2, atol=1e-6).tolist() == [True]


# ---------------------------------------------------------------- surrogate, KL, aggregation

EPS_LOW, EPS_HIGH = 0.2, 0.28
# row 0 has A = +1, row 1 has A = -1; logp - old_logp = log(ratio)
RATIOS = torch.tensor([[1.5, 0.5, 1.25], [1.5, 0.5, 0.75]])
ADV = torch.tensor([1.0, -1.0])


def test_clipped_surrogate_hand_case():
    loss, clipped = clipped_surrogate(torch.log(RATIOS), torch.zeros(2, 3), ADV, EPS_LOW, EPS_HIGH)
    # A=+1: r=1.5  -> -min(1.5, 1.28) = -1.28 (clipped high); r=.5 -> -min(.5, .8) = -.5;
    #        r=1.25 -> inside [.8, 1.28] -> -1.25 (would be clipped with a symmetric .2)
    # A=-1: r=1.5  -> -min(-1.5, -1.28) = 1.5; r=.5 -> -min(-.5, -.8) = .8 (clipped low);
    #        r=.75 -> -min(-.75, -.8) = .8 (clipped low)
    expected = torch.tensor([[-1.28, -0.5, -1.25], [1.5, 0.8, 0.8]])
    assert torch.allclose(loss, expected, atol=1e-6)
    assert clipped.tolist() == [[True, False, False], [False, True, True]]


def test_clipped_surrogate_extreme_ratio_stays_finite():
    logp = torch.tensor([[200.0, -200.0]])
    loss, _ = clipped_surrogate(logp, torch.zeros(1, 2), torch.tensor([0.0]), EPS_LOW, EPS_HIGH)
    assert torch.isfinite(loss).all()


def test_clipped_surrogate_errors():
    with pytest.raises(ValueError, match="adv must be"):
        clipped_surrogate(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3), 0.2, 0.2)
    with pytest.raises(ValueError, match="old_logp must have shape"):
        clipped_surrogate(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2), 0.2, 0.2)
    with pytest.raises(ValueError, match=">= 0"):
        clipped_surrogate(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2), -0.1, 0.2)


def test_k3_hand_case():
    logp = torch.zeros(1, 3)
    ref = torch.tensor([[LN2, -LN2, 0.0]])
    # d = ref - logp: d = ln2 -> 2 - .693147 - 1 = .306853; d = -ln2 -> .5 + .693147 - 1 = .193147; d = 0 -> 0
    assert torch.allclose(k3_kl(logp, ref), torch.tensor([[0.306853, 0.193147, 0.0]]), atol=1e-6)


def test_k3_non_negative_and_zero_when_equal():
    g = torch.Generator().manual_seed(1)
    logp, ref = -3 * torch.rand(4, 7, generator=g), -3 * torch.rand(4, 7, generator=g)
    assert (k3_kl(logp, ref) >= 0).all()
    assert torch.equal(k3_kl(logp, logp), torch.zeros(4, 7))


# padding positions hold 100 so that any leak through the mask shows
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
MASK = torch.tensor([[1, 1, 1], [1, 0, 0]])


@pytest.mark.parametrize(
    "mode, max_len, expected",
    [
        ("token_mean", None, 2.5),  # (1 + 2 + 3 + 4) / 4 tokens
        ("seq_mean_token_mean", None, 3.0),  # (6/3 + 4/1) / 2 seqs
        ("seq_mean_token_sum_norm", 4, 1.25),  # (6/4 + 4/4) / 2 seqs
    ],
)
def test_aggregate_loss_hand_cases(mode, max_len, expected):
    assert aggregate_loss(PER_TOKEN, MASK, mode, max_len=max_len).item() == pytest.approx(expected)
    assert aggregate_loss(PER_TOKEN, MASK.bool(), mode, max_len=max_len).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", LOSS_AGGREGATIONS)
def test_aggregate_loss_micro_batches_with_global_denominator_add_up(mode):
    full = aggregate_loss(PER_TOKEN, MASK, mode, max_len=4)
    denom = MASK.sum().item() if mode == "token_mean" else PER_TOKEN.shape[0]
    parts = [aggregate_loss(PER_TOKEN[i : i + 1], MASK[i : i + 1], mode, 4, denominator=denom) for i in range(2)]
    assert (parts[0] + parts[1]).item() == pytest.approx(full.item())


def test_aggregate_loss_errors():
    with pytest.raises(ValueError, match="token_mean, seq_mean_token_mean, seq_mean_token_sum_norm"):
        aggregate_loss(PER_TOKEN, MASK, "sum")
    with pytest.raises(ValueError, match="needs max_len"):
        aggregate_loss(PER_TOKEN, MASK, "seq_mean_token_sum_norm")
    with pytest.raises(ValueError, match="mask must have shape"):
        aggregate_loss(PER_TOKEN, MASK[:, :2], "token_mean")
    with pytest.raises(ValueError, match="denominator must be > 0"):
        aggregate_loss(PER_TOKEN, MASK, "token_mean", denominator=0)


def test_aggregate_loss_empty_mask_is_zero_not_nan():
    for mode in LOSS_AGGREGATIONS:
        assert aggregate_loss(PER_TOKEN, torch.zeros(2, 3), mode, max_len=3).item() == 0.0


# ---------------------------------------------------------------- the full loss


def _random_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    logp = (-3 * torch.rand(4, 6, generator=g)).requires_grad_()
    adv = torch.randn(4, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]]).float()
    return logp, adv, mask


def test_on_policy_gradient_is_minus_advantage_over_tokens():
    logp, adv, mask = _random_batch(2)
    loss, stats = grpo_loss(logp, logp.detach(), adv, mask, eps_low=0.2, eps_high=0.28)
    loss.backward()
    # ratio == 1 everywhere: d loss / d logp = -A_i / num_tokens on completion tokens, 0 on padding
    expected = -adv.unsqueeze(1) * mask / mask.sum()
    assert torch.allclose(logp.grad, expected, atol=1e-7)
    assert loss.item() == pytest.approx((-(adv.unsqueeze(1) * mask).sum() / mask.sum()).item(), abs=1e-6)
    assert stats == pytest.approx({"clip_frac": 0, "clip_low_frac": 0, "clip_high_frac": 0, "ratio_mean": 1, "kl": 0})


def test_on_policy_gradient_seq_mean_token_mean():
    logp, adv, mask = _random_batch(3)
    loss, _ = grpo_loss(logp, logp.detach(), adv, mask, eps_low=0.2, eps_high=0.2, loss_agg="seq_mean_token_mean")
    loss.backward()
    # each sequence weighs 1/B, shared among its own tokens
    expected = -adv.unsqueeze(1) * mask / (mask.sum(1, keepdim=True) * 4)
    assert torch.allclose(logp.grad, expected, atol=1e-7)


def test_grpo_loss_clip_fraction_with_asymmetric_eps():
    mask = torch.tensor([[1, 1, 1], [1, 1, 1]])
    _, stats = grpo_loss(torch.log(RATIOS), torch.zeros(2, 3), ADV, mask, eps_low=EPS_LOW, eps_high=EPS_HIGH)
    # clipped: (A=+1, r=1.5) high; (A=-1, r=.5) and (A=-1, r=.75) low -> 3 of 6 tokens
    assert stats["clip_frac"] == pytest.approx(3 / 6)
    assert stats["clip_high_frac"] == pytest.approx(1 / 6)
    assert stats["clip_low_frac"] == pytest.approx(2 / 6)
    # mean ratio: (1.5 + .5 + 1.25 + 1.5 + .5 + .75) / 6 = 1.0
    assert stats["ratio_mean"] == pytest.approx(1.0)
    # symmetric .2 also clips (A=+1, r=1.25)
    _, sym = grpo_loss(torch.log(RATIOS), torch.zeros(2, 3), ADV, mask, eps_low=0.2, eps_high=0.2)
    assert sym["clip_frac"] == pytest.approx(4 / 6)
    # padding tokens do not count: mask out the last column -> clipped (A=+1,1.5), (A=-1,.5) of 4
    _, padded = grpo_loss(torch.log(RATIOS), torch.zeros(2, 3), ADV, mask * torch.tensor([1, 1, 0]), **_EPS)
    assert padded["clip_frac"] == pytest.approx(2 / 4)


_EPS = {"eps_low": EPS_LOW, "eps_high": EPS_HIGH}


def test_grpo_loss_with_kl_hand_case():
    logp = torch.zeros(2, 2)
    ref = torch.full((2, 2), LN2)
    loss, stats = grpo_loss(logp, logp, torch.tensor([1.0, -1.0]), torch.ones(2, 2), **_EPS, beta=0.1, ref_logp=ref)
    # surrogate: -A per token -> token mean 0; k3 per token .306853 -> loss = 0.1 * .306853
    assert loss.item() == pytest.approx(0.0306853, abs=1e-6)
    assert stats["kl"] == pytest.approx(0.306853, abs=1e-6)


def test_grpo_loss_reports_kl_without_adding_it_when_beta_is_zero():
    logp = torch.zeros(1, 2)
    loss, stats = grpo_loss(logp, logp, torch.tensor([0.0]), torch.ones(1, 2), **_EPS, ref_logp=logp + LN2)
    assert loss.item() == 0.0
    assert stats["kl"] == pytest.approx(0.306853, abs=1e-6)


def test_grpo_loss_errors():
    z = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="needs ref_logp"):
        grpo_loss(z, z, torch.zeros(1), torch.ones(1, 2), **_EPS, beta=0.1)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        grpo_loss(z, z, torch.zeros(1), torch.ones(1, 2), **_EPS, beta=-1.0)


def test_masked_mean():
    assert masked_mean(PER_TOKEN, MASK).item() == pytest.approx(2.5)
    assert masked_mean(PER_TOKEN, torch.zeros(2, 3)).item() == 0.0


# ---------------------------------------------------------------- truncation

EOS, PAD = 2, 0


@pytest.mark.parametrize(
    "tokens, eos, mask, truncated",
    [
        # cut after the first EOS (kept), truncated = no EOS at all
        ([[5, 2, 0], [5, 5, 5], [2, 0, 0]], [2], [[1, 1, 0], [1, 1, 1], [1, 0, 0]], [False, True, False]),
        # a later EOS after the first does not extend the completion
        ([[2, 5, 2]], [2], [[1, 0, 0]], [False]),
        # several EOS ids (e.g. <|im_end|> and <|endoftext|>)
        ([[5, 7, 0], [5, 2, 0]], [2, 7], [[1, 1, 0], [1, 1, 0]], [False, False]),
        # an EOS-free row is wholly kept and truncated
        ([[5, 5]], [2], [[1, 1]], [True]),
    ],
)
def test_completion_mask_from_ids(tokens, eos, mask, truncated):
    got_mask, got_truncated = completion_mask_from_ids(torch.tensor(tokens), eos)
    assert got_mask.tolist() == mask and got_truncated.tolist() == truncated


def test_loss_mask():
    mask = torch.ones(3, 2, dtype=torch.long)
    truncated = torch.tensor([False, True, False])
    keep = torch.tensor([True, True, False])
    assert loss_mask(mask, keep, truncated, True).tolist() == [[1, 1], [0, 0], [0, 0]]
    assert loss_mask(mask, keep, truncated, False).tolist() == [[1, 1], [1, 1], [0, 0]]
    assert loss_mask(mask.bool(), keep, truncated, True).dtype == torch.bool
    with pytest.raises(ValueError, match="truncated must be"):
        loss_mask(mask, keep, torch.tensor([True]), True)
    with pytest.raises(ValueError, match="keep_rows must be"):
        loss_mask(mask, torch.tensor([True]), truncated, True)
