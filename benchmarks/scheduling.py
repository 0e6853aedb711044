"""Do the data-scheduling features help? Each feature of README "Data scheduling and budgets" against the same recipe
without it, on the tiny model and a counting set of MIXED difficulty (1-4 shapes), three seeds each: held-out
accuracy before, after SFT and at the end, and the rollouts each arm spent.

    .venv/bin/python benchmarks/scheduling.py --jobs 2 --threads 1        # 8 arms x seeds 0 1 2: 24 runs, about
                                                                           # an hour on 2 otherwise idle cores
    .venv/bin/python benchmarks/scheduling.py --arms baseline filter --seeds 0 --sft-steps 5 --grpo-steps 3
    .venv/bin/python benchmarks/scheduling.py --summarise                 # the table from the finished runs

Data: `make_synthetic("counting", n=600, max_count=4, reasoning=True)` (540 train, 60 held-out records), each record
given `difficulty` = (count - 1) / 3, a number in [0, 1]: the schedule rescales it per source and the reasoning
budgets read it as it is (counts 1-2 are `easy`, 3-4 `hard`). 1-4 shapes because that is the set the recipe learns
(README "Does every task learn?"); on 1-6 shapes it does not, and no feature can show a gain on a recipe that does
not learn. The recipe is learning.py's (tiny Qwen2.5-VL, 56x56
images, SFT 150 steps at lr 1e-3, GRPO 300 steps of 8 prompts x G=8 at lr 5e-4, beta 0, answer-only prompts); every
arm is that recipe plus one override (ARMS, with why each is set as it is). The `think` arm is the reference of the
`budget` arm (budgets need `think: true`): both have the maker's reasoning ("I count the shapes one by one: there
are 3.", 10 words) as their cold-start thinking; for that pair the note gives the mean words of thinking of the
held-out completions at the end (overall and easy / hard), read from the rollout store with
`rewards.budget.think_words` (the tag not counted). `--arms` trains only the arms it names: name an arm's reference
too (`baseline`, `think`), or have its runs under --out already; a gain pairs runs of the same seed and steps.

Rollouts spent: completions sampled for training (GRPO and rejection-SFT stages; held-out evaluations, the same for
every arm, are not counted), read from each run's metrics and its saved config.yaml:
- every GRPO step (a `grpo` metrics row) samples (grpo.prompts_per_step + filter/extra_prompts) x grpo.group_size
  completions: the groups the online filter drops cost their G completions although the store does not keep them;
- every rejection-SFT step (a `rejection_sft` row) samples rejection_sft.prompts_per_step x samples_per_prompt,
  whether or not any is kept (the store keeps only the kept ones).
The json keeps the rollout-store rows per stage as a cross-check (without the filter, GRPO's equal its count).

The table (<out>/scheduling.md, and <out>/scheduling.json with every run): per arm the mean (sd over seeds) of the
held-out accuracy before, after SFT and at the end (after the last stage), the gain at the end over the arm's
reference (paired by seed: mean, then each seed), the mean rollouts spent, and a note: held-out accuracy on the
easy / hard records at the end, plus what the arm's feature logged (extra prompts per step, accuracy after the GRPO
stage that precedes rejection SFT, thinking length). Not a test: each run takes minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning import ROOT, Recipe, _merge, answer_tokens, base_config, evaluations, run_one, synthetic_set  # noqa: E402

TASK, METRIC = "counting", "accuracy"
MAX_COUNT = 4  # the set the recipe learns (see the docstring)
DATA = Recipe(METRIC, n=600, maker={"max_count": MAX_COUNT, "reasoning": True})
LEVELS = {"easy": 4, "hard": 16}  # reasoning budgets in words (why: the budget arm's `why`)
Overrides = Callable[[int, int], dict[str, Any]]  # (GRPO steps, max_new_tokens) -> config overrides


@dataclass(frozen=True)
class Arm:
    """One arm: its config overrides (merged into learning.py's `base_config`), the arm it is compared with (None:
    a reference itself), whether its prompts ask for thinking, and why its settings are what they are."""

    overrides: Overrides
    reference: str | None = "baseline"
    think: bool = False
    why: str = ""


def _rejection(steps: int, tokens: int) -> dict[str, Any]:
    """Half the GRPO steps, then as many rejection-SFT steps of 8 prompts x N=8: the baseline's rollouts."""
    grpo = max(1, steps // 2)
    return {"stages": ["sft", "grpo", "rejection_sft"], "grpo": {"steps": grpo},
            "rejection_sft": {"steps": max(1, steps - grpo), "prompts_per_step": 8, "samples_per_prompt": 8,
                              "shortest_only": True, "lr": 5.0e-4, "batch_size": 64, "max_new_tokens": tokens}}


ARMS: dict[str, Arm] = {
    "baseline": Arm(lambda s, t: {}, reference=None, why="the recipe: answer-only SFT then GRPO"),
    "filter": Arm(
        lambda s, t: {"grpo": {"filter": {"enabled": True, "max_extra_prompts": 16}}},
        why="grpo.filter with the default bounds (drop groups all solved or all failed), up to 16 extra prompts "
            "(2 rounds' worth) per step; the extra prompts are counted in its rollouts"),
    "schedule": Arm(
        lambda s, t: {"schedule": {"enabled": True, "by": "difficulty", "curriculum": "linear", "start": 0.0,
                                   "end": 1.0, "width": 0.25, "floor": 0.05}},
        why="easy to hard by the records' difficulty: the target moves linearly from 0 (1 shape) to 1 (4 shapes) "
            "over the GRPO stage, README's kernel width 0.25 and floor 0.05"),
    "schedule_pass_rate": Arm(
        lambda s, t: {"schedule": {"enabled": True, "by": "pass_rate", "curriculum": "linear", "start": 0.5,
                                   "end": 0.5, "width": 0.25, "floor": 0.05, "prior": 0.5}},
        why="by pass rate with a fixed target 0.5 (prompts solved about half the time, where a binary reward's "
            "groups vary most; prompts not drawn yet get the prior 0.5, so are on target): an easy-to-hard sweep "
            "by pass rate would first train on prompts already solved, which give no signal"),
    "reward_schedule": Arm(
        lambda s, t: {"grpo": {"reward_schedule": [{"start": 0.5, "rewards": {TASK: {"format_nothink": 0.0}}}]}},
        why="dense to sparse: format credit (format_nothink, weight 0.5) until halfway, then none, so from "
            "halfway a group's advantages say only whether the count is right (counting has no partial-credit "
            "reward to start from; the layout is already learnt in SFT)"),
    "rejection_sft": Arm(
        _rejection,
        why="stages [sft, grpo, rejection_sft]: half the GRPO steps, then as many rejection-SFT steps of 8 "
            "prompts x N=8 (the baseline's rollouts), the shortest correct completion per prompt (answer-only "
            "correct completions are one text), lr 5e-4 (GRPO's); Metis-RISE's order: SFT on what RL found"),
    "think": Arm(lambda s, t: {"think": True}, reference=None, think=True,
                 why="the baseline with think: true (the budget arm's reference)"),
    "budget": Arm(
        lambda s, t: {"think": True, "budget": {"enabled": True, "levels": LEVELS, "length_weight": 0.5,
                                                 "difficulty_weight": 0.5}},
        reference="think", think=True,
        why=f"think: true with reasoning budgets {LEVELS} (words), README's weights 0.5 / 0.5: the tiny model's "
            "cold start thinks in 5-10 words (the maker's sentence, often shortened: 'I count there are 4.'), so "
            "the easy budget asks easy records (1-2 shapes) for shorter thinking and the hard one leaves hard "
            "records only the tag at stake"),
}


def mixed_set(folder: Path) -> Path:
    """The counting set under `folder` (learning.py's `synthetic_set`), every record with its `difficulty`."""
    from mmreason.data.records import write_jsonl

    synthetic_set(TASK, DATA, folder)
    for name in ("train.jsonl", "val.jsonl"):
        path = folder / name
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        write_jsonl([{**r, "difficulty": round((int(r["solution"]) - 1) / (MAX_COUNT - 1), 4)} for r in records],
                    path)
    return folder


def build_configs(args: argparse.Namespace, data: Path) -> list[dict[str, Any]]:
    """Every (arm, seed) run's config, the slowest arms (thinking, refill) first."""
    from mmreason.data.budget import Budget

    tokens = {False: answer_tokens(TASK, data), True: answer_tokens(TASK, data, True, Budget(LEVELS))}
    print(f"max_new_tokens: {tokens[False]} answer-only, {tokens[True]} thinking", flush=True)
    recipe = Recipe(METRIC, sft_steps=args.sft_steps, grpo_steps=args.grpo_steps)
    slow_first = sorted(args.arms, key=lambda a: (not ARMS[a].think, a != "filter"))
    configs = []
    for arm in slow_first:
        spec, t = ARMS[arm], tokens[ARMS[arm].think]
        for seed in args.seeds:
            cfg = base_config(TASK, recipe, data, seed, args.out, t)
            configs.append(_merge(cfg, {"name": f"{arm}-s{seed}", **spec.overrides(args.grpo_steps, t)}))
    return configs


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _store(run_dir: Path) -> pd.DataFrame:
    frames = [pd.read_parquet(f) for f in sorted((run_dir / "rollouts").glob("*.parquet"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["stage", "step"])


def rollouts_spent(run_dir: Path, rows: list[dict[str, Any]], store: pd.DataFrame) -> dict[str, float]:
    """Completions sampled for training, as the module doc counts them, plus the store's rows per stage."""
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    grpo, rej = cfg["grpo"], cfg["rejection_sft"]
    grpo_rows = [r for r in rows if r.get("stage") == "grpo"]
    extra = sum(float(r.get("filter/extra_prompts", 0.0)) for r in grpo_rows)
    spent_grpo = (len(grpo_rows) * grpo["prompts_per_step"] + extra) * grpo["group_size"]
    rej_steps = sum(r.get("stage") == "rejection_sft" for r in rows)
    spent_rej = rej_steps * rej["prompts_per_step"] * rej["samples_per_prompt"]
    kinds = store["stage"].astype(str).str.replace(r"-\d+$", "", regex=True)
    stored = {k: int(v) for k, v in kinds[~kinds.str.startswith("eval")].value_counts().items()}
    return {"total": spent_grpo + spent_rej, "grpo": spent_grpo, "rejection_sft": float(spent_rej),
            "grpo_steps": len(grpo_rows), "extra_prompts_per_step": extra / max(len(grpo_rows), 1),
            "rejection_steps": rej_steps, "stored": stored}


def final_completions(store: pd.DataFrame, label: str, difficulty: dict[str, float]) -> dict[str, float]:
    """Held-out accuracy on the easy / hard records at evaluation `label` and the words of thinking (nan when no
    completion thinks)."""
    from mmreason.rewards.budget import think_words

    rows = store[store["stage"] == f"eval-{label}"]
    if rows.empty:
        return {}
    hard = rows["sample_id"].map(difficulty) > 0.5
    words = rows["completion"].map(think_words)
    out = {"accuracy_easy": float(rows.loc[~hard, "reward_count_match"].mean()),
           "accuracy_hard": float(rows.loc[hard, "reward_count_match"].mean()),
           "think_share": float(words.notna().mean())}
    for name, mask in (("", slice(None)), ("_easy", ~hard), ("_hard", hard)):
        chosen = words[mask].dropna()
        out[f"think_words{name}"] = float(chosen.mean()) if len(chosen) else float("nan")
    return out


def run_result(run_dir: Path, difficulty: dict[str, float]) -> dict[str, Any] | None:
    """One run's numbers, or None while it has not finished (its last stage's evaluation is missing)."""
    if not (run_dir / "metrics.jsonl").is_file() or not (run_dir / "config.yaml").is_file():
        return None
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    stages = cfg["stages"]
    last = f"after-s{len(stages) - 1:02d}-{stages[-1]}"
    evals = evaluations(run_dir, TASK, METRIC)
    if last not in evals:
        return None
    # what a gain compares: runs of the same SFT steps and sampling steps (GRPO + rejection SFT)
    plan = {"sft_steps": cfg["sft"]["steps"], "sampling_steps": cfg["grpo"]["steps"] * stages.count("grpo")
            + cfg["rejection_sft"]["steps"] * stages.count("rejection_sft")}
    rows, store = _metrics(run_dir), _store(run_dir)
    held = {"before": evals.get("before", math.nan), "sft": evals.get("after-s00-sft", math.nan), "final": evals[last]}
    return {"plan": plan, "held_out": held, "evaluations": evals, "rollouts": rollouts_spent(run_dir, rows, store),
            **final_completions(store, last, difficulty)}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    return (statistics.fmean(values), statistics.pstdev(values)) if values else (math.nan, math.nan)


def collect(out: Path, arms: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """Per arm (with a finished run), its runs and their summary; gains are paired by seed with the reference."""
    lines = (out / "data" / TASK / "val.jsonl").read_text().splitlines()
    difficulty = {r["id"]: float(r["difficulty"]) for r in (json.loads(line) for line in lines if line.strip())}
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for arm in dict.fromkeys([*arms, *(ARMS[a].reference for a in arms if ARMS[a].reference)]):
        done = {s: run_result(out / "runs" / f"{arm}-s{s}", difficulty) for s in seeds}
        runs[arm] = {s: r for s, r in done.items() if r is not None}
    summary = []
    for arm in arms:
        results, ref = runs[arm], ARMS[arm].reference
        if not results:
            continue
        gains = {s: r["held_out"]["final"] - runs[ref][s]["held_out"]["final"]
                 for s, r in results.items() if ref and runs.get(ref, {}).get(s, {}).get("plan") == r["plan"]}
        row: dict[str, Any] = {"arm": arm, "reference": ref, "seeds": sorted(results), "why": ARMS[arm].why,
                               "gains": gains, "gain": statistics.fmean(gains.values()) if gains else math.nan}
        for key in ("before", "sft", "final"):
            row[key] = _mean_sd([r["held_out"][key] for r in results.values()])
        for key in ("accuracy_easy", "accuracy_hard", "think_words", "think_words_easy", "think_words_hard"):
            row[key] = _mean_sd([r.get(key, math.nan) for r in results.values()])[0]
        for key in ("total", "extra_prompts_per_step"):
            row[f"rollouts_{key}"] = statistics.fmean(r["rollouts"][key] for r in results.values())
        row["after_grpo"] = _mean_sd([r["evaluations"].get("after-s01-grpo", math.nan) for r in results.values()])
        summary.append(row | {"runs": {str(s): r for s, r in results.items()}})
    return summary


def _note(row: dict[str, Any]) -> str:
    parts = [f"easy / hard {row['accuracy_easy']:.2f} / {row['accuracy_hard']:.2f}"]
    if row["rollouts_extra_prompts_per_step"]:
        parts.append(f"{row['rollouts_extra_prompts_per_step']:.1f} extra prompts / step")
    if row["arm"] == "rejection_sft":
        parts.append(f"after its GRPO half {row['after_grpo'][0]:.2f} ({row['after_grpo'][1]:.2f})")
    if not math.isnan(row["think_words"]):
        parts.append(f"thinking {row['think_words']:.1f} words (easy {row['think_words_easy']:.1f} / hard "
                     f"{row['think_words_hard']:.1f})")
    return "; ".join(parts)


def markdown(summary: list[dict[str, Any]]) -> str:
    def cell(pair: tuple[float, float]) -> str:
        return f"{pair[0]:.2f} ({pair[1]:.2f})"

    lines = ["| arm | seeds | before | after SFT | after GRPO / final | gain vs reference (per seed) | "
             "rollouts spent | note |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in summary:
        per_seed = ", ".join(f"{g:+.2f}" for g in r["gains"].values())
        gain = (f"{r['gain']:+.2f} ({per_seed}) vs `{r['reference']}`" if r["gains"]
                else f"no `{r['reference']}` run of its steps" if r["reference"] else "reference")
        lines.append(f"| `{r['arm']}` | {len(r['seeds'])} | {cell(r['before'])} | {cell(r['sft'])} | "
                     f"{cell(r['final'])} | {gain} | {r['rollouts_total']:,.0f} | {_note(r)} |")
    lines += ["", "Held-out accuracy (count exact), mean (sd over seeds); easy / hard: 1-2 / 3-4 shapes at the end. "
              "Rollouts: completions sampled in GRPO and rejection-SFT stages, filtered-out groups included.", ""]
    lines += [f"- `{r['arm']}`: {r['why']}" for r in summary]
    return "\n".join(lines) + "\n"


def write(out: Path, arms: list[str], seeds: list[int]) -> None:
    summary = collect(out, arms, seeds)
    (out / "scheduling.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "scheduling.md").write_text(markdown(summary))
    print(markdown(summary))


def _attempt(config: dict[str, Any], out: Path, threads: int) -> None:
    try:
        run_one(config, out, threads)
    except RuntimeError as exc:  # one failed run leaves the others to finish; the table shows what did
        print(f"FAILED {exc}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "scheduling")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (each in its own process)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per run (0: torch's default; with --jobs N on N cores, 1)")
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--grpo-steps", type=int, default=300,
                        help="GRPO steps (the rejection_sft arm: half GRPO, half rejection SFT)")
    parser.add_argument("--summarise", action="store_true",
                        help="train nothing: build the table from the finished runs under --out")
    args = parser.parse_args()
    if not args.summarise:
        data = mixed_set(args.out / "data" / TASK)
        configs = build_configs(args, data)
        print(f"{len(configs)} runs, {args.jobs} at once", flush=True)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            list(pool.map(lambda cfg: _attempt(cfg, args.out, args.threads), configs))
    write(args.out, args.arms, args.seeds)


if __name__ == "__main__":
    main()
