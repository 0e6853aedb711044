"""Reward integrity: an answer that is not a valid answer of its task earns nothing (no partial credit for an order
that is not a permutation, a box or segment outside the image or video, a letter past the options, a hedge); a
group of equal rewards gets advantages of exactly 0; the old-policy and reference log-probs of a GRPO update are
computed as the loss's forward is (dropout off), so the first ratio is exactly 1 even with dropout configured; and
the share of zero-spread groups per task is logged and drawn in the report."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from mmreason.config import GRPOConfig, LoraConfig, ModelConfig, RunConfig
from mmreason.data.sample import Sample
from mmreason.registry import get_reward
from mmreason.train.rl import group_advantages, zero_variance_groups

# ------------------------------------------------------------------------------------------------ invalid answers

GROUNDING = {"image_size": [200, 100], "model_size": [100, 50], "coord_family": "qwen2_5_vl"}
GT = [[20, 20, 100, 60]]  # original pixels; [10, 10, 50, 30] in the 100x50 model frame (IoU of the whole image 0.16)
PARIS = {"lat": 48.8566, "lon": 2.3522, "country": "France", "region": "Île-de-France", "city": "Paris"}
OPTIONS = ["red", "green", "blue", "yellow"]


def _answer(text: str) -> str:
    return f"<think>t</think><answer>{text}</answer>"


def _scores(reward: str, text: str, **columns) -> float:
    return get_reward(reward)([_answer(text)], **{k: [v] for k, v in columns.items()})[0]


INVALID = [
    # jigsaw: not a permutation of 1..n -> 0 on both rewards (was 0.75 fraction credit for [1, 1, 3, 4])
    *(("jigsaw_exact", t, {"solution": [1, 2, 3, 4]}) for t in ("[1, 1, 3, 4]", "[1, 2, 3, 5]", "[0, 1, 2, 3]")),
    *(("jigsaw_fraction", t, {"solution": [1, 2, 3, 4]})
      for t in ("[1, 1, 3, 4]", "[1, 2, 3, 5]", "[0, 1, 2, 3]", "[1, 2, 3]", "[1, 2, 3, 4, 4]", "[4, 4, 4, 4]")),
    # grounding: a coordinate outside the model's frame is not clipped into a box
    *((r, t, {"solution": GT, **GROUNDING}) for r in ("iou", "box_f1")
      for t in ("[-1, 10, 50, 30]", "[10, 10, 101, 30]", "[10, 10, 50, 51]", "[-1e9, -1e9, 1e9, 1e9]",
                "[[10, 10, 50, 30], [0, 0, 100, 60]]")),
    *((r, "(100,200),(1001,600)", {"solution": GT, **GROUNDING, "coord_family": "qwen2_vl"})
      for r in ("iou", "box_f1")),
    ("iou", "[0, 0, 100, 50]", {"solution": GT, **GROUNDING}),  # the whole image: the hedge is the baseline
    # multiple choice: a letter past the options, and lists of letters, name nothing
    *(("choice_match", t, {"solution": "A", "options": OPTIONS}) for t in ("E", "Z", "(E)", "A, B", "A or B",
                                                                            "(A)(B)(C)(D)", "A/B", "A and C")),
    *(("choice_match", t, {"solution": "A"}) for t in ("A, B, C, D", "(A) or (B)", "A; B")),
    # temporal: a segment past the video's end is not clipped into the video; the whole video is the baseline
    *(("tiou", t, {"solution": [10, 20], "duration": 30.0}) for t in ("5, 50", "25, 99999", "40, 45", "0, 30")),
    # geolocation: coordinates out of range
    *(("geo_distance", t, {"solution": PARIS}) for t in ('{"lat": 95, "lon": 2.35}', '{"lat": 48.85, "lon": 200}',
                                                           "95, 200")),
    # counting and math: hedges between several values
    *(("count_match", t, {"solution": 3}) for t in ("2 or 3", "3, 4", "-3", "3 4 5", "3.5")),
    *(("math_verify", t, {"solution": "2"}) for t in ("1, 2", "\\{1, 2\\}", "1 or 2", "[0, 100]")),
]


@pytest.mark.parametrize("reward, text, columns", INVALID, ids=lambda v: v if isinstance(v, str) else "")
def test_an_invalid_answer_earns_nothing(reward, text, columns):
    assert _scores(reward, text, **columns) == 0.0


def test_valid_answers_still_earn_their_credit():
    assert _scores("jigsaw_fraction", "[1, 2, 4, 3]", solution=[1, 2, 3, 4]) == 0.5
    assert _scores("iou", "[10, 10, 50, 30]", solution=GT, **GROUNDING) == 1.0
    assert _scores("iou", "[0, 0, 100, 50]", solution=[[0, 0, 200, 100]], **GROUNDING) == 1.0  # the object fills it
    assert _scores("iou", "[30, 10, 70, 30]", solution=GT, **GROUNDING) == pytest.approx((1 / 3 - 0.16) / 0.84)
    assert _scores("choice_match", "(A) red", solution="A", options=OPTIONS) == 1.0
    assert _scores("choice_match", "A, the red one", solution="A", options=OPTIONS) == 1.0
    assert _scores("tiou", "10, 20", solution=[10, 20], duration=30.0) == 1.0
    assert _scores("tiou", "10, 30.04", solution=[10, 20], duration=30.0) == pytest.approx((0.5 - 1 / 3) / (2 / 3))
    assert _scores("count_match", "3 (three)", solution=3) == 1.0


def test_duplicate_and_extra_boxes_never_pay():
    box, other = "[10, 10, 50, 30]", "[0, 0, 5, 5]"
    # one-to-one matching: a duplicate is a false positive; matches / max(#pred, #gt) makes every extra box cost
    assert _scores("box_f1", f"[{box}, {box}]", solution=GT, **GROUNDING) == 0.5
    assert _scores("box_f1", "[" + ", ".join([box] * 100) + "]", solution=GT, **GROUNDING) == pytest.approx(1 / 100)
    assert _scores("box_f1", f"[{box}, {other}]", solution=GT, **GROUNDING) == 0.5
    assert _scores("box_f1", f"[{box}, {other}]", solution=[*GT, [0, 0, 10, 10]], **GROUNDING) == 1.0  # two objects
    assert _scores("iou", "[" + ", ".join([box] * 3) + "]", solution=GT, **GROUNDING) == 1.0  # the first box counts
    # the metric keeps the usual F1
    from mmreason.rewards.grounding import plain_box_f1

    cols = {"solution": [GT], **{k: [v] for k, v in GROUNDING.items()}}
    assert plain_box_f1([_answer(f"[{box}, {other}]")], **cols) == [pytest.approx(2 / 3)]


def test_spraying_boxes_is_no_better_bet_than_one_box():
    from mmreason.rewards.grounding import f1_at_iou, strict_f1_at_iou

    # one object; k guesses of which one hits: the usual F1 pays 2/(k+1) for the hit, so k guesses with a 1/20
    # chance each earn about 2k/(k+1) times one guess; matches / max(#pred, #gt) pays 1/k, never more than one guess
    truth, hit, miss = [[0, 0, 10, 10]], [0, 0, 10, 10], [50, 50, 60, 60]
    for k in (2, 5, 12):
        guesses = [hit] + [miss] * (k - 1)
        assert f1_at_iou(guesses, truth) == pytest.approx(2 / (k + 1)) and k * 2 / (k + 1) > 1
        assert strict_f1_at_iou(guesses, truth) == pytest.approx(1 / k)


def test_three_place_names_have_one_tier_each():
    # "City, Region, Country": two cities cannot hedge for one (Paris in the region slot names no region)
    assert _scores("geo_hierarchy", "Paris, Ile-de-France, France", solution=PARIS) == 1.0
    assert _scores("geo_hierarchy", "Lyon, Paris, France", solution=PARIS) == 0.5
    assert _scores("geo_hierarchy", "Paris, Lyon, France", solution=PARIS) == pytest.approx(0.7)


def test_metrics_report_the_plain_overlap():
    from mmreason.rewards.grounding import plain_iou
    from mmreason.rewards.temporal import plain_tiou

    whole = [_answer("[0, 0, 100, 50]")]
    assert plain_iou(whole, solution=[GT], **{k: [v] for k, v in GROUNDING.items()}) == [pytest.approx(0.16)]
    assert plain_tiou([_answer("0, 30")], solution=[[10, 20]], duration=[30.0]) == [pytest.approx(1 / 3)]


# ------------------------------------------------------------------------------------------------ advantages

VALUES = (0.7, 2.2, 1.7, 0.1, 0.35, 1.0, 0.0, 1.5, -0.3, 1e-8)
EQUAL_GROUPS = [(value, g) for value in VALUES for g in (2, 3, 8, 12, 16)]


@pytest.mark.parametrize("value, g", EQUAL_GROUPS)
@pytest.mark.parametrize("scale_std", [True, False])
def test_a_group_of_equal_rewards_gets_exactly_zero(value, g, scale_std):
    # float32 rounding of the mean used to leave up to 2.4e-3 (2.2 x 12, std-scaled) on such groups
    rewards = torch.full((g,), value, dtype=torch.float32)
    mixed = torch.cat([rewards, torch.linspace(0.0, 1.0, g)])
    adv = group_advantages(mixed, g, scale_std=scale_std)
    assert adv.dtype == torch.float32
    assert torch.equal(adv[:g], torch.zeros(g))
    assert adv[g:].abs().sum() > 0  # the varied group still gets its signal
    assert zero_variance_groups(mixed, g).tolist() == [True, False]


def test_other_groups_are_unchanged_by_the_exact_zeros():
    rewards = torch.tensor([0.0, 1.0, 0.5, 0.5, 0.2, 0.2, 0.2, 0.9])
    adv = group_advantages(rewards, 2)
    expected = (torch.tensor([-0.5, 0.5]) / (torch.tensor([0.0, 1.0]).std() + 1e-4)).tolist()
    assert adv[:2].tolist() == pytest.approx(expected)
    assert adv[2:6].tolist() == [0.0] * 4
    assert adv[6] < 0 < adv[7]


# ------------------------------------------------------------------------------------------------ dropout and ratios

G = 3


def _samples() -> list[Sample]:
    def msg(text: str) -> list[dict]:
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]

    return [
        Sample("a", "counting", msg("How many shapes are in the image?"), [Image.new("RGB", (56, 56), (200, 30, 30))]),
        Sample("b", "counting", msg("How many?"), [Image.new("RGB", (84, 56), (30, 30, 200))]),
    ]


@functools.cache
def _processor():
    from mmreason.models.tiny import build_processor, build_tokenizer

    return build_processor(build_tokenizer())


def _policy_with_dropout(lora: bool):
    """The tiny Qwen2.5-VL with attention dropout 0.5 in its config (and LoRA adapters with dropout 0.5)."""
    from mmreason.models.family import family_module
    from mmreason.models.policy import Policy, apply_lora
    from mmreason.models.tiny import build_config

    processor = _processor()
    tokenizer = processor.tokenizer
    config = build_config(tokenizer)
    config.text_config.attention_dropout = 0.5
    torch.manual_seed(0)
    model = family_module("qwen2_5_vl").tiny_model(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if lora:
        model = apply_lora(model, ModelConfig(lora=LoraConfig(enabled=True, r=4, dropout=0.5)))
    return Policy.wrap(model, processor, "tiny")


def _dropout_rates(model) -> list[float]:
    from mmreason.models.policy import unwrap_model

    rates = []
    for module in unwrap_model(model).modules():
        if isinstance(module, torch.nn.Dropout):
            rates.append(module.p)
        rates.extend(v for k, v in vars(module).items() if "dropout" in k and isinstance(v, float))
    return rates


def _first_loss_inputs(monkeypatch, policy, plan_path: str, disable: bool):
    """Run one update (2 iterations, KL on) and return the first grpo_loss call's (logp, old_logp, ref_logp, stats)."""
    from mmreason.models.policy import Reference
    from mmreason.rollout.engine import encode_prompts, generate
    from mmreason.rollout.types import SamplingParams
    from mmreason.runs.run import Run
    from mmreason.train import grpo

    batch = encode_prompts(policy.processor, _samples(), torch.device("cpu"))
    torch.manual_seed(0)
    rollout = generate(policy.model, policy.processor, batch, SamplingParams(G, 5, temperature=1.0))
    calls = []

    def recording(logp, old_logp, adv, mask, **kw):
        loss, stats = real(logp, old_logp, adv, mask, **kw)
        calls.append((logp.detach().clone(), old_logp.clone(), kw["ref_logp"].clone(), stats))
        return loss, stats

    real = grpo.grpo_loss
    monkeypatch.setattr(grpo, "grpo_loss", recording)
    if not disable:  # the control: the forwards as they would run with dropout on
        monkeypatch.setattr(grpo, "dropout_off", lambda model: __import__("contextlib").nullcontext())
    cfg = GRPOConfig(num_iterations=2, beta=0.1, lr=0.01, max_new_tokens=5, group_size=G)
    adv = torch.linspace(-1.0, 1.0, 2 * G)
    mask = grpo.loss_mask_for(rollout, torch.ones(2 * G, dtype=torch.bool), mask_truncated=False)
    optimizer = torch.optim.SGD(policy.trainable_parameters(), lr=cfg.lr)
    reference = Reference(policy, cfg.beta)
    plan = grpo.ScoringPlan(plan_path, plan_path)
    run = Run.local(policy, RunConfig())
    _, applied = grpo.update_policy(run, optimizer, reference, rollout, adv, mask, cfg, plan)
    assert applied == [True, True] and len(calls) == 2
    return calls[0]


@pytest.mark.parametrize("lora", [False, True], ids=["attention-dropout", "lora-dropout"])
@pytest.mark.parametrize("path", ["shared_prefix", "repeated_prompt"])
def test_first_ratio_is_exactly_one_with_dropout_configured(monkeypatch, lora, path):
    policy = _policy_with_dropout(lora)
    before = _dropout_rates(policy.model)
    assert before and max(before) == 0.5  # dropout really is configured ...
    logp, old_logp, ref_logp, stats = _first_loss_inputs(monkeypatch, policy, path, disable=True)
    # ... and off in every forward of the update: old policy, reference and loss agree bit for bit
    assert torch.equal(logp, old_logp) and torch.equal(logp, ref_logp)
    assert stats["ratio_mean"] == 1.0 and stats["clip_frac"] == 0.0 and stats["kl"] == 0.0
    assert _dropout_rates(policy.model) == before  # restored after the update (a later SFT stage keeps it)
    assert policy.model.training


@pytest.mark.parametrize("lora", [False, True], ids=["attention-dropout", "lora-dropout"])
def test_with_dropout_on_the_first_ratio_would_be_noise(monkeypatch, lora):
    policy = _policy_with_dropout(lora)
    logp, old_logp, _, _ = _first_loss_inputs(monkeypatch, policy, "repeated_prompt", disable=False)
    assert not torch.equal(logp, old_logp)  # what the test above guards against


def test_dropout_off_covers_both_kinds_and_restores():
    from mmreason.train.grpo import dropout_off

    policy = _policy_with_dropout(lora=True)
    config = copy.deepcopy(policy.model.config.to_dict())
    before = _dropout_rates(policy.model)
    with dropout_off(policy.model):
        assert set(_dropout_rates(policy.model)) == {0.0}
    assert _dropout_rates(policy.model) == before and policy.model.config.to_dict() == config


# ------------------------------------------------------------------------------------------------ zero spread per task


def _row(task: str, group: int, total: float, step: int = 1) -> dict:
    return {"task": task, "group_id": group, "reward_total": total, "stage": "grpo-0", "step": step}


def test_zero_variance_share_per_task():
    from mmreason.train.grpo import zero_variance_shares

    rows = [
        *(_row("counting", 0, t) for t in (1.5, 1.5, 1.5)),  # all right: no signal
        *(_row("counting", 1, t) for t in (0.5, 1.5, 0.5)),
        *(_row("grounding", 2, t) for t in (0.7, 0.7, 0.7)),
        *(_row("counting", 3, t) for t in (0.0, 0.0, 0.0)),  # all wrong: no signal
    ]
    assert zero_variance_shares(rows) == {"zero_var_groups/counting": 2 / 3, "zero_var_groups/grounding": 1.0}
    assert zero_variance_shares([]) == {}


def _view(metrics: pd.DataFrame, rollouts: pd.DataFrame):
    from mmreason.runs.inspection import RunView

    return RunView(run_dir=Path("."), config=RunConfig(), info={}, metrics=metrics, rollouts=rollouts)


def test_report_draws_the_zero_spread_share_per_task():
    from mmreason.runs.report import zero_spread_by_task, zero_spread_table

    metrics = pd.DataFrame([
        {"stage": "grpo", "step": s, "stage_index": 0, "zero_var_groups/counting": z, "zero_var_groups/jigsaw": 1.0}
        for s, z in ((1, 0.25), (2, 0.5), (3, 1.0))
    ])
    table = zero_spread_table(_view(metrics, pd.DataFrame()))
    counting = table[table["task"] == "counting"]
    assert counting["share"].tolist() == [0.25, 0.5, 1.0] and set(table["task"]) == {"counting", "jigsaw"}
    fig = zero_spread_by_task(_view(metrics, pd.DataFrame()))
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["counting", "jigsaw"]


def test_report_computes_the_share_from_the_store_for_older_runs():
    from mmreason.runs.report import _curves_section, zero_spread_table

    rows = [*(_row("counting", 0, t) for t in (1.0, 1.0)), *(_row("counting", 1, t) for t in (0.0, 1.0)),
            *(_row("math", 2, t, step=2) for t in (0.5, 0.5))]
    rollouts = pd.DataFrame([{**r, "sample_id": f"s{r['group_id']}"} for r in rows])
    metrics = pd.DataFrame([{"stage": "grpo", "step": 1, "stage_index": 0, "loss": 0.1}])
    table = zero_spread_table(_view(metrics, rollouts))
    got = {(r.task, r.step): r.share for r in table.itertuples()}
    assert got == {("counting", 1): 0.5, ("math", 2): 1.0}
    html = _curves_section(_view(metrics, rollouts))
    assert "zero-spread groups" in html and "zero-spread groups per task unavailable" not in html
    assert not math.isnan(table["share"].sum())
