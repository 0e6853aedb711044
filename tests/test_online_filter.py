"""Online filtering with refill (mmreason.train.online_filter): the groups kept are exactly those whose mean accuracy
lies strictly inside (low, high), the default accuracy leaves the format rewards out, refill rounds reach
prompts_per_step when the stream has the prompts and stop at grpo.filter.max_extra_prompts otherwise, groups of
several rounds become one rollout with the same tokens and log-probs (mmreason.rollout.groups), and a run with the
filter on logs its cost, stores each row's prompt pass rate and resumes exactly like an uninterrupted run."""

from __future__ import annotations

import json
import types
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText
from typer.testing import CliRunner

import mmreason.train.online_filter as online_filter
from mmreason.cli import app
from mmreason.config import ConfigError, DataConfig, GRPOConfig, RunConfig
from mmreason.data.sample import Sample
from mmreason.registry import register_reward
from mmreason.rollout import multiturn
from mmreason.rollout.engine import completion_logprobs, encode_prompts, generate, repeat_prompts
from mmreason.rollout.groups import take_groups
from mmreason.rollout.types import SamplingParams
from mmreason.runs import store
from mmreason.train.online_filter import accuracy_scores, accuracy_weights, draw_batch, passes, refill_size
from mmreason.train.prompt_stats import PromptStats, read_prompt_stats

G = 2
WEIGHTS = {"format_nothink": 0.5, "filter_probe": 1.0}


@register_reward("filter_probe")
def filter_probe(completions: list[str], solution: list, **_: object) -> list[float]:
    """By the record's count: 0 mod 3 always right, 1 mod 3 always wrong, else right on half the completions (by a
    checksum of the text: the same in every process)."""
    table = {0: lambda c: 1.0, 1: lambda c: 0.0, 2: lambda c: float(zlib.crc32(c.encode()) % 2)}
    return [table[int(s) % 3](c) for c, s in zip(completions, solution, strict=True)]


# ------------------------------------------------------------------------------------------------ the rule


@pytest.mark.parametrize(
    "accuracy, low, high, kept",
    [([0.0, 0.0], 0.0, 1.0, False), ([1.0, 1.0], 0.0, 1.0, False), ([1.0, 0.0], 0.0, 1.0, True),
     ([0.25, 0.25], 0.25, 0.75, False), ([0.5, 0.25], 0.25, 0.75, True), ([1.0, 0.5], 0.25, 0.75, False),
     ([1.5, 1.5], 0.0, 1.0, False), ([0.1, 0.2, 0.3], 0.19, 0.21, True)],
)
def test_a_group_is_kept_exactly_when_its_mean_accuracy_is_strictly_inside(accuracy, low, high, kept):
    assert passes(accuracy, low, high) is kept


def test_the_default_accuracy_leaves_the_format_rewards_out():
    assert accuracy_weights({"format": 0.5, "iou": 1.0, "box_f1": 0.5}) == {"iou": 1.0, "box_f1": 0.5}
    assert accuracy_weights({"format_nothink": 0.5}) == {"format_nothink": 0.5}  # nothing else: the format counts
    assert accuracy_weights({"penalty": -1.0}) is None  # no positive weight: the total stands in


def _fake_run(rewards: dict[str, float] = WEIGHTS, ids: int = 12, **filter_keys: object) -> types.SimpleNamespace:
    """A one-process run whose stream yields prompts p0, p1, ... (count k for pk) and whose policy is never used."""
    cfg = RunConfig(data=[DataConfig(task="counting", train="x", rewards=rewards)])
    cfg.grpo = GRPOConfig(group_size=G)
    for key, value in filter_keys.items():
        setattr(cfg.grpo.filter, key, value)
    stream = types.SimpleNamespace(position=0)

    def take(n: int) -> list[tuple[None, Sample]]:
        first, stream.position = stream.position, stream.position + n
        return [(None, Sample(f"p{k % ids}", "counting", [], columns={"solution": k % ids}, meta={"source": "s"}))
                for k in range(first, first + n)]

    stream.take = take
    return types.SimpleNamespace(cfg=cfg, stream=stream, prompt_stats=PromptStats(), world_size=1, sum=float,
                                 gather=list, device=torch.device("cpu"), policy=types.SimpleNamespace(processor=None))


def _roll(samples: list[Sample]) -> tuple[types.SimpleNamespace, dict[str, list], list[float]]:
    """Every completion well formatted (format 1.0), the probe by the prompt's count: p0 mixed, p1 always right,
    p2 always wrong, p3 mixed, ..."""
    probe = []
    for s in samples:
        k = s.columns["solution"] % 3
        probe += [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]][k]
    named = {"format_nothink": [1.0] * len(probe), "filter_probe": probe}
    total = [0.5 * f + p for f, p in zip(named["format_nothink"], probe, strict=True)]
    return types.SimpleNamespace(group_size=G, multi_turn=False, ids=[s.id for s in samples]), named, total


def test_accuracy_scores_by_the_configured_reward():
    run = _fake_run()
    samples = [s for _, s in run.stream.take(3)]
    _, named, total = _roll(samples)
    assert accuracy_scores(run, run.cfg.grpo, samples, named, total, False) == [[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]
    run.cfg.grpo.filter.reward = "total"
    assert accuracy_scores(run, run.cfg.grpo, samples, named, total, False)[2] == [0.5, 0.5]
    run.cfg.grpo.filter.reward = "format_nothink"
    assert accuracy_scores(run, run.cfg.grpo, samples, named, total, False)[0] == [1.0, 1.0]
    run.cfg.grpo.filter.reward = "iou"
    with pytest.raises(ConfigError) as info:
        accuracy_scores(run, run.cfg.grpo, samples, named, total, False)
    assert "\n" not in str(info.value) and "grpo.filter.reward 'iou' is not a reward of task 'counting'" in str(
        info.value)


@pytest.mark.parametrize(
    "need, wanted, drawn, kept, budget, size",
    [(0, 4, 4, 4, 16, 0), (2, 4, 4, 0, 16, 4), (1, 4, 4, 2, 16, 2), (3, 4, 4, 1, 16, 4), (3, 4, 4, 1, 2, 2),
     (1, 4, 8, 7, 16, 2), (2, 4, 4, 4, 0, 0)],
)
def test_refill_draws_the_missing_over_the_kept_share_within_the_budget(need, wanted, drawn, kept, budget, size):
    assert refill_size(need, wanted, drawn, kept, budget) == size


# ------------------------------------------------------------------------------------------------ the refill loop


@pytest.fixture
def taken(monkeypatch) -> list:
    """take_groups, recorded: the parts it was given (the fake rollouts hold no tensors)."""
    calls = []

    def fake(parts, processor, device):
        calls.append([(r.ids, list(groups)) for r, groups in parts])
        return types.SimpleNamespace(group_size=G, multi_turn=False)

    monkeypatch.setattr(online_filter, "take_groups", fake)
    return calls


def test_refill_reaches_prompts_per_step_with_the_kept_groups_only(taken):
    run = _fake_run(enabled=True, max_extra_prompts=16)
    batch = draw_batch(run, run.cfg.grpo, 2, _roll)
    # round 1 draws p0 (kept) and p1 (always right); one is missing at a kept share of 1/2: round 2 draws p2, p3
    assert [s.id for s in batch.samples] == ["p0", "p3"] and batch.keep.tolist() == [True, True]
    assert taken == [[(["p0", "p1"], [0]), (["p2", "p3"], [1])]]
    assert batch.named["filter_probe"] == [1.0, 0.0, 1.0, 0.0] and batch.total == [1.5, 0.5, 1.5, 0.5]
    assert batch.metrics == {"filter/extra_prompts": 2.0, "filter/kept_share": 0.5, "filter/prompts": 2.0,
                             "filter/rounds": 2.0}
    assert len(run.prompt_stats) == 4  # every group drawn is counted, kept or not
    assert run.prompt_stats.pass_rate(("s", "p1")) == 1.0


def test_refill_stops_at_the_extra_prompt_budget_and_trains_on_what_it_has(taken):
    run = _fake_run(enabled=True, max_extra_prompts=2)
    run.stream.position = 1  # p1, p2, p3, p4: only p3 passes
    batch = draw_batch(run, run.cfg.grpo, 2, _roll)
    assert [s.id for s in batch.samples] == ["p3"] and batch.metrics["filter/extra_prompts"] == 2.0
    assert batch.metrics["filter/prompts"] == 1.0 and batch.metrics["filter/rounds"] == 2.0


def test_a_step_none_of_whose_groups_pass_trains_on_nothing(taken):
    run = _fake_run(enabled=True, max_extra_prompts=3)
    run.stream.position = 1
    run.cfg.grpo.filter.low = 0.9  # only groups above 0.9 and below 1: none
    batch = draw_batch(run, run.cfg.grpo, 2, _roll)
    # rounds of 2 (nothing kept yet: a whole batch), 1 (the budget's rest): the cap, exactly
    assert batch.metrics == {"filter/extra_prompts": 3.0, "filter/kept_share": 0.0, "filter/prompts": 0.0,
                             "filter/rounds": 3.0}
    assert [s.id for s in batch.samples] == ["p1", "p2"] and batch.keep.tolist() == [False, False]
    assert batch.rollout.ids == ["p1", "p2"] and taken == []  # the first round as it was


def test_with_the_filter_off_a_step_is_one_draw_and_still_counted(taken):
    run = _fake_run()
    first = draw_batch(run, run.cfg.grpo, 3, _roll)
    assert [s.id for s in first.samples] == ["p0", "p1", "p2"] and first.metrics == {} and taken == []
    assert first.keep.tolist() == [True] * 3 and first.pass_rates == [None] * 3
    run.stream.position = 0
    again = draw_batch(run, run.cfg.grpo, 3, _roll)
    assert again.pass_rates == [0.5, 1.0, 0.0]
    rows = again.with_pass_rates([{} for _ in range(3 * G)])
    assert [r["prompt_pass_rate"] for r in rows] == [0.5, 0.5, 1.0, 1.0, 0.0, 0.0]


# ----------------------------------------------------------------------------------------------- groups as one rollout


@pytest.fixture(scope="module")
def model(tiny_dir):
    return AutoModelForImageTextToText.from_pretrained(tiny_dir).eval()


def _sample(i: int, n_images: int = 1) -> Sample:
    text = "How many shapes are in the image?" + " Count them." * i  # prompts of different lengths: left padding
    content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
    images = [Image.new("RGB", (56 + 28 * i, 56), (40 * i, 90, 200)) for _ in range(n_images)]
    return Sample(f"s{i}", "counting", [{"role": "user", "content": content}], images, columns={"solution": i},
                  meta={"epoch": 0, "position": i})


def _tokens(rollout, b: int) -> list[int]:
    return rollout.completion_ids[b][rollout.completion_mask[b].bool()].tolist()


def test_groups_of_two_rollouts_become_one_with_the_same_tokens_and_logprobs(model, tiny_processor):
    params, cpu = SamplingParams(G, 6, seed=3), torch.device("cpu")
    first = generate(model, tiny_processor, encode_prompts(tiny_processor, [_sample(0), _sample(1, 2)], cpu), params)
    second = generate(model, tiny_processor, encode_prompts(tiny_processor, [_sample(2)], cpu), params)
    both = take_groups([(first, [1]), (second, [0])], tiny_processor, cpu)
    assert [s.id for s in both.prompts.samples] == ["s1", "s2"] and both.texts == first.texts[2:] + second.texts
    assert [_tokens(both, b) for b in range(4)] == [_tokens(r, i) for r, i in ((first, 2), (first, 3), (second, 0),
                                                                               (second, 1))]
    assert both.prompt_lengths == first.prompt_lengths[2:] + second.prompt_lengths
    assert both.truncated.tolist() == first.truncated[2:].tolist() + second.truncated.tolist()

    def logprobs(rollout):
        rows = repeat_prompts(rollout.prompts, G)
        logp, _ = completion_logprobs(model, rows, rollout.completion_ids, rollout.completion_mask, 1.0)
        return [logp[b][rollout.completion_mask[b].bool()] for b in range(logp.shape[0])]

    with torch.no_grad():
        got, a, b = logprobs(both), logprobs(first), logprobs(second)
    for x, y in zip(got, a[2:] + b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


def test_multi_turn_groups_are_laid_out_again_from_their_trajectories(model, tiny_processor):
    params, cpu = SamplingParams(G, 6, seed=3), torch.device("cpu")
    tools = ("zoom_in",)
    first = multiturn.tool_rollout(model, tiny_processor, [_sample(0), _sample(1)], tools, params, cpu, max_turns=1)
    second = multiturn.tool_rollout(model, tiny_processor, [_sample(2)], tools, params, cpu, max_turns=1)
    both = take_groups([(first, [1]), (second, [0])], tiny_processor, cpu)
    assert all(x is y for x, y in zip(both.trajectories, first.trajectories[2:] + second.trajectories, strict=True))
    assert both.texts == first.texts[2:] + second.texts and both.columns["tool_calls"] == [
        t.tool_calls for t in both.trajectories]
    for b, (r, i) in enumerate([(first, 2), (first, 3), (second, 0), (second, 1)]):
        mine, theirs = both.sequences["attention_mask"][b].bool(), r.sequences["attention_mask"][i].bool()
        assert both.sequences["input_ids"][b][mine].tolist() == r.sequences["input_ids"][i][theirs].tolist()


def test_take_groups_refuses_an_empty_selection(tiny_processor):
    with pytest.raises(ValueError, match="no group to take"):
        take_groups([(types.SimpleNamespace(group_size=G), [])], tiny_processor, torch.device("cpu"))


# ----------------------------------------------------------------------------------------------- a run with the filter


@pytest.fixture(scope="module")
def counting_data(tmp_path_factory) -> Path:
    from mmreason.data.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("counting")
    make_synthetic("counting", out, n=24, seed=0)
    return out


def _config(base: Path, data: Path) -> list[str]:
    cfg = {
        "name": "f",
        "output_dir": str(base / "runs"),
        "think": False,
        "stages": ["grpo"],
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [{"task": "counting", "train": str(data / "train.jsonl"), "rewards": WEIGHTS}],
        "grpo": {"steps": 2, "prompts_per_step": 2, "group_size": 3, "max_new_tokens": 6, "save_every": 1,
                 "filter": {"enabled": True, "max_extra_prompts": 16}},
        "eval": {"at_start": False},
    }
    base.mkdir(parents=True, exist_ok=True)
    (base / "cfg.json").write_text(json.dumps(cfg))
    return [str(base / "cfg.json")]


class SimulatedCrash(Exception):
    pass


def _train(args: list[str]) -> str:
    result = CliRunner().invoke(app, ["train", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _metrics(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if m["stage"] == "grpo"]


def test_a_filtered_run_logs_its_cost_and_resumes_exactly(tmp_path, counting_data, monkeypatch):
    import mmreason.train.grpo as grpo

    _train(_config(tmp_path / "a", counting_data))
    a = tmp_path / "a" / "runs" / "f"
    rows = store.read(a, stage="grpo-0")
    groups = rows.groupby(["step", "group_id"])["reward_filter_probe"].mean()
    assert len(groups) == 4 and all(0 < v < 1 for v in groups), groups  # 2 kept groups a step, all inside
    assert {"prompt_pass_rate", "reward_format_nothink"} <= set(rows.columns)
    for m in _metrics(a):
        assert m["filter/prompts"] == 2 and m["groups_kept"] == 1.0 and m["filter/rounds"] >= 1
        assert 0 < m["filter/kept_share"] <= 1 and 0 <= m["filter/extra_prompts"] <= 16
    stats = read_prompt_stats(a)
    drawn = sum(2 + m["filter/extra_prompts"] for m in _metrics(a))
    assert sum(r["draws"] for r in stats.rows()) == drawn  # every group drawn, filtered out or not
    assert "Prompt pass rates" in (a / "report.html").read_text()

    real_periodic = grpo.periodic

    def crash_after_save(run, cfg, stage_index, stage, step, optimizer, scheduler):
        real_periodic(run, cfg, stage_index, stage, step, optimizer, scheduler)
        if step == 1:
            raise SimulatedCrash  # dies right after the step-1 checkpoint, its stream cursor past the refills

    monkeypatch.setattr(grpo, "periodic", crash_after_save)
    with pytest.raises(SimulatedCrash):
        CliRunner().invoke(app, ["train", *_config(tmp_path / "b", counting_data)], catch_exceptions=False)
    monkeypatch.setattr(grpo, "periodic", real_periodic)
    assert "resuming from s00-grpo-step000001" in _train([*_config(tmp_path / "b", counting_data), "--resume"])
    b = tmp_path / "b" / "runs" / "f"
    resumed = store.read(b, stage="grpo-0")
    columns = ["step", "sample_id", "group_id", "completion", "reward_total", "prompt_pass_rate"]
    assert resumed[columns].equals(rows[columns])
    keys = [k for k in _metrics(a)[0] if k.startswith(("filter/", "reward"))]
    assert [[m[k] for k in keys] for m in _metrics(b)] == [[m[k] for k in keys] for m in _metrics(a)]
    assert read_prompt_stats(b).state_dict() == stats.state_dict()
    wa, wb = _final_weights(a), _final_weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = sorted((run_dir / "checkpoints").glob("s00-grpo-step*"))[-1]
    return AutoModelForImageTextToText.from_pretrained(ckpt).state_dict()
