"""Rejection-sampling SFT (mmreason.train.rejection) and `mmreason data distill` (mmreason.train.distill): the keep
rule (threshold, truncation, shortest), which data entries the stage reads, a record's verbatim `sft_target`, a
`[sft, rejection_sft]` run through the CLI that logs what it kept, stores the kept completions, checkpoints and
resumes exactly, a step that keeps nothing makes no update, and a distilled file that `data check` accepts and whose
SFT targets are exactly the kept completions."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText
from typer.testing import CliRunner

import mmreason.train.rejection as rejection
from mmreason.cli import app
from mmreason.config import ConfigError, DataConfig, RunConfig, validate
from mmreason.data.entries import read_entry, stage_entries
from mmreason.data.prepare import make_sample
from mmreason.data.sample import SampleContext
from mmreason.registry import get_task, register_reward
from mmreason.runs import store
from mmreason.train.rejection import kept_rows, reward_threshold

runner = CliRunner()
WEIGHTS = {"rs_probe": 1.0, "format_nothink": 0.0}  # the best total is 1: completions the probe scores 1


@register_reward("rs_probe")
def rs_probe(completions: list[str], **_: object) -> list[float]:
    """1 or 0 by a checksum of the text: about half of any set of completions, the same in every process."""
    return [float(zlib.crc32(c.encode()) % 2) for c in completions]


# ------------------------------------------------------------------------------------------------ the keep rule


@pytest.mark.parametrize(
    "texts, total, lengths, truncated, thresholds, n, shortest, kept",
    [
        # at or over the threshold (a rounding short of it too); under it, out
        (["a", "b", "c", "d"], [1.0, 0.5, 1 - 1e-12, 1.2], [3, 3, 3, 3], [False] * 4, [1.0], 4, False, [0, 2, 3]),
        # a truncated or blank completion is never kept, whatever its reward
        (["a", "b", " \n", "d"], [1.0, 1.0, 1.0, 1.0], [3, 3, 1, 3], [False, True, False, False], [1.0], 4, False,
         [0, 3]),
        # shortest only: the fewest tokens among the kept; the first sampled on a tie
        (["a", "b", "c", "d"], [1.0, 1.0, 0.0, 1.0], [5, 2, 1, 2], [False] * 4, [1.0], 4, True, [1]),
        (["a", "b", "c", "d"], [0.0, 0.0, 0.0, 0.0], [5, 2, 1, 2], [False] * 4, [1.0], 4, True, []),
        # one threshold per prompt (tasks with other reward weights)
        (["a", "b", "c", "d"], [1.5, 1.0, 1.5, 1.0], [1, 2, 3, 4], [False] * 4, [1.5, 1.0], 2, False, [0, 2, 3]),
        (["a", "b", "c", "d"], [1.5, 1.5, 1.0, 1.0], [4, 3, 2, 1], [False] * 4, [1.5, 1.0], 2, True, [1, 3]),
        # a negative threshold keeps every finished completion
        (["a", "b"], [-0.5, 0.0], [1, 1], [False, False], [-1.0], 2, False, [0, 1]),
    ],
)
def test_the_keep_rule(texts, total, lengths, truncated, thresholds, n, shortest, kept):
    assert kept_rows(texts, total, lengths, truncated, thresholds, n, shortest) == kept


@pytest.mark.parametrize(
    "weights, min_reward, threshold",
    [
        ({"format": 0.5, "count_match": 1.0}, None, 1.5),  # the best total: every reward at 1
        ({"format": 0.5, "iou": 1.0, "penalty": -1.0, "off": 0.0}, None, 1.5),  # negative and 0 weights add nothing
        ({"format": 0.5, "count_match": 1.0}, 0.75, 0.75),
        ({"format": 0.5}, 0.0, 0.0),
    ],
)
def test_the_threshold_is_min_reward_else_the_best_total(weights, min_reward, threshold):
    assert reward_threshold(weights, min_reward) == threshold


# ------------------------------------------------------------------------------------------------ data and config


@pytest.mark.parametrize(
    "stages, feeds",
    [
        ([None, None], [0, 1]),  # no `stages`: every entry feeds every stage
        ([["sft"], ["grpo"]], [1]),  # what GRPO reads: prompts with what the rewards need
        ([["sft"], ["sft", "grpo"], None], [1, 2]),
        ([["grpo"], ["rejection_sft"], None], [1, 2]),  # named by an entry: the entries that name it (and open ones)
        ([["sft"], ["sft"]], []),
    ],
)
def test_rejection_sft_reads_the_grpo_entries_unless_an_entry_names_it(stages, feeds):
    entries = [DataConfig(train=f"t{i}.jsonl", stages=s) for i, s in enumerate(stages)]
    assert stage_entries(entries, "rejection_sft") == feeds
    assert stage_entries(entries, "sft") == [i for i, s in enumerate(stages) if s is None or "sft" in s]


def test_the_config_takes_the_stage_and_checks_its_data_and_threshold(tmp_path):
    def config(stages: list, **rejection_sft: object) -> RunConfig:
        data = [DataConfig(train="t.jsonl", stages=s) for s in stages]
        cfg = RunConfig(output_dir=str(tmp_path), stages=["sft", "rejection_sft", "grpo"], data=data)
        cfg.rejection_sft.__dict__.update(rejection_sft)
        return cfg

    validate(config([["sft"], ["grpo"]]))
    validate(config([["sft"], ["rejection_sft", "grpo"]], min_reward=0.5))
    with pytest.raises(ConfigError, match="no data entry feeds the rejection_sft stage"):
        validate(RunConfig(output_dir=str(tmp_path), stages=["sft", "rejection_sft"],
                           data=[DataConfig(train="t.jsonl", stages=["sft"])]))
    with pytest.raises(ConfigError, match=r"rejection_sft.min_reward must be a finite number \(or null"):
        validate(config([None], min_reward=math.nan))
    with pytest.raises(ConfigError, match="rejection_sft.samples_per_prompt must be >= 1"):
        validate(config([None], samples_per_prompt=0))


def test_a_records_sft_target_is_the_sft_target_verbatim(tmp_path, counting_data):
    record = dict(read_entry({"task": "counting", "train": str(counting_data / "train.jsonl")}, "train").records[0])
    ctx = SampleContext(think=False, base_dir=counting_data, min_pixels=3136, max_pixels=3136)
    task = get_task("counting")
    assert make_sample(task, record, ctx).target == f"<answer>{record['solution']}</answer>"
    kept = "  <answer> three?</answer>\n"  # as sampled: whitespace and all, whatever the gold answer is
    assert make_sample(task, {**record, "sft_target": kept}, ctx).target == kept
    for bad in ("  ", 3, ["<answer>1</answer>"]):
        with pytest.raises(ValueError, match="field 'sft_target' must be the SFT assistant text"):
            make_sample(task, {**record, "sft_target": bad}, ctx)


# ------------------------------------------------------------------------------------------------ runs


@pytest.fixture(scope="module")
def counting_data(tmp_path_factory) -> Path:
    from mmreason.data.synthetic import make_synthetic

    out = tmp_path_factory.mktemp("counting")
    make_synthetic("counting", out, n=24, seed=0)
    return out


def _config(base: Path, data: Path, **sections: dict) -> list[str]:
    """A [sft, rejection_sft] run: a short SFT at a high rate teaches the tiny model to end its answers (a
    truncated completion is never kept), then two rejection-sampling steps with a checkpoint after each."""
    cfg = {
        "name": "r",
        "output_dir": str(base / "runs"),
        "think": False,
        "stages": ["sft", "rejection_sft"],
        "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
        "data": [{"task": "counting", "train": str(data / "train.jsonl"), "rewards": WEIGHTS}],
        "sft": {"steps": 12, "batch_size": 4, "lr": 0.01},
        "rejection_sft": {"steps": 2, "prompts_per_step": 2, "samples_per_prompt": 4, "max_new_tokens": 8,
                          "batch_size": 4, "lr": 0.001, "save_every": 1},
        "eval": {"at_start": False, "max_new_tokens": 8},
        **sections,
    }
    base.mkdir(parents=True, exist_ok=True)
    (base / "cfg.json").write_text(json.dumps(cfg))
    return [str(base / "cfg.json")]


def _train(args: list[str]) -> str:
    result = runner.invoke(app, ["train", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _metrics(run_dir: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if m["stage"] == "rejection_sft"]


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return AutoModelForImageTextToText.from_pretrained(ckpt).state_dict()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, counting_data) -> Path:
    """The uninterrupted run (its folder), trained once for the tests below."""
    base = tmp_path_factory.mktemp("rejection")
    _train(_config(base, counting_data))
    return base / "runs" / "r"


class SimulatedCrash(Exception):
    pass


def test_a_run_logs_what_it_kept_stores_it_and_resumes_exactly(tmp_path, counting_data, trained, monkeypatch):
    metrics = _metrics(trained)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert m["rejection_sft/kept_share"] == m["rejection_sft/kept"] / 8 and m["rejection_sft/updated"] == 1.0
        assert math.isfinite(m["loss"]) and m["tokens"] > 0 and 0 <= m["reward/rs_probe_mean"] <= 1
    rows = store.read(trained, stage="rejection_sft-1")
    assert len(rows) == sum(m["rejection_sft/kept"] for m in metrics) > 0  # the kept completions, and only they
    assert (rows["reward_total"] >= 1.0).all() and not rows["truncated"].any()
    assert all(rs_probe(list(rows["completion"])))
    names = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert names == ["s01-rejection_sft-step000001", "s01-rejection_sft-step000002"]

    real_periodic = rejection.periodic

    def crash_after_save(run, cfg, stage_index, stage, step, optimizer, scheduler):
        real_periodic(run, cfg, stage_index, stage, step, optimizer, scheduler)
        if step == 1:
            raise SimulatedCrash  # right after the first rejection_sft checkpoint

    monkeypatch.setattr(rejection, "periodic", crash_after_save)
    with pytest.raises(SimulatedCrash):
        runner.invoke(app, ["train", *_config(tmp_path, counting_data)], catch_exceptions=False)
    monkeypatch.setattr(rejection, "periodic", real_periodic)
    assert "resuming from s01-rejection_sft-step000001" in _train([*_config(tmp_path, counting_data), "--resume"])
    resumed_dir = tmp_path / "runs" / "r"
    columns = ["step", "sample_id", "group_id", "completion_index", "completion", "reward_total"]
    assert store.read(resumed_dir, stage="rejection_sft-1")[columns].equals(rows[columns])
    keys = [k for k in metrics[0] if k.startswith(("rejection_sft/", "reward", "loss"))]
    assert [[m[k] for k in keys] for m in _metrics(resumed_dir)] == [[m[k] for k in keys] for m in metrics]
    last = "checkpoints/s01-rejection_sft-step000002"
    wa, wb = _weights(trained / last), _weights(resumed_dir / last)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


def test_a_step_that_keeps_nothing_makes_no_update(tmp_path, counting_data):
    _train(_config(tmp_path, counting_data, stages=["rejection_sft"], rejection_sft={
        "steps": 1, "prompts_per_step": 2, "samples_per_prompt": 2, "max_new_tokens": 4, "min_reward": 5.0}))
    run_dir = tmp_path / "runs" / "r"
    (m,) = _metrics(run_dir)
    assert m["rejection_sft/kept"] == 0 and m["rejection_sft/updated"] == 0 and m["tokens"] == 0
    assert math.isnan(m["loss"]) and m["updates_skipped"] == 0
    assert store.read(run_dir, stage="rejection_sft-0").empty
    (tiny,) = (tmp_path / "runs" / ".cache").glob("tiny-*")
    before, after = _weights(tiny), _weights(run_dir / "checkpoints" / "s00-rejection_sft-step000001")
    assert all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------------------------ data distill


def _distill(trained: Path, data: Path, out: Path, *extra: str):
    return runner.invoke(app, ["data", "distill", str(trained), "--data", str(data / "val.jsonl"), "--samples", "4",
                               "--max-new-tokens", "8", "--out", str(out), *extra])


def test_data_distill_writes_records_whose_sft_targets_are_the_kept_completions(
    tmp_path, counting_data, trained, monkeypatch
):
    out = tmp_path / "distilled" / "kept.jsonl"
    result = _distill(trained, counting_data, out)
    assert result.exit_code == 0, result.output
    assert "kept " in result.output and "wrote" in result.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and len({r["id"] for r in records}) == len(records)
    # one copy per kept completion of a record, its index among the N in the id
    assert all(r["id"].rsplit("-s", 1)[1] in {"0", "1", "2", "3"} for r in records)
    check = runner.invoke(app, ["data", "check", str(out), "--task", "counting"])
    assert check.exit_code == 0, check.output
    # what SFT trains on: each record's sample target is its kept completion, verbatim, and it passed the rule
    ctx = SampleContext(think=False, base_dir=out.parent, min_pixels=3136, max_pixels=3136)
    dataset = read_entry({"task": "counting", "train": str(out)}, "train")
    targets = [make_sample(get_task("counting"), r, ctx).target for r in dataset.records]
    assert targets == [r["sft_target"] for r in records] and all(rs_probe(targets))

    seen: list[str] = []
    import mmreason.train.sft as sft

    real_batch = sft.sft_batch
    monkeypatch.setattr(sft, "sft_batch", lambda p, samples, d: seen.extend(s.target for s in samples)
                        or real_batch(p, samples, d))
    cfg = {"name": "s", "output_dir": str(tmp_path / "runs"), "think": False, "stages": ["sft"],
           "model": {"name": "tiny", "min_pixels": 3136, "max_pixels": 3136},
           "data": [{"task": "counting", "train": str(out)}], "sft": {"steps": 1, "batch_size": 2},
           "eval": {"at_start": False}}
    (tmp_path / "sft.json").write_text(json.dumps(cfg))
    _train([str(tmp_path / "sft.json")])
    assert len(seen) == 2 and set(seen) <= set(targets)

    shortest = tmp_path / "shortest.jsonl"
    result = _distill(trained, counting_data, shortest, "--shortest")
    assert result.exit_code == 0, result.output
    # the same completions (each record's own RNG): one per record that kept any, under the record's own id
    kept = [json.loads(line)["id"] for line in shortest.read_text().splitlines()]
    assert sorted(kept) == sorted({r["id"].rsplit("-s", 1)[0] for r in records})


def test_data_distill_mistakes_are_one_error_line(tmp_path, counting_data, trained):
    result = _distill(tmp_path / "nowhere", counting_data, tmp_path / "o.jsonl")
    assert result.exit_code == 2 and "error:" in result.output and "neither a run directory" in result.output
    result = runner.invoke(app, ["data", "distill", str(trained), "--data", str(tmp_path / "missing.jsonl"),
                                 "--out", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2 and "error:" in result.output, result.output
    result = _distill(trained, counting_data, tmp_path / "o.jsonl", "--min-reward", "5")
    assert result.exit_code == 2 and "nothing written" in result.output and not (tmp_path / "o.jsonl").exists()
    result = _distill(trained, counting_data, tmp_path / "o.txt")
    assert result.exit_code == 2 and "--out must be a .jsonl file" in result.output


# ------------------------------------------------------------------------------------------------ several processes

PROBE_FILE = """
import zlib

from mmreason import register_reward


@register_reward("rs_probe", replace=True)
def rs_probe(completions, **_):
    return [float(zlib.crc32(c.encode()) % 2) for c in completions]
"""


@pytest.mark.slow
def test_two_processes_that_keep_unequal_counts_train_together(tmp_path, counting_data):
    """Each rank trains on its own kept completions; a rank with fewer micro-batches forwards one with no loss, so
    DDP's all-reduce never waits for a backward that does not come."""
    (tmp_path / "probe.py").write_text(PROBE_FILE)
    args = _config(tmp_path, counting_data, rejection_sft={
        "steps": 2, "prompts_per_step": 4, "samples_per_prompt": 4, "max_new_tokens": 8, "batch_size": 4})
    result = runner.invoke(app, ["train", *args, "--num-processes", "2", "--task-file", str(tmp_path / "probe.py")],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "r"
    metrics, rows = _metrics(run_dir), store.read(run_dir, stage="rejection_sft-1")
    assert len(rows) == sum(m["rejection_sft/kept"] for m in metrics) and all(m["rejection_sft/updated"] for m in
                                                                               metrics)
    kept = rows.groupby(["step", rows["group_id"] % 2]).size().unstack(fill_value=0)  # rank r holds groups r, r + 2
    micro_batches = (kept + 1) // 2  # batch_size 4 over 2 ranks: 2 kept completions per micro-batch
    assert (micro_batches[0] != micro_batches[1]).any(), kept  # the filler forward ran on some step
