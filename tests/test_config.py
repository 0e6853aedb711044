"""The config schema: allowed values of the enum-like keys (checked once, when the config is built, from YAML or a
`key=value` override), the suggestion of the closest allowed value, and the defaults."""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path

import pytest

from mmreason import config as C
from mmreason.config import ConfigError, RunConfig, load_config

BASE = {"data": [{"task": "counting", "train": "train.jsonl"}]}

# (dotted key, bad value, allowed values as the error lists them, closest allowed value or None)
BAD_LITERALS = [
    ("grpo.loss_agg", "token_man", "token_mean, seq_mean_token_mean, seq_mean_token_sum_norm", "token_mean"),
    ("grpo.loss_agg", "mean", "token_mean, seq_mean_token_mean, seq_mean_token_sum_norm", None),
    ("grpo.rollout", "sglang", "hf, vllm", None),
    ("grpo.scheduler", "cosin", ", ".join(C.SCHEDULERS), "cosine"),
    ("sft.scheduler", "reduce_lr_on_plateau", ", ".join(C.SCHEDULERS), None),
    ("data_errors", "ignore", "skip, fatal", None),
    ("data_errors", "fatl", "skip, fatal", "fatal"),
    ("model.dtype", "bfloat61", "float32, bfloat16, float16", "bfloat16"),
    ("model.dtype", "fp16", "float32, bfloat16, float16", None),
    ("stages[1]", "gpro", "sft, grpo, rejection_sft", "grpo"),
]


def _nest(dotted: str, value: object) -> dict:
    """{"a": {"b": value}} for "a.b"; "stages[1]" gives stages: [sft, value]."""
    if dotted == "stages[1]":
        return {"stages": ["sft", value]}
    head, _, rest = dotted.partition(".")
    return {head: _nest(rest, value) if rest else value}


def _write(tmp_path: Path, tree: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(json.dumps(tree))
    return path


def _expected(key: str, bad: str, allowed: str, close: str | None) -> str:
    message = f"{key} must be one of {allowed}, got {bad!r}"
    return message + (f"; did you mean {close!r}?" if close else "")


@pytest.mark.parametrize("key, bad, allowed, close", BAD_LITERALS)
def test_bad_literal_in_yaml(tmp_path, key, bad, allowed, close):
    path = _write(tmp_path, {**BASE, **_nest(key, bad)})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == _expected(key, bad, allowed, close)


@pytest.mark.parametrize("key, bad, allowed, close", BAD_LITERALS)
def test_bad_literal_as_override(tmp_path, key, bad, allowed, close):
    override = f"stages=[sft, {bad}]" if key == "stages[1]" else f"{key}={bad}"
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, BASE), [override])
    assert str(info.value) == _expected(key, bad, allowed, close)


@pytest.mark.parametrize("override", ["grpo.rollout=1", "data_errors=true", "model.dtype=[float32]"])
def test_literal_rejects_other_types(tmp_path, override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{key} must be one of .*, got "):
        load_config(_write(tmp_path, BASE), [override])


@pytest.mark.parametrize(
    "override, read",
    [
        ("grpo.loss_agg=seq_mean_token_sum_norm", lambda c: c.grpo.loss_agg),
        ("grpo.rollout=vllm", lambda c: c.grpo.rollout),
        ("sft.scheduler=constant_with_warmup", lambda c: c.sft.scheduler),
        ("data_errors=fatal", lambda c: c.data_errors),
        ("model.dtype=bfloat16", lambda c: c.model.dtype),
        ("stages=[grpo, sft, grpo]", lambda c: c.stages),
    ],
)
def test_allowed_literal_values_load(tmp_path, override, read):
    value = override.split("=", 1)[1]
    expected = value.strip("[]").split(", ") if value.startswith("[") else value
    assert read(load_config(_write(tmp_path, BASE), [override])) == expected


def _config_classes() -> list[type]:
    return [v for v in vars(C).values() if isinstance(v, type) and dataclasses.is_dataclass(v)]


def test_literal_fields_resolve_and_their_defaults_are_allowed():
    literal_fields = 0
    for cls in _config_classes():
        hints = typing.get_type_hints(cls)  # the annotations are strings (postponed evaluation)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if typing.get_origin(tp) is list:
                (tp,) = typing.get_args(tp)
            if typing.get_origin(tp) is not typing.Literal:
                continue
            literal_fields += 1
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            values = default if isinstance(default, list) else [default]
            assert set(values) <= set(typing.get_args(tp)), f"{cls.__name__}.{f.name}"
    # stages, data_errors, model.dtype, sft/grpo/rejection_sft scheduler, loss_agg, rollout, schedule.by/curriculum
    assert literal_fields == 10


def test_defaults():
    cfg = RunConfig()
    assert (cfg.stages, cfg.data_errors, cfg.device, cfg.model.dtype, cfg.model.family) == (
        ["sft", "grpo"],
        "skip",
        "auto",
        "float32",
        "auto",
    )
    assert (cfg.sft.scheduler, cfg.grpo.scheduler, cfg.grpo.loss_agg, cfg.grpo.rollout) == (
        "cosine",
        "constant",
        "token_mean",
        "hf",
    )
    assert cfg.model.lora.target_modules == "all-linear" and cfg.model.attn_implementation == "sdpa"


def test_range_checks_stay_in_validate(tmp_path):
    with pytest.raises(ConfigError, match="grpo.group_size must be >= 2"):
        load_config(_write(tmp_path, BASE), ["grpo.group_size=1"])
    with pytest.raises(ConfigError, match="sft.max_bad_updates must be >= 1"):
        load_config(_write(tmp_path, BASE), ["sft.max_bad_updates=0"])
    with pytest.raises(ConfigError, match=r"unknown config key 'data\[0\].tain'; did you mean 'train'\?"):
        load_config(_write(tmp_path, {"data": [{"task": "counting", "tain": "x"}]}))


SUPPORTED = "qwen2_5_vl, qwen2_vl, qwen3_vl, qwen3_5, internvl, gemma3"


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.family=llava", f"model.family must be auto or one of {SUPPORTED}, got 'llava'"),
        ("model.family=", f"model.family must be auto or one of {SUPPORTED}, got ''"),
        ("model.tiny.arch=llava", f"model.tiny.arch must be one of {SUPPORTED}, got 'llava'"),
    ],
)
def test_unknown_model_family_is_refused_with_the_supported_ones(tmp_path, override, message):
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, BASE), [override])
    assert str(info.value) == message


@pytest.mark.parametrize(
    "override",
    ["model.family=auto", "model.family=qwen2_vl", "model.tiny.arch=qwen2_vl", "model.family=internvl",
     "model.tiny.arch=gemma3"],
)
def test_supported_model_families_load(tmp_path, override):
    load_config(_write(tmp_path, BASE), [override])
