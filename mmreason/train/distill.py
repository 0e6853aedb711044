"""`mmreason data distill`: rejection-sampled SFT data from a trained policy (Metis-RISE's SFT after RL offline, or
a cold-start set sampled from a stronger checkpoint).

The policy is a run folder's latest checkpoint or a checkpoint folder, set up the way `mmreason eval` sets one up
(`mmreason.train.evaluate`: prompt style, pixel budget, completion length, prompts per batch, reward weights and
task files from the run's config.yaml / run.json; the defaults for a checkpoint outside a run). Each record of the
data becomes its prompt, N completions of it are sampled with GRPO's HF engine (each record on its own RNG, seeded
by the seed and its position in the data), scored with the task's rewards (`mmreason.rollout.scoring`) and kept by
the rule of rejection-sampling SFT (`mmreason.train.rejection.kept_rows`).

Every kept completion becomes one output record: the data's record as `mmreason data convert` writes it (media
beside the output file, paths relative to it), with the completion in `sft_target`. `make_sample` takes that field
verbatim as the SFT target (`mmreason.data.prepare.apply_target`), so an SFT stage on the output trains on exactly
the kept completions, while `solution` still feeds rewards and evaluation. When a record may keep several
completions (N > 1 without `shortest`), each copy's id gets `-s<j>`, j being the completion's index among the N.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from mmreason.data.convert import media_folder, portable_media
from mmreason.data.entries import entry_context, read_entry
from mmreason.data.prepare import SFT_TARGET, make_sample
from mmreason.data.records import Dataset, Problem, write_jsonl
from mmreason.data.sample import Sample, SampleContext
from mmreason.registry import get_task
from mmreason.rollout.engine import encode_prompts, generate
from mmreason.rollout.scoring import RewardErrors, score_completions
from mmreason.rollout.types import SamplingParams
from mmreason.train.evaluate import EvalSettings, effective_config, eval_settings, eval_target, eval_task
from mmreason.train.rejection import kept_rows, reward_threshold, rollout_lengths

log = logging.getLogger(__name__)


@dataclass
class Distilled:
    """What a distillation read, sampled, kept and wrote."""

    out: Path
    task: str
    settings: EvalSettings
    records: int = 0  # records read
    sampled: int = 0  # completions sampled
    written: int = 0  # completions kept = records written
    records_kept: int = 0  # records with at least one kept completion
    media_files: int = 0  # media stored inside the data, written beside the output
    reward_errors: int = 0  # reward calls that raised (their scores missing: 0 in the total)
    problems: list[Problem] = field(default_factory=list)  # records that could not become prompts


@dataclass
class Sampler:
    """How each batch of records is sampled, scored and kept."""

    policy: Any
    task: Any
    ctx: SampleContext
    params: SamplingParams
    weights: dict[str, float]
    threshold: float
    shortest: bool
    errors: RewardErrors = field(default_factory=RewardErrors)


def distill(
    target: str | Path,
    entry: dict[str, Any],
    out: str | Path,
    *,
    samples: int = 4,
    min_reward: float | None = None,
    shortest: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    flags: dict[str, Any] | None = None,
    task_files: list[str | Path] | None = None,
) -> Distilled:
    """Sample, score and keep completions of every record of `entry` (a data entry's fields: task (may be empty:
    the run's only task), train, split, format, columns, media_dir) with the policy of `target`, and write the kept
    ones to `out` (nothing is written when none was kept).

    min_reward: the total reward a completion needs (None: the task's best total, `rejection.reward_threshold`).
    flags: max_new_tokens, batch_size (prompts sampled together), think, min_pixels, max_pixels; None takes the
    run's (`eval_settings`). seed: of the per-record sampling RNGs (None: the run's seed). task_files: the caller's
    own task files, already loaded; None imports those the run recorded.
    """
    from mmreason.models.policy import load_checkpoint_policy
    from mmreason.runs.run import load_run_files, sample_context

    ckpt, run_dir, run_cfg = eval_target(target)
    if task_files is None:
        files, origin = [str(p) for p in load_run_files(run_dir)], "run"
    else:
        files, origin = [str(p) for p in task_files], "flag"
    task_name = eval_task(run_cfg, entry.get("task") or None)
    entry = {**entry, "task": task_name}
    task = get_task(task_name)
    settings = eval_settings(run_cfg, task_name, flags or {}, files, origin if files else "none")
    cfg = effective_config(run_cfg, settings)
    dataset = read_entry(entry, "train")  # before the model: a bad data reference fails at once
    policy = load_checkpoint_policy(ckpt, cfg.model)
    ctx = dataset.context(entry_context(entry, sample_context(cfg, policy.family.name, Path.cwd(), policy)))
    params = SamplingParams(samples, settings.max_new_tokens, temperature, top_p,
                            seed=cfg.seed if seed is None else seed)
    sampler = Sampler(policy, task, ctx, params, settings.rewards, reward_threshold(settings.rewards, min_reward),
                      shortest)
    result = Distilled(Path(out), task_name, settings, records=len(dataset), problems=list(dataset.problems))
    kept: list[dict[str, Any]] = []
    with tqdm(total=len(dataset), desc=f"distill {task_name}", unit="record") as bar:
        for start in range(0, len(dataset), settings.batch_size):
            chunk = list(enumerate(dataset.records[start:start + settings.batch_size], start))
            kept += distill_batch(sampler, dataset, chunk, result)
            bar.update(len(chunk))
    result.written, result.reward_errors = len(kept), sampler.errors.total
    if kept:
        write_jsonl(kept, result.out)
    return result


def distill_batch(
    sampler: Sampler, dataset: Dataset, chunk: list[tuple[int, dict[str, Any]]], result: Distilled
) -> list[dict[str, Any]]:
    """The output records of a batch of (position, record): N completions per record sampled, scored and kept;
    records that cannot become prompts are added to `result.problems`."""
    pairs: list[tuple[dict[str, Any], Sample]] = []
    for position, record in chunk:
        try:
            sample = make_sample(sampler.task, record, sampler.ctx)
        except Exception as exc:  # one bad record is listed, the others are distilled
            result.problems.append(Problem(dataset.source, record["_line"], record["id"], f"{type(exc).__name__}: "
                                           f"{exc}"))
            continue
        sample.meta["position"] = position  # its own sampling RNG (`rollout.engine.prompt_seed`)
        pairs.append((record, sample))
    if not pairs:
        return []
    samples, n, policy = [s for _, s in pairs], sampler.params.group_size, sampler.policy
    rollout = generate(policy.model, policy.processor, encode_prompts(policy.processor, samples, policy.device),
                       sampler.params)
    _, total = score_completions(sampler.weights, samples, rollout.texts, n, sampler.errors)
    truncated = [bool(t) for t in rollout.truncated.tolist()]
    rows = kept_rows(rollout.texts, total, rollout_lengths(rollout), truncated, [sampler.threshold] * len(samples),
                     n, sampler.shortest)
    result.sampled += len(rollout.texts)
    out_dir = result.out.parent
    portable: dict[int, dict[str, Any]] = {}  # per record, once: its media are written beside the output once
    several = n > 1 and not sampler.shortest
    records = []
    for b in rows:
        if b // n not in portable:
            record, written = portable_media(pairs[b // n][0], dataset.base_dir, out_dir, media_folder(result.out))
            portable[b // n], result.media_files = record, result.media_files + written
        copy = {**portable[b // n], SFT_TARGET: rollout.texts[b]}
        if several:
            copy["id"] = f"{copy['id']}-s{b % n}"
        records.append(copy)
    result.records_kept += len(portable)
    return records
