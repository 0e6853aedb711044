"""Reward shapes: mmreason's `fn(completions: list[str], **columns)` and TRL GRPOTrainer's keyword call (strings or
conversational message lists, with `prompts`, `completion_ids`, `trainer_state`) are detected once per function and
called correctly; a reward that raises on its first GRPO call stops the run with one clear line, later failures
are isolated as before.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from mmreason import cli
from mmreason.config import BudgetConfig, ConfigError
from mmreason.data.sample import Sample
from mmreason.registry import REWARDS, RegistryError, register_reward
from mmreason.rollout.scoring import (
    RewardError,
    RewardErrors,
    StepState,
    TrlInputs,
    call_reward,
    reward_shape,
    score_completions,
)

SOLUTIONS = ["3", "5"]
G = 2
COMPLETIONS = ["<answer>3</answer>", "<answer>4</answer>", "<answer>5</answer>", "5"]


def _samples() -> list[Sample]:
    return [
        Sample(
            id=f"s{i}",
            task="counting",
            messages=[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"How many? #{i}"}]}],
            columns={"solution": sol},
        )
        for i, sol in enumerate(SOLUTIONS)
    ]


def _columns() -> dict[str, list]:
    return {"solution": [s for s in SOLUTIONS for _ in range(G)]}


def _prompts() -> list[list[dict]]:
    return [s.messages for s in _samples() for _ in range(G)]


def _answer(text: str) -> str:
    return text.removeprefix("<answer>").removesuffix("</answer>")


def trl_conversational(completions, solution, **kwargs):
    """As written for TRL's GRPOTrainer on conversational data."""
    contents = [c[0]["content"] for c in completions]
    asked = [p[-1]["content"][-1]["text"].startswith("How many") for p in kwargs["prompts"]]
    return [float(_answer(c) == s and a) for c, s, a in zip(contents, solution, asked, strict=True)]


EXPECTED = [1.0, 0.0, 1.0, 1.0]


@pytest.fixture
def registered():
    names: list[str] = []

    def add(name: str, fn, **kwargs) -> str:
        register_reward(name, **kwargs)(fn)
        names.append(name)
        return name

    yield add
    for name in names:
        REWARDS.remove(name)


def test_trl_conversational_reward_gets_message_lists_and_prompts(caplog):
    errors = RewardErrors()
    with caplog.at_level(logging.WARNING, logger="mmreason.rollout.scoring"):
        for _ in range(2):
            scores = call_reward(
                "trl_conv", trl_conversational, COMPLETIONS, _columns(), errors, trl=TrlInputs(_prompts())
            )
            assert scores == EXPECTED
    assert errors.total == 0 and reward_shape(trl_conversational) == "trl_messages"
    detected = [r.getMessage() for r in caplog.records if "TRL-style conversational" in r.getMessage()]
    assert detected == ["reward 'trl_conv' takes TRL-style conversational completions (lists of messages)"]


def test_trl_reward_through_score_completions_and_the_grpo_loop(registered):
    from mmreason.rollout.types import Rollout
    from mmreason.train.grpo import score_mixture

    def trl_positional(prompts, completions, completion_ids, trainer_state, solution, **kwargs):
        assert trainer_state.global_step == 7 and trainer_state.max_steps == 10
        assert completion_ids == [[5, 6], [7], [8, 9], [1]]
        return trl_conversational(completions, solution, prompts=prompts)

    name = registered("trl_positional", trl_positional)
    named, total = score_completions(
        {name: 2.0},
        _samples(),
        COMPLETIONS,
        G,
        RewardErrors(),
        completion_ids=[[5, 6], [7], [8, 9], [1]],
        trainer_state=StepState(7, 10),
    )
    assert named == {name: EXPECTED} and total == [2 * x for x in EXPECTED]

    # the GRPO loop's call: per-task rows, completion ids cut to each row's own tokens
    run = SimpleNamespace(
        cfg=SimpleNamespace(data=[SimpleNamespace(task="counting", rewards={name: 1.0})], strict_rewards=False,
                            budget=BudgetConfig()),
        reward_errors=RewardErrors(),
    )
    rollout = Rollout(
        group_size=G,
        texts=COMPLETIONS,
        completion_mask=torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0]]),
        truncated=torch.zeros(4, dtype=torch.bool),
        prompt_lengths=[3] * 4,
        completion_ids=torch.tensor([[5, 6, 0], [7, 0, 0], [8, 9, 0], [1, 0, 0]]),
    )
    named, total = score_mixture(run, _samples(), rollout, StepState(7, 10))
    assert named == {name: EXPECTED} and total == EXPECTED and run.reward_errors.total == 0


def test_plain_string_reward_is_called_with_strings_and_never_retried():
    calls: list[list] = []

    def plain(completions, solution, **columns):
        calls.append(list(completions))
        return [float(_answer(c) == s) for c, s in zip(completions, solution, strict=True)]

    errors = RewardErrors()
    for _ in range(3):
        assert call_reward("plain", plain, COMPLETIONS, _columns(), errors, trl=TrlInputs(_prompts())) == EXPECTED
    assert calls == [COMPLETIONS] * 3 and reward_shape(plain) == "text"


def test_trl_non_conversational_reward_gets_strings_and_text_prompts():
    seen: dict = {}

    def trl_plain(prompts, completions, solution, **kwargs):
        seen.update(prompts=prompts, keys=sorted(kwargs))
        return [float(_answer(c) == s) for c, s in zip(completions, solution, strict=True)]

    def trl_named_only(completions, solution, trainer_state):  # no **kwargs: only what it names is passed
        assert trainer_state is None
        return [float(_answer(c) == s) for c, s in zip(completions, solution, strict=True)]

    errors = RewardErrors()
    assert call_reward("trl_plain", trl_plain, COMPLETIONS, _columns(), errors, trl=TrlInputs(_prompts())) == EXPECTED
    assert seen["prompts"] == ["How many? #0"] * G + ["How many? #1"] * G
    assert seen["keys"] == ["completion_ids", "log_extra", "log_metric", "trainer_state"]
    assert call_reward("named", trl_named_only, COMPLETIONS, _columns(), errors) == EXPECTED
    assert errors.total == 0 and reward_shape(trl_plain) == reward_shape(trl_named_only) == "trl_text"


def test_a_genuine_bug_is_reported_with_the_original_error_and_retried_at_most_once(caplog):
    calls: list[str] = []

    def buggy(completions, **columns):
        calls.append(type(completions[0]).__name__)
        return [c.score() for c in completions]  # AttributeError on strings and on message lists alike

    errors = RewardErrors()
    with caplog.at_level(logging.WARNING, logger="mmreason.rollout.scoring"):
        for _ in range(3):
            assert call_reward("buggy", buggy, COMPLETIONS, _columns(), errors) == [None] * 4
    assert calls == ["str", "list", "str", "str"], "one retry with message lists, then strings only"
    assert errors.counts == {("buggy", "AttributeError"): 3}
    logged = [r.getMessage() for r in caplog.records if "buggy" in r.getMessage()]
    assert len(logged) == 1 and "'str' object has no attribute 'score'" in logged[0]

    def also_buggy(completions, **columns):
        return [c.score() for c in completions]

    with pytest.raises(RewardError, match=r"without it: AttributeError: 'str' object has no attribute 'score'\."):
        call_reward("also_buggy", also_buggy, COMPLETIONS, _columns(), RewardErrors(), first_call_fatal=True)


def test_a_declared_shape_is_used_without_detection(registered):
    calls: list[str] = []

    def messages_only(completions, **kwargs):
        calls.append(type(completions[0]).__name__)
        return trl_conversational(completions, **kwargs)

    name = registered("declared", messages_only, shape="trl_messages")
    named, _ = score_completions({name: 1.0}, _samples(), COMPLETIONS, G, RewardErrors())
    assert named[name] == EXPECTED and calls == ["list"]
    with pytest.raises(RegistryError, match="shape must be one of text, trl_text, trl_messages"):
        register_reward("bad_shape", shape="chat")


def test_a_reward_that_raises_on_its_first_grpo_call_stops_the_run():
    def always_raises(completions, **kwargs):
        raise ValueError("no scores today")

    errors = RewardErrors()
    # an evaluation's failure (not first_call_fatal) is isolated and does not count as the first GRPO call
    assert call_reward("mine", always_raises, COMPLETIONS, _columns(), errors) == [None] * 4
    with pytest.raises(RewardError) as info:
        call_reward("mine", always_raises, COMPLETIONS, _columns(), errors, first_call_fatal=True)
    message = str(info.value)
    assert isinstance(info.value, ConfigError), "the CLI shows a ConfigError as one line, exit code 2"
    assert message.startswith("reward 'mine' raised on its first call, so no completion got a score")
    assert "ValueError: no scores today." in message
    assert "a list of strings (or TRL-style message lists) and keyword columns: solution" in message
    assert "\n" not in message


def test_a_later_failure_is_isolated_and_a_resumed_process_checks_its_first_call():
    calls = [0]

    def flaky(completions, **kwargs):
        calls[0] += 1
        if calls[0] > 1:
            raise ZeroDivisionError("later")
        return [0.5] * len(completions)

    errors = RewardErrors()
    assert call_reward("flaky", flaky, COMPLETIONS, _columns(), errors, first_call_fatal=True) == [0.5] * 4
    for _ in range(2):
        assert call_reward("flaky", flaky, COMPLETIONS, _columns(), errors, first_call_fatal=True) == [None] * 4
    assert errors.counts == {("flaky", "ZeroDivisionError"): 2}

    resumed = RewardErrors()  # a new process: saved counts come back, the first call is checked again
    resumed.load_state_dict(errors.state_dict())
    with pytest.raises(RewardError, match="reward 'flaky' raised on its first call.*: ZeroDivisionError: later"):
        call_reward("flaky", flaky, COMPLETIONS, _columns(), resumed, first_call_fatal=True)


def test_trls_own_reward_function_runs_unchanged():
    rewards = pytest.importorskip("trl.rewards")
    completions = ["<think>\nwhy\n</think>\n<answer>3</answer>", "<answer>3</answer>"]
    errors = RewardErrors()
    scores = call_reward("think_format", rewards.think_format_reward, completions, {}, errors)
    assert scores == [1.0, 0.0] and errors.total == 0


# --- end to end: `mmreason train` with a user reward file --------------------------------------------------------

REWARD_FILE = """
def trl_style(prompts, completions, solution, completion_ids, trainer_state, **kwargs):
    contents = [c[0]["content"] for c in completions]
    ok = [p[-1]["role"] == "user" and isinstance(t, str) and all(isinstance(i, int) for i in ids)
          for p, t, ids in zip(prompts, contents, completion_ids, strict=True)]
    return [float(o and trainer_state.global_step >= 0 and len(solution) == len(ok)) for o in ok]


def always_raises(completions, **kwargs):
    raise RuntimeError("the judge is offline")
"""


@pytest.fixture(scope="module")
def counting_data(tmp_path_factory) -> Path:
    from mmreason.data.synthetic import make_synthetic

    return make_synthetic("counting", tmp_path_factory.mktemp("counting"), n=8, seed=0)


def _train_config(tmp_path: Path, data: Path, reward: str) -> tuple[Path, str]:
    path = tmp_path / "my_rewards.py"
    path.write_text(REWARD_FILE)
    spec = f"{path}:{reward}"
    cfg = {
        "name": "t",
        "output_dir": str(tmp_path / "runs"),
        "think": False,
        "stages": ["grpo"],
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [
            {"task": "counting", "train": str(data / "train.jsonl"), "rewards": {"format_nothink": 0.5, spec: 1.0}}
        ],
        "grpo": {"steps": 1, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 4},
        "eval": {"at_start": False},
    }
    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps(cfg))
    return config, spec


def _grpo_metrics(tmp_path: Path) -> list[dict]:
    path = tmp_path / "runs" / "t" / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []
    return [r for r in rows if r["stage"] == "grpo"]


def test_train_scores_a_trl_style_user_reward(tmp_path, counting_data):
    config, spec = _train_config(tmp_path, counting_data, "trl_style")
    result = CliRunner().invoke(cli.app, ["train", str(config)])
    assert result.exit_code == 0 and result.exception is None, result.output
    (grpo,) = _grpo_metrics(tmp_path)
    assert grpo[f"reward/{spec}_mean"] == 1.0 and grpo.get("reward_errors", 0.0) == 0.0


def test_train_stops_with_one_line_when_a_user_reward_always_raises(tmp_path, counting_data, monkeypatch, capsys):
    config, spec = _train_config(tmp_path, counting_data, "always_raises")
    monkeypatch.setattr(sys, "argv", ["mmreason", "train", str(config)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 2
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in out, out
    assert f"error: reward {spec!r} raised on its first call" in lines[0]
    assert "RuntimeError: the judge is offline. A reward must take completions" in lines[0]
    assert _grpo_metrics(tmp_path) == [], "no step was trained without the reward"
