"""The GRPO runs of the GPU acceptance check (`benchmarks/gpu_check.sh`), and the summary of its output folder.

`run`: a short GRPO run of a random-init model with a real checkpoint's shapes (`grpo_step.shaped_config`, the `3b`
preset: Qwen2.5-VL-3B or Qwen3-VL-4B shapes; `tiny` to try the harness on a CPU) through the path `mmreason train`
takes. The model is saved once per family under --workdir with save_pretrained and loaded by `build_policy` with
the run's dtype and attention kernel; the data are synthetic counting images of --image-size pixels, one per prompt
(min = max pixels, so every image is exactly that size). `mmreason.train.stages.setup` builds the run (policy,
accelerate with bf16 autocast on a GPU, data stream, run folder), then the GRPO loop `run_grpo` runs: metrics.jsonl
and the rollout store are written as in any run. The stage's closing evaluation, checkpoint and report are left out:
a 3B checkpoint with its optimizer state is about 21 GB of writes, which is not what this run measures.

Each step is split into the loop's three phases, timed (CUDA synchronised) where `run_grpo` looks them up:
sampling (`sample_rollout`: G completions per prompt), scoring (`score_mixture`: the rule rewards) and update
(`update_policy`: the loss forward with gradients, backward, clipping, optimizer step, and the no-grad old /
reference log-probs when grpo.num_iterations > 1 or grpo.beta > 0); the rest of the step (advantages, store rows,
metrics) is "other". A phase's peak memory is `torch.cuda.max_memory_allocated` during it (the counter is reset at
each phase's start, so metrics.jsonl's peak_memory_mb becomes the update's peak). The first step is a warm-up
(kernel selection, optimizer state allocation) and is left out of the medians.

`summary`: summary.md (and summary.json) of a gpu_check.sh output folder, from whatever its stages wrote.

    python benchmarks/gpu_run.py run --arch qwen2_5_vl --steps 20 --out runs/gpu/qwen2_5_vl.json
    python benchmarks/gpu_run.py run --arch qwen2_5_vl --steps 4 --gradient-checkpointing --out runs/gpu/ckpt.json
    python benchmarks/gpu_run.py run --preset tiny --device cpu --steps 2 --max-new-tokens 8   # the harness on a CPU
    python benchmarks/gpu_run.py summary runs/gpu_check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
# run_grpo's phases: report name -> the mmreason.train.grpo function it calls for it
PHASES = {"sampling": "sample_rollout", "scoring": "score_mixture", "update": "update_policy"}


def grpo_step() -> Any:
    """benchmarks/grpo_step.py: the home of the 3b shapes (`SHAPES`), the model builder and the step table."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import grpo_step as module

    return module


# ------------------------------------------------------------------------------------------------ phase timing
class PhaseClock:
    """Times the GRPO loop's phases and takes each one's peak memory by wrapping the functions `run_grpo` calls;
    one record per step, opened by its sampling phase. Also keeps the run and its scoring plan (`scoring_plan`)."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.steps: list[dict[str, float]] = []
        self.run: Any = None
        self.plan: Any = None

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _peak_mb(self) -> float:
        import torch

        from mmreason.train.step import peak_memory_mb

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return peak_memory_mb(self.device)  # the process's peak RSS so far

    def wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        import torch

        def timed(*args: Any, **kwargs: Any) -> Any:
            self._sync()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self._sync()
            if phase == "sampling":
                self.steps.append(
                    {
                        "completion_tokens": float(out.completion_mask.sum()),
                        "prompt_tokens": sum(out.prompt_lengths) / max(len(out.prompt_lengths), 1),
                    }
                )
            self.steps[-1][f"{phase}_s"] = time.perf_counter() - t0
            self.steps[-1][f"{phase}_peak_mb"] = self._peak_mb()
            return out

        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[PhaseClock]:
        from mmreason.train import grpo

        saved = {name: getattr(grpo, name) for name in (*PHASES.values(), "scoring_plan")}

        def plan(run: Any, cfg: Any) -> Any:
            self.run, self.plan = run, saved["scoring_plan"](run, cfg)
            return self.plan

        for phase, name in PHASES.items():
            setattr(grpo, name, self.wrap(phase, saved[name]))
        grpo.scoring_plan = plan
        try:
            yield self
        finally:
            for name, fn in saved.items():
                setattr(grpo, name, fn)


# ------------------------------------------------------------------------------------------------ model, data, config
def model_dir(args: argparse.Namespace) -> tuple[Path, float]:
    """The saved random-init model of the run's preset and family (built once per workdir) -> (folder, seconds)."""
    import torch

    folder = Path(args.workdir) / "models" / f"{args.preset}-{args.arch}"
    if (folder / "config.json").is_file():
        return folder, 0.0
    t0 = time.perf_counter()
    model, processor = grpo_step().build_model(args.preset, getattr(torch, args.dtype), args.arch, args.device)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.replace(folder)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder, time.perf_counter() - t0


def data_file(args: argparse.Namespace) -> Path:
    """Synthetic counting records with square images of --image-size pixels (written once per workdir)."""
    from mmreason.data.synthetic import make_synthetic

    folder = Path(args.workdir) / "data" / f"counting-{args.image_size}"
    if not (folder / "train.jsonl").is_file():
        make_synthetic("counting", folder, n=64, seed=0, image_size=(args.image_size, args.image_size))
    return folder / "train.jsonl"


def run_name(args: argparse.Namespace) -> str:
    return args.name or f"{args.preset}-{args.arch}-{'ckpt' if args.gradient_checkpointing else 'nockpt'}"


def run_config(args: argparse.Namespace, model: str | Path, train: str | Path) -> Any:
    """The run's validated RunConfig: one GRPO stage on the saved model, exactly --image-size pixels per image."""
    from mmreason.config import RunConfig, from_dict, validate

    pixels = args.image_size**2
    tree = {
        "name": run_name(args),
        "output_dir": str(Path(args.workdir) / "runs"),
        "stages": ["grpo"],
        "device": args.device,
        "model": {
            "name": str(model),
            "dtype": args.dtype,
            "attn_implementation": args.attn,
            "gradient_checkpointing": args.gradient_checkpointing,
            "min_pixels": pixels,
            "max_pixels": pixels,
        },
        "data": [{"task": "counting", "train": str(train)}],
        "grpo": {
            "steps": args.steps,
            "prompts_per_step": args.prompts,
            "group_size": args.group_size,
            "max_new_tokens": args.max_new_tokens,
            "beta": args.beta,
        },
        "eval": {"at_start": False},
    }
    cfg = from_dict(RunConfig, tree)
    validate(cfg)
    return cfg


# ------------------------------------------------------------------------------------------------ the run
class Stopped(Exception):
    """The run was told to stop (SIGTERM: gpu_check.sh's stage limit); the steps done so far are still reported."""


def _stop(signum: int, frame: Any) -> None:
    raise Stopped(f"stopped by signal {signum}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from mmreason.train.grpo import run_grpo
    from mmreason.train.stages import setup

    device = torch.device(args.device)
    model, build_s = model_dir(args)
    cfg = run_config(args, model, data_file(args))
    shutil.rmtree(cfg.run_dir, ignore_errors=True)  # this harness's own scratch run: always a fresh start
    clock = PhaseClock(device)
    stopped = None
    with clock.installed():
        t0 = time.perf_counter()
        run_state, _, _ = setup(cfg, resume=False)
        t1 = time.perf_counter()
        try:
            run_grpo(run_state, cfg.grpo, 0)
        except Stopped as exc:
            stopped = str(exc)
        t2 = time.perf_counter()
    timings = {"build_s": build_s, "setup_s": t1 - t0, "loop_s": t2 - t1}
    result = describe(args, cfg, clock, timings)
    result["stopped"] = stopped
    run_state.train_model = None  # the engine goes before the process group it uses, as `stages.train` does
    if run_state.dist is not None and stopped is None:
        run_state.dist.close()
    return result


def describe(args: argparse.Namespace, cfg: Any, clock: PhaseClock, timings: dict[str, float]) -> dict[str, Any]:
    """The run's settings, model facts, per-step rows (metrics.jsonl joined with the phase times) and medians."""
    import torch
    import transformers

    from mmreason.models.policy import unwrap_model

    policy = clock.run.policy
    model = unwrap_model(policy.model)
    metrics = [row for row in clock.run.history if row.get("stage") == "grpo"]
    # a stopped run's last step may have begun (a phase record) without finishing (its metrics line)
    rows = [step_row(m, p) for m, p in zip(metrics, clock.steps[: len(metrics)], strict=True)]
    return {
        "arch": args.arch,
        "preset": args.preset,
        "shapes_of": grpo_step().SHAPES[args.arch][0] if args.preset == "3b" else "tiny",
        "params": sum(p.numel() for p in model.parameters()),
        "device": torch.cuda.get_device_name(clock.device) if clock.device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "mixed_precision": clock.run.dist.acc.mixed_precision if clock.run.dist is not None else "no",
        "attn_implementation": model.config._attn_implementation,
        "gradient_checkpointing": cfg.model.gradient_checkpointing,
        "loss_path": clock.plan.loss,
        "frozen_path": clock.plan.frozen,
        "group_size": cfg.grpo.group_size,
        "prompts_per_step": cfg.grpo.prompts_per_step,
        "max_new_tokens": cfg.grpo.max_new_tokens,
        "image_size": args.image_size,
        "run_dir": str(cfg.run_dir),
        **timings,
        "summary": summarize(rows),
        "steps": rows,
    }


def step_row(metrics: dict[str, Any], phases: dict[str, float]) -> dict[str, float]:
    keys = ("step", "step_time", "tokens_per_s", "completion_len_mean", "reward_mean", "loss", "grad_norm")
    row = {k: metrics[k] for k in keys if k in metrics}
    row.update(phases)
    row["other_s"] = row["step_time"] - sum(phases.get(f"{p}_s", 0.0) for p in PHASES)
    row["sampling_tokens_per_s"] = phases["completion_tokens"] / phases["sampling_s"]
    row["peak_mb"] = max(phases.get(f"{p}_peak_mb", 0.0) for p in PHASES)
    return row


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """Medians over the steps after the warm-up (all steps when there is only one); peaks over all steps."""
    if not rows:
        return {"timed_steps": 0}
    timed = rows[1:] or rows
    keys = ("step_time", "tokens_per_s", "sampling_tokens_per_s", "other_s", "prompt_tokens", "completion_tokens")
    out = {k: statistics.median(r[k] for r in timed) for k in (*keys, *(f"{p}_s" for p in PHASES))}
    out.update({f"{p}_peak_mb": max(r[f"{p}_peak_mb"] for r in rows) for p in PHASES})
    out["peak_mb"] = max(r["peak_mb"] for r in rows)
    out["timed_steps"] = len(timed)
    return out


# ------------------------------------------------------------------------------------------------ summary
def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _stages(folder: Path) -> list[list[str]]:
    path = folder / "stages.tsv"
    if not path.is_file():
        return []
    return [line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip()]


def _runs_table(results: list[dict[str, Any]]) -> list[str]:
    head = (
        "| model | params | attention | checkpointing | loss path | step s | sampling s | scoring s | update s "
        "| other s | tokens/s | sampling tokens/s | sampling GiB | update GiB |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in results:
        s = r["summary"]
        cells = [
            f"{r['shapes_of']} ({r['arch']})",
            f"{r['params'] / 1e9:.2f}B" if r["params"] >= 1e8 else f"{r['params'] / 1e6:.1f}M",
            r["attn_implementation"],
            "on" if r["gradient_checkpointing"] else "off",
            r["loss_path"],
            *(f"{s[k]:.2f}" for k in ("step_time", "sampling_s", "scoring_s", "update_s", "other_s")),
            f"{s['tokens_per_s']:.0f}",
            f"{s['sampling_tokens_per_s']:.0f}",
            f"{s['sampling_peak_mb'] / 1024:.1f}",
            f"{s['update_peak_mb'] / 1024:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary(folder: Path) -> str:
    """summary.md of a gpu_check.sh output folder (also written there, with summary.json)."""
    env = _load(folder / "env.json") or {}
    lines = [f"# GPU acceptance check: {env.get('gpu', {}).get('name', 'no GPU')}", ""]
    lines += [f"- {k}: {v}" for k, v in env.get("versions", {}).items()]
    lines += ["", "| stage | status | seconds | limit s |", "| --- | --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in _stages(folder)]
    tests = folder / "tests.log"
    ran = {row[0]: row[1] for row in _stages(folder) if len(row) > 1}
    if tests.is_file() and "dry run" not in ran.get("tests", ""):
        last = [line for line in tests.read_text().splitlines() if line.strip()][-1:]
        lines += ["", f"gpu-marked tests: {last[0] if last else '(no output)'}"]
    bench = _load(folder / "grpo_step.json")
    if bench:
        lines += ["", "## One GRPO step, 3b preset, mmreason vs TRL", "", *grpo_step().table(bench).splitlines()]
    runs = [r for r in (_load(p) for p in sorted(folder.glob("run-*.json"))) if r and r["summary"]["timed_steps"]]
    if runs:
        g = runs[0]
        lines += [
            "",
            f"## GRPO runs: G={g['group_size']}, {g['prompts_per_step']} prompt(s) per step, one "
            f"{g['image_size']}x{g['image_size']} image, {g['max_new_tokens']} new tokens, {g['dtype']} "
            f"weights, {g['mixed_precision']} autocast",
            "",
        ]
        lines += _runs_table(runs)
        lines += [
            f"\n{r['shapes_of']}, checkpointing {'on' if r['gradient_checkpointing'] else 'off'}: "
            f"{r['summary']['timed_steps']} timed steps, peak {r['summary']['peak_mb'] / 1024:.1f} GiB"
            f"{' (' + r['stopped'] + ')' if r.get('stopped') else ''}"
            for r in runs
        ]
    text = "\n".join(lines) + "\n"
    (folder / "summary.md").write_text(text)
    record = {"stages": _stages(folder), "env": env, "grpo_step": bench, "runs": runs}
    (folder / "summary.json").write_text(json.dumps(record, indent=2, default=str))
    return text


# ------------------------------------------------------------------------------------------------ command line
def run_parser(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--preset", choices=("3b", "tiny"), default="3b")
    p.add_argument("--arch", default="qwen2_5_vl", help="model family (3b: one with shapes in grpo_step.SHAPES)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=("bfloat16", "float32", "float16"), default=None, help="bf16 on a GPU")
    p.add_argument("--attn", default="sdpa", help="model.attn_implementation (sdpa, flash_attention_2, eager)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--prompts", type=int, default=1, help="prompts per step")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--image-size", type=int, default=448, help="square image side, a multiple of the family's")
    p.add_argument("--beta", type=float, default=0.0, help="KL weight (> 0 loads a reference copy)")
    p.add_argument("--workdir", default="runs/gpu", help="models, data and run folders")
    p.add_argument("--name", default=None, help="run name (default: preset-arch-ckpt|nockpt)")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    return p


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run_parser(sub.add_parser("run", help="a GRPO run with the phases timed"))
    sub.add_parser("summary", help="summary.md of a gpu_check.sh output folder").add_argument("folder")
    args = p.parse_args(argv)
    if args.command == "run":
        check_run_args(p, args)
    return args


def check_run_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse what would only fail later on the GPU: an unknown family, a 3b family without shapes, an image side
    the family's resize would change."""
    from mmreason.models.family import family_names, get_family

    shapes = grpo_step().SHAPES
    if args.arch not in family_names():
        p.error(f"--arch must be one of {', '.join(family_names())}, got {args.arch!r}")
    if args.preset == "3b" and args.arch not in shapes:
        p.error(f"--preset 3b has the shapes of {', '.join(shapes)} only, not {args.arch}")
    factor = get_family(args.arch).image_factor
    if args.image_size % factor:
        p.error(f"--image-size must be a multiple of {factor} for {args.arch}, got {args.image_size}")
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.command == "summary":
        print(summary(Path(args.folder)), end="")
        return
    previous = signal.signal(signal.SIGTERM, _stop)  # a stage limit: report the steps done, exit as a timeout
    try:
        result = run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=2, default=str))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    if result["stopped"]:
        sys.exit(124)


if __name__ == "__main__":
    sys.exit(main())
