"""Every config value is checked before anything is built: one out-of-range value per numeric field of the schema
(the table covers every int and float field, and `RANGES` names each), NaN and infinity in every float field, the
names, paths and key pairs; malformed overrides, YAML tags and alias bombs. Each failure is one ConfigError line of
a few hundred characters at most."""

from __future__ import annotations

import dataclasses
import json
import time
import types
import typing
from pathlib import Path

import pytest

from mmreason import config_ranges
from mmreason.config import ConfigError, DataConfig, RunConfig, load_config
from mmreason.config_ranges import RANGES

# (override, the message's start): one bad value per numeric field, in schema order
BAD_VALUES = [
    ("seed=-1", "seed must be in [0, 4294967295] (numpy and torch take a 32-bit seed), got -1"),
    ("keep_checkpoints=0", "keep_checkpoints must be >= 1 (the latest checkpoint is what --resume continues from)"),
    ("model.min_pixels=0", "model.min_pixels must be >= 1, got 0"),
    ("model.max_pixels=-784", "model.max_pixels must be >= 1, got -784"),
    ("model.max_prompt_tokens=-1", "model.max_prompt_tokens must be >= 0 (0: derived from the model's context"),
    ("model.max_vision_tokens=-1", "model.max_vision_tokens must be >= 0"),
    ("model.max_images=-2", "model.max_images must be >= 0"),
    ("model.max_target_tokens=-3", "model.max_target_tokens must be >= 0"),
    ("model.lora.r=0", "model.lora.r must be >= 1, got 0"),
    ("model.lora.alpha=0", "model.lora.alpha must be > 0, got 0"),
    ("model.lora.dropout=1.0", "model.lora.dropout must be in [0, 1), got 1.0"),
    ("model.tiny.hidden_size=0", "model.tiny.hidden_size must be >= 8, got 0"),
    ("model.tiny.layers=0", "model.tiny.layers must be >= 1, got 0"),
    ("model.tiny.vision_depth=-1", "model.tiny.vision_depth must be >= 1, got -1"),
    ("data.0.weight=0", "data[0].weight must be > 0, got 0.0"),
    ("data.0.max_val=0", "data[0].max_val must be >= 1, got 0"),
    ("schedule.prior=1.5", "schedule.prior must be in [0, 1] (a difficulty: 0 easiest, 1 hardest), got 1.5"),
    ("schedule.start=-0.1", "schedule.start must be in [0, 1] (a difficulty: 0 easiest, 1 hardest), got -0.1"),
    ("schedule.end=2", "schedule.end must be in [0, 1] (a difficulty: 0 easiest, 1 hardest), got 2.0"),
    ("schedule.width=-1", "schedule.width must be >= 0 (0: the target alone), got -1.0"),
    ("schedule.floor=1.01", "schedule.floor must be in [0, 1] (the least weight, relative to a prompt on target)"),
    ("sft.steps=-5", "sft.steps must be >= 1 (leave the stage out of `stages` to skip it), got -5"),
    ("sft.batch_size=0", "sft.batch_size must be >= 1, got 0"),
    ("sft.grad_accum=0", "sft.grad_accum must be >= 1 (micro-batches per update), got 0"),
    ("sft.lr=-1e-4", "sft.lr must be > 0, got -0.0001"),
    ("sft.weight_decay=-0.1", "sft.weight_decay must be >= 0, got -0.1"),
    ("sft.warmup_ratio=1.5", "sft.warmup_ratio must be in [0, 1], got 1.5"),
    ("sft.max_grad_norm=0", "sft.max_grad_norm must be > 0, got 0.0"),
    ("sft.eval_every=-1", "sft.eval_every must be >= 0 (0: only at the end of the stage), got -1"),
    ("sft.save_every=-1", "sft.save_every must be >= 0 (0: only at the end of the stage), got -1"),
    ("sft.stop_at.at_least=.nan", "sft.stop_at.at_least must be a finite number, got nan"),
    ("sft.stop_at.at_most=inf", "sft.stop_at.at_most must be a finite number, got inf"),
    ("sft.max_bad_updates=0", "sft.max_bad_updates must be >= 1, got 0"),
    ("grpo.steps=-1", "grpo.steps must be >= 1 (leave the stage out of `stages` to skip it), got -1"),
    ("grpo.prompts_per_step=0", "grpo.prompts_per_step must be >= 1, got 0"),
    ("grpo.group_size=1", "grpo.group_size must be >= 2 (advantages are relative to the group), got 1"),
    ("grpo.temperature=0", "grpo.temperature must be > 0 (sampling divides the logits by it), got 0.0"),
    ("grpo.top_p=0", "grpo.top_p must be in (0, 1], got 0.0"),
    ("grpo.max_new_tokens=0", "grpo.max_new_tokens must be >= 1, got 0"),
    ("grpo.lr=nan", "grpo.lr must be > 0, got nan"),
    ("grpo.weight_decay=-1", "grpo.weight_decay must be >= 0, got -1.0"),
    ("grpo.warmup_ratio=-0.1", "grpo.warmup_ratio must be in [0, 1], got -0.1"),
    ("grpo.max_grad_norm=-1", "grpo.max_grad_norm must be > 0, got -1.0"),
    ("grpo.num_iterations=0", "grpo.num_iterations must be >= 1 (updates per rollout batch), got 0"),
    ("grpo.eps_low=1.5", "grpo.eps_low must be in [0, 1) (the ratio is clipped below at 1 - eps_low), got 1.5"),
    ("grpo.eps_high=-0.1", "grpo.eps_high must be >= 0, got -0.1"),
    ("grpo.beta=-0.01", "grpo.beta must be >= 0 (0: no KL term), got -0.01"),
    ("grpo.eval_every=-2", "grpo.eval_every must be >= 0"),
    ("grpo.save_every=-3", "grpo.save_every must be >= 0"),
    ("grpo.stop_at.at_least=.nan", "grpo.stop_at.at_least must be a finite number, got nan"),
    ("grpo.stop_at.at_most=inf", "grpo.stop_at.at_most must be a finite number, got inf"),
    ("grpo.max_bad_updates=0", "grpo.max_bad_updates must be >= 1, got 0"),
    ("grpo.filter.low=.nan", "grpo.filter.low must be a finite number, got nan"),
    ("grpo.filter.high=-.inf", "grpo.filter.high must be a finite number, got -inf"),
    ("grpo.filter.max_extra_prompts=-1", "grpo.filter.max_extra_prompts must be >= 0 (0: no refill), got -1"),
    ("grpo.vllm.gpu_memory_utilization=0", "grpo.vllm.gpu_memory_utilization must be in (0, 1], got 0.0"),
    ("grpo.vllm.max_model_len=0", "grpo.vllm.max_model_len must be >= 1, got 0"),
    ("grpo.vllm.max_images=0", "grpo.vllm.max_images must be >= 1, got 0"),
    ("grpo.vllm.importance_cap=-1", "grpo.vllm.importance_cap must be >= 0 (0: no correction), got -1.0"),
    ("grpo.tools.max_turns=0", "grpo.tools.max_turns must be >= 1, got 0"),
    ("grpo.tools.max_pixels=0", "grpo.tools.max_pixels must be >= 1, got 0"),
    ("rejection_sft.steps=0", "rejection_sft.steps must be >= 1 (leave the stage out of `stages` to skip it), got 0"),
    ("rejection_sft.prompts_per_step=0", "rejection_sft.prompts_per_step must be >= 1, got 0"),
    ("rejection_sft.samples_per_prompt=0", "rejection_sft.samples_per_prompt must be >= 1, got 0"),
    ("rejection_sft.min_reward=.nan", "rejection_sft.min_reward must be a finite number (or null: each task's best"),
    ("rejection_sft.temperature=0", "rejection_sft.temperature must be > 0 (sampling divides the logits by it)"),
    ("rejection_sft.top_p=1.5", "rejection_sft.top_p must be in (0, 1], got 1.5"),
    ("rejection_sft.max_new_tokens=0", "rejection_sft.max_new_tokens must be >= 1, got 0"),
    ("rejection_sft.batch_size=0", "rejection_sft.batch_size must be >= 1, got 0"),
    ("rejection_sft.lr=0", "rejection_sft.lr must be > 0, got 0.0"),
    ("rejection_sft.weight_decay=-1", "rejection_sft.weight_decay must be >= 0, got -1.0"),
    ("rejection_sft.warmup_ratio=2", "rejection_sft.warmup_ratio must be in [0, 1], got 2.0"),
    ("rejection_sft.max_grad_norm=0", "rejection_sft.max_grad_norm must be > 0, got 0.0"),
    ("rejection_sft.eval_every=-1", "rejection_sft.eval_every must be >= 0 (0: only at the end of the stage)"),
    ("rejection_sft.save_every=-1", "rejection_sft.save_every must be >= 0 (0: only at the end of the stage)"),
    ("rejection_sft.stop_at.at_least=.nan", "rejection_sft.stop_at.at_least must be a finite number, got nan"),
    ("rejection_sft.stop_at.at_most=inf", "rejection_sft.stop_at.at_most must be a finite number, got inf"),
    ("rejection_sft.max_bad_updates=0", "rejection_sft.max_bad_updates must be >= 1, got 0"),
    ("budget.length_weight=.nan", "budget.length_weight must be a finite number, got nan"),
    ("budget.difficulty_weight=.inf", "budget.difficulty_weight must be a finite number, got inf"),
    ("eval.max_new_tokens=0", "eval.max_new_tokens must be >= 1, got 0"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1, got 0"),
]

# names, paths and keys that must agree
BAD_OTHERS = [
    ("name=a/b", "name must be one folder name"),
    ("name=..", "name must be one folder name"),
    ("name=.hidden", "name must be one folder name"),
    ("output_dir=", "output_dir is empty"),
    ("device=gpu 0", "device must be auto, cpu, cuda or cuda:N"),
    ("stages=[]", "stages is empty"),
    ("model.name=", "model.name is empty"),
    ("model.lora.target_modules=[]", "model.lora.target_modules must be all-linear"),
    ("model.min_pixels=300000", "model.min_pixels (300000) must be <= model.max_pixels (200704)"),
    ("grpo.tools.max_pixels=1000", "grpo.tools.max_pixels (1000) must be >= model.min_pixels (3136)"),
    ("model.tiny.hidden_size=12", "model.tiny.hidden_size must be a multiple of 8"),
    ("data.0.rewards={count_match: .nan}", "data[0].rewards maps reward names to finite weights"),
    ("grpo.tools.rewards={tool_success: [1]}", "grpo.tools.rewards maps reward names to finite weights"),
    ("grpo.filter.low=1", "grpo.filter.low (1.0) must be < grpo.filter.high (1.0): a group is kept when low <"),
    ("grpo.filter.reward=' '", "grpo.filter.reward is empty"),
    ("data.0.weight=.inf", "data[0].weight must be > 0, got inf"),
]


def _config(tmp_path: Path, **extra) -> Path:
    path = tmp_path / "cfg.yaml"
    tree = {"output_dir": str(tmp_path / "runs"), "data": [{"task": "counting", "train": "train.jsonl"}], **extra}
    path.write_text(json.dumps(tree))
    return path


def _error(tmp_path: Path, overrides: list[str], **extra) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, **extra), overrides)
    message = str(info.value)
    assert "\n" not in message and len(message) < 500, message  # one line, never the whole of a bad value
    return message


@pytest.mark.parametrize("override, message", BAD_VALUES + BAD_OTHERS, ids=[o for o, _ in BAD_VALUES + BAD_OTHERS])
def test_an_out_of_range_value_is_one_line_naming_key_and_range(tmp_path, override, message):
    assert _error(tmp_path, [override]).startswith(message)


def _numeric_fields(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, type]]:
    """(dotted key, int or float) of every numeric field of the schema; data entries as `data[].key`."""
    found = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = typing.get_args(tp) if isinstance(tp, types.UnionType) else ()
        number = next((t for t in args if t in (int, float)), None) if type(None) in args else None  # float | None
        if tp in (int, float) or number is not None:
            found.append((prefix + f.name, number or tp))
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            found += _numeric_fields(tp, f"{prefix}{f.name}.")
        elif f.name == "data":
            found += _numeric_fields(DataConfig, "data[].")
    return found


def test_every_numeric_field_has_a_range_and_a_bad_value_in_the_table():
    fields = dict(_numeric_fields())
    assert len(fields) == 82
    assert set(fields) == set(RANGES), set(fields) ^ set(RANGES)
    tested = {o.split("=")[0].replace("data.0.", "data[].") for o, _ in BAD_VALUES}
    assert tested == set(RANGES)


FLOAT_KEYS = [key for key, tp in _numeric_fields() if tp is float]


@pytest.mark.parametrize("key", FLOAT_KEYS)
@pytest.mark.parametrize("value", [".nan", "-.inf", "inf"])
def test_nan_and_infinity_fit_no_float_field(tmp_path, key, value):
    message = _error(tmp_path, [f"{key.replace('data[].', 'data.0.')}={value}"])
    assert " must be " in message and message.split(", got ")[-1] in ("nan", "inf", "-inf")


def test_the_issues_values_all_stop_before_anything_is_built(tmp_path):
    for override in ["sft.lr=-1", "grpo.lr=nan", "sft.steps=-1", "grpo.steps=-3", "sft.batch_size=0",
                     "eval.batch_size=0", "grpo.prompts_per_step=0", "grpo.temperature=0", "grpo.temperature=-1",
                     "grpo.max_new_tokens=0", "eval.max_new_tokens=0", "grpo.beta=-1", "keep_checkpoints=0",
                     "model.lora.r=0", "sft.grad_accum=0", "grpo.num_iterations=0", "grpo.eps_low=1.5"]:
        _error(tmp_path, [override])


def test_an_output_dir_or_run_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    message = _error(tmp_path, [f"output_dir={tmp_path / 'file'}"])
    assert message == f"output_dir {tmp_path / 'file'} is a file, not a folder"
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "run").write_text("x")
    assert "the run folder" in _error(tmp_path, []) and "is a file, not a folder" in _error(tmp_path, [])


def test_a_run_folder_that_cannot_be_written_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(config_ranges.os, "access", lambda path, mode: False)  # as a read-only folder (not as root)
    assert "is not writable: the run folder" in _error(tmp_path, [])
    load_config(_config(tmp_path), check_paths=False)  # reading an existing run's config (its report) still works


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.5.weight=2", "override 'data.5.weight': data is a list; the part after it must be an index (0..0), "
                            "got '5'"),
        ("data.x.weight=2", "override 'data.x.weight': data is a list; the part after it must be an index (0..0), "
                            "got 'x'"),
        ("data.-1.weight=2", "the part after it must be an index (0..0), got '-1'"),
        ("data.0.task.x=1", "override 'data.0.task.x': 'task' is a value, not a section"),
        ("grpo.lr.x=1", "config key 'grpo.lr' must be a number, got {'x': 1}"),
        ("model.name=!!python/object/apply:os.system ['true']", "not valid YAML: could not determine a constructor"),
        ("grpo.lr=[1, 2", "override 'grpo.lr=[1, 2': not valid YAML"),
        ("sft.steps=" + "9" * 5000, "not valid YAML: Exceeds the limit (4300 digits)"),
        ("grpo.lr=" + "9" * 400, "config key 'grpo.lr' is too large, got 999"),
        ("grpo.lr=&a [*a]", "override 'grpo.lr=&a [*a]': line 1: YAML aliases (*a) are not accepted"),
        ("grpo.lr={a: 1}", "config key 'grpo.lr' must be a number, got {'a': 1}"),
        ("grpo.lr", "override 'grpo.lr' must look like key.sub=value"),
        ("x" * 100_000 + "=1", "unknown config key 'xxxxxxxx"),
    ],
)
def test_a_malformed_override_is_one_line(tmp_path, override, message):
    assert message in _error(tmp_path, [override])


BOMB = "\n".join(
    [f"{chr(97)}: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]"]
    + [f"{chr(97 + i)}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]" for i in range(1, 9)]
) + "\n"


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    assert len(BOMB.encode()) < 500  # expanded, 9**9 strings: hundreds of megabytes of error message
    (tmp_path / "bomb.yaml").write_text(BOMB)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "bomb.yaml")
    assert time.perf_counter() - start < 1.0
    assert str(info.value) == (f"{tmp_path / 'bomb.yaml'}: line 2: YAML aliases (*a) are not accepted in configs; "
                               "write the value out")
    bigger = BOMB + "".join(f"{chr(106 + i)}: &{chr(106 + i)} [" + ",".join([f"*{chr(105 + i)}"] * 9) + "]\n"
                            for i in range(10))
    (tmp_path / "bigger.yaml").write_text(bigger)
    with pytest.raises(ConfigError, match="YAML aliases"):
        load_config(tmp_path / "bigger.yaml")


def test_a_huge_config_file_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"huge.yaml: 2097155 bytes; a config file holds at most 1048576"):
        load_config(path)


@pytest.mark.parametrize("override", ["name=" + "n" * 100_000, "grpo.lr=" + "x" * 100_000,
                                      "stages=[" + "sft, " * 2_000 + "gpro]", "model.family=" + "f" * 100_000,
                                      "data.0.columns={a: [" + "1, " * 2_000 + "1]}"])
def test_an_error_never_prints_more_than_a_few_hundred_characters_of_a_value(tmp_path, override):
    _error(tmp_path, [override])  # asserts one line under 500 characters


def test_shipped_and_default_configs_still_load(tmp_path):
    cfg = load_config(_config(tmp_path))
    assert cfg.model.max_prompt_tokens == 0 and cfg.model.max_images == 0  # derived from the model
    load_config("quickstart")
