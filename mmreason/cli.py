"""The `mmreason` command line: train, eval, tasks, data check / convert / distill / make, tiny-model, new-task,
report.

Every command's body imports what it needs, so `--help`, `-h` and `--version` load neither torch nor the data code.
Output is quiet by default: library progress bars and notices are off and the log level is WARNING; `-v` turns the
bars on and logs at INFO.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from mmreason.models.family import family_names

# the tasks `data make synthetic` has a maker for (`mmreason.data.synthetic.MAKERS`, which a test holds this to):
# named here so that the command's help does not import the makers
SYNTHETIC_TASKS = (
    "counting", "grounding", "jigsaw", "geolocation", "classification", "multiple_choice", "math",
    "temporal_grounding",
)


class _Group(TyperGroup):
    """A command group whose help flag defaults to False: Typer leaves it unset (None) when a command below the group
    is asked for its help, and coercing that None imports pydantic, 0.2 s of every `mmreason CMD --help`."""

    def get_help_option(self, ctx: typer.Context) -> typer.core.TyperOption | None:
        option = super().get_help_option(ctx)
        if option is not None:
            option.default = False
        return option


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
    cls=_Group,
    help="Multimodal visual-reasoning RL: SFT + GRPO.",
)
data_app = typer.Typer(no_args_is_help=True, cls=_Group, help="Validate and make datasets.")
make_app = typer.Typer(no_args_is_help=True, cls=_Group,
                       help="Make datasets (synthetic tasks, jigsaw puzzles from images).")
app.add_typer(data_app, name="data")
data_app.add_typer(make_app, name="make")
console = Console()
# the top-level -v (passed on to the processes of a multi-process launch), and whether quiet mode set the hub's
# progress-bar variable (so that -v may take it back)
OUTPUT: dict[str, object] = {"verbose": False}

# notices libraries print on every command that say nothing about the run (shown with -v)
LIBRARY_NOTICES = ("Setting accelerator to CPU",)  # DeepSpeed, when it finds no GPU at import


def package_version() -> str:
    """The installed package's version (its metadata), or the source tree's when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version("mmreason")
    except metadata.PackageNotFoundError:
        from mmreason import __version__

        return __version__


def _show_version(value: bool) -> None:
    if value:
        console.print(f"mmreason {package_version()}", highlight=False)
        raise typer.Exit()


class _LibraryNotices(logging.Filter):
    """Drops the `LIBRARY_NOTICES` lines of a library logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in LIBRARY_NOTICES)


def configure_output(verbose: bool) -> None:
    """Quiet by default: WARNING logs, no library progress bars (hub downloads, transformers' weight loading and
    shard writing) and no library notices; mmreason's own labelled bars stay. Verbose: INFO logs and every bar."""
    OUTPUT["verbose"] = verbose
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if verbose:
        logging.getLogger().setLevel(level)
    # the hub and transformers read this when imported (a user's own setting of it is kept) ...
    if not verbose and "HF_HUB_DISABLE_PROGRESS_BARS" not in os.environ:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = OUTPUT["hub_bars_env"] = "1"
    elif verbose and OUTPUT.pop("hub_bars_env", None):
        del os.environ["HF_HUB_DISABLE_PROGRESS_BARS"]
    # ... and transformers, when already imported (commands run in one process: tests, notebooks), is told directly
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None and not verbose:
        hf_logging.disable_progress_bar()
    elif hf_logging is not None:
        import warnings

        with warnings.catch_warnings():  # the hub warns that its variable, read at its import, keeps its own bars off
            warnings.simplefilter("ignore", UserWarning)
            hf_logging.enable_progress_bar()
    deepspeed = logging.getLogger("DeepSpeed")  # filters stay on the logger object deepspeed configures later
    notices = [f for f in deepspeed.filters if isinstance(f, _LibraryNotices)]
    if not verbose and not notices:
        deepspeed.addFilter(_LibraryNotices())
    for f in notices if verbose else []:
        deepspeed.removeFilter(f)


@app.callback(help="Multimodal visual-reasoning RL: SFT + GRPO.")
def root(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="More output: INFO logs and the libraries' progress bars and notices."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_show_version, is_eager=True, help="Print mmreason's version and exit."
    ),
) -> None:
    configure_output(verbose)


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    """"; did you mean 'x'?" for the closest known name, else ""."""
    import difflib

    close = difflib.get_close_matches(name, [str(k) for k in known], n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


TaskFiles = typer.Option(None, "--task-file", help="A .py file registering your own tasks/rewards (repeatable).")
DataRef = typer.Argument(
    ..., help="A data file, a folder (split files or the hub layout), a save_to_disk folder or a hub id; "
    "path@split picks a split."
)
SplitOpt = typer.Option(None, "--split", help="The split to read (default: train); the same as path@split.")
FormatOpt = typer.Option(None, "--format", help="A peer layout to adapt rows from: vlm_r1, easyr1, trl, messages, "
                         "swift_grounding.")
ColumnOpt = typer.Option(None, "--column", help="task_field=your_column, e.g. solution=answer (repeatable).")
MediaDirOpt = typer.Option(None, "--media-dir", help="Folder relative media paths resolve against (default: the "
                           "data's folder).")


def _entry(task: str, data: str, split: str | None, fmt: str | None, column: list[str] | None,
           media_dir: Path | None) -> dict:
    """A data entry (the fields of a config's data[i]) from command-line options, checked as a config's is."""
    from mmreason.config import ConfigError, DataConfig, from_dict, validate_entry

    columns = {}
    for item in column or []:
        field, sep, name = item.partition("=")
        if not sep or not field.strip() or not name.strip():
            _fail(f"--column must look like task_field=your_column, got {item!r}")
        columns[field.strip()] = name.strip()
    fields = {"task": task, "train": data, "split": split, "format": fmt, "columns": columns,
              "media_dir": str(media_dir) if media_dir else None}
    try:
        validate_entry(from_dict(DataConfig, fields), "data")
    except ConfigError as exc:
        _fail(str(exc).replace("data.", "--").replace("data[", "["))
    return fields




def _load_user_files(files: list[Path] | None) -> None:
    from mmreason.registry import load_user_file

    for f in files or []:
        load_user_file(f)


def _error(message: str) -> None:
    """One red `error:` line; the message is escaped (data problems hold `[id ...]`, which rich reads as markup)."""
    from rich.markup import escape

    console.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)


def _fail(message: str) -> None:
    _error(message)
    raise typer.Exit(2)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train(
    config: str = typer.Argument(..., help="A YAML config file, or the name of a shipped config (e.g. quickstart)."),
    overrides: list[str] = typer.Argument(None, help="key.sub=value overrides, e.g. grpo.steps=10"),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's latest complete checkpoint."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start afresh in a run folder holding an earlier run, deleting its files (listed)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the resolved config and plan, check the tasks, data, media and model (no "
        "weights read), show tokens per sample and a memory estimate, then exit; nothing is written."
    ),
    task_file: list[Path] = TaskFiles,
    num_processes: int = typer.Option(
        0, "--num-processes", help="Run under `accelerate launch` with this many processes (ranks)."
    ),
    accelerate_config: Path = typer.Option(
        None, "--accelerate-config", help="An accelerate config (e.g. a shipped DeepSpeed one) for the launch."
    ),
) -> None:
    """Run the config's stages (e.g. sft then grpo) and print held-out metrics before and after each."""
    import yaml

    from mmreason.config import ConfigError, load_config, to_dict

    if (num_processes > 1 or accelerate_config) and not dry_run and not _launched():
        argv = [*(["-v"] if OUTPUT["verbose"] else []), "train", config, *(overrides or [])]
        argv += ["--resume"] if resume else []
        argv += ["--overwrite"] if overwrite else []
        argv += [a for f in task_file or [] for a in ("--task-file", str(f))]
        raise typer.Exit(_relaunch(num_processes or None, argv, accelerate_config))
    _load_user_files(task_file)
    try:
        cfg = load_config(config, overrides or [])
    except ConfigError as exc:
        _fail(str(exc))
    from mmreason.train.stages import plan
    from mmreason.train.stages import train as run_train

    if dry_run:
        from mmreason.train.dryrun import dry_run as check_run

        console.print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        console.print(plan(cfg), highlight=False, markup=False, soft_wrap=True)
        check_run(cfg, lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True))
        console.print("[green]ok[/green]: the tasks, data, media and model are all there; nothing was written")
        return
    run = run_train(cfg, resume=resume, overwrite=overwrite, task_files=task_file or ())
    if not run.is_main:  # one summary per launch
        return
    console.print(_eval_table(run.history))
    console.print(f"run directory: {run.run_dir}")
    console.print(f"rollouts: {run.run_dir / 'rollouts'}  metrics: {run.run_dir / 'metrics.jsonl'}")
    report = run.run_dir / "report.html"
    if report.exists():
        console.print(f"report: {report}")


def _eval_table(history: list[dict]) -> Table:
    """The held-out metrics of a run's history (`mmreason.runs.inspection.eval_metrics_table`) as a rich table in
    long format: one row per task metric (task | metric), one column per evaluation (before, after each stage).
    Its width grows with the stages, not with the metrics; a label's first hyphen breaks its header in two
    ("after" over "s00-sft"), so four evaluations fit 80 columns and no header is cut short."""
    import pandas as pd

    from mmreason.runs.inspection import eval_metrics_table

    frame = eval_metrics_table(history)
    table = Table(title="held-out metrics")
    table.add_column("task", overflow="fold")
    table.add_column("metric", overflow="fold")
    for label in frame.index:
        table.add_column(str(label).replace("-", "\n", 1), justify="right", overflow="fold")
    for column in frame.columns:
        task, _, metric = str(column).partition("/")
        table.add_row(task, metric, *["" if pd.isna(v) else f"{v:.3f}" for v in frame[column]])
    return table


@app.command("eval")
def eval_cmd(
    target: Path = typer.Argument(..., help="A run directory (its latest checkpoint) or a checkpoint folder."),
    task: str = typer.Option(None, "--task", help="Task name (default: the run's task, when it has one)."),
    data: str = typer.Option(None, "--data", help="Held-out data: a file, a folder (default split: validation, val "
                             "or test), a save_to_disk folder or a hub id; path@split picks a split (default: the "
                             "run's held-out data of the task)."),
    limit: int = typer.Option(0, help="Evaluate at most this many records (0 = all)."),
    max_new_tokens: int = typer.Option(None, help="Completion length limit (default: the run's eval.max_new_tokens)."),
    batch_size: int = typer.Option(None, help="Prompts generated together (default: the run's eval.batch_size)."),
    think: bool = typer.Option(None, "--think/--no-think", help="Ask for <think> reasoning, or the answer only "
                               "(default: the run's think)."),
    min_pixels: int = typer.Option(None, "--min-pixels", help="Image pixel budget, lower bound (default: the run's "
                                   "model.min_pixels)."),
    max_pixels: int = typer.Option(None, "--max-pixels", help="Image pixel budget, upper bound (default: the run's "
                                   "model.max_pixels)."),
    budget: str = typer.Option(None, "--budget", help="A reasoning-budget level every prompt names, e.g. easy "
                               "(one of the run's budget.levels; default: the run's budget setting)."),
    split: str = SplitOpt,
    fmt: str = FormatOpt,
    column: list[str] = ColumnOpt,
    media_dir: Path = MediaDirOpt,
    task_file: list[Path] = TaskFiles,
) -> None:
    """Report a task's metrics for a checkpoint and write its generations to the rollout store. Settings not given
    come from the run's config.yaml and task files from its run.json (a checkpoint outside a run: the defaults)."""
    from mmreason.train.evaluate import eval_checkpoint

    _load_user_files(task_file)
    entry = None
    if data is not None:
        entry = _entry(task or "", data, split, fmt, column, media_dir)
        entry.update(val=entry.pop("train"), val_split=entry.pop("split"))
    flags = {"think": think, "min_pixels": min_pixels, "max_pixels": max_pixels, "max_new_tokens": max_new_tokens,
             "batch_size": batch_size, "budget": budget}
    result = eval_checkpoint(target, task, entry, limit, flags=flags, task_files=task_file or None)
    console.print(f"evaluated {escape(str(target))} with:\n{escape(result.settings.describe())}", highlight=False,
                  soft_wrap=True)
    where = data or "the run's held-out data"
    table = Table(title=f"{result.task} on {where}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.metrics.items():
        table.add_row(k, f"{v:.4f}")
    console.print(table)
    console.print(f"generations written to {result.run_dir / 'rollouts'} (stage {result.stage})", highlight=False,
                  soft_wrap=True)


@app.command()
def tasks(task_file: list[Path] = TaskFiles) -> None:
    """List the registered tasks with their record fields, rewards, answer format and metrics."""
    from mmreason.registry import TASKS

    _load_user_files(task_file)
    table = Table(title="tasks", show_lines=True)
    table.add_column("task", no_wrap=True)
    for col in ("record fields (? optional)", "rewards (weight)", "answer format", "metrics"):
        table.add_column(col)
    for name in TASKS.names():
        t = TASKS.get(name)
        rewards = ", ".join(f"{r} ({w:g})" for r, w in t.rewards.items())
        fields = "\n".join(f"{k}: {v}" for k, v in t.record_fields.items()) or ", ".join(t.required_fields)
        # escaped: answer formats hold "[x1, y1, x2, y2]", which rich would read as markup and drop
        cells = (fields, rewards, t.answer_format, ", ".join(t.metric_names))
        table.add_row(name, *(escape(c) for c in cells))
    console.print(table)


@data_app.command("check")
def data_check(
    data: str = DataRef,
    task: str = typer.Option(..., "--task", help="Task whose record format to check against."),
    split: str = SplitOpt,
    fmt: str = FormatOpt,
    column: list[str] = ColumnOpt,
    media_dir: Path = MediaDirOpt,
    task_file: list[Path] = TaskFiles,
) -> None:
    """Validate every record (media present and readable and all read, answer shape) and list all problems with
    line numbers; exit code 2 when there are any."""
    from mmreason.data.entries import read_entry
    from mmreason.data.records import DataError, check_records, format_problems
    from mmreason.registry import get_task

    _load_user_files(task_file)
    checked_task = get_task(task)
    entry = _entry(task, data, split, fmt, column, media_dir)
    try:
        ds = read_entry(entry, "train")
    except DataError as exc:
        _fail(str(exc))
    problems = check_records(ds, checked_task, ds.context())
    if problems:
        print(format_problems(problems, ds))
        raise typer.Exit(2)
    console.print(f"[green]ok[/green]: {len(ds)} record(s) of {escape(ds.source)} are valid for task {task!r}",
                  highlight=False)


@data_app.command("convert")
def data_convert(
    data: str = DataRef,
    fmt: str = FormatOpt,
    task: str = typer.Option(..., "--task", help="Task the records are for (checked against it)."),
    out: Path = typer.Option(..., "--out", help="Output JSONL file (embedded media go to <out stem>_media/)."),
    split: str = SplitOpt,
    column: list[str] = ColumnOpt,
    media_dir: Path = MediaDirOpt,
    task_file: list[Path] = TaskFiles,
) -> None:
    """Write any data (a peer format, a column mapping, a split) as mmreason's own JSONL, media beside it; records
    that fail the task's check are left out and listed."""
    from mmreason.data.convert import convert
    from mmreason.data.records import DataError, format_problems

    _load_user_files(task_file)
    if out.suffix not in (".jsonl", ".ndjson"):
        _fail(f"--out must be a .jsonl file, got {out}")
    try:
        result = convert(_entry(task, data, split, fmt, column, media_dir), out)
    except DataError as exc:
        _fail(str(exc))
    if result.problems:
        print(format_problems(result.problems, limit=20))
    console.print(f"wrote {result.written} {task} record(s) to {escape(str(out))}"
                  + (f" and {result.media_files} media file(s)" if result.media_files else "")
                  + (f"; left out {len(result.problems)} problem(s)" if result.problems else ""), highlight=False)
    if not result.written:
        raise typer.Exit(2)


@data_app.command("distill")
def data_distill(
    target: Path = typer.Argument(..., help="A run directory (its latest checkpoint) or a checkpoint folder."),
    data: str = typer.Option(..., "--data", help="The records to sample from: a file, a folder, a save_to_disk "
                             "folder or a hub id; path@split picks a split (default: train)."),
    out: Path = typer.Option(..., "--out", help="Output JSONL file (embedded media go to <out stem>_media/)."),
    task: str = typer.Option(None, "--task", help="Task name (default: the run's task, when it has one)."),
    samples: int = typer.Option(4, "--samples", help="Completions sampled per record (N)."),
    min_reward: float = typer.Option(None, "--min-reward", help="Keep completions whose total reward is at least "
                                     "this (default: the task's best total, every reward at 1)."),
    shortest: bool = typer.Option(False, "--shortest", help="Keep only the shortest kept completion per record."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus-sampling threshold (1.0: off)."),
    seed: int = typer.Option(None, "--seed", help="Seed of the sampling (default: the run's seed)."),
    max_new_tokens: int = typer.Option(None, help="Completion length limit (default: the run's eval.max_new_tokens)."),
    batch_size: int = typer.Option(None, help="Records sampled together (default: the run's eval.batch_size)."),
    split: str = SplitOpt,
    fmt: str = FormatOpt,
    column: list[str] = ColumnOpt,
    media_dir: Path = MediaDirOpt,
    task_file: list[Path] = TaskFiles,
) -> None:
    """Rejection-sampled SFT data: sample N completions per record with a trained policy, keep those whose total
    reward reaches --min-reward, and write each as the record with its completion as `sft_target` (the verbatim SFT
    target), so `mmreason train` on the output trains SFT on exactly the kept completions."""
    from mmreason.config import ConfigError
    from mmreason.data.records import DataError, format_problems
    from mmreason.train.distill import distill

    _load_user_files(task_file)
    if out.suffix not in (".jsonl", ".ndjson"):
        _fail(f"--out must be a .jsonl file, got {out}")
    for bad, message in ((samples < 1, "--samples must be >= 1"), (not temperature > 0, "--temperature must be > 0"),
                         (not 0 < top_p <= 1, "--top-p must be in (0, 1]")):
        if bad:
            _fail(message)
    flags = {"max_new_tokens": max_new_tokens, "batch_size": batch_size}
    try:
        result = distill(target, _entry(task or "", data, split, fmt, column, media_dir), out, samples=samples,
                         min_reward=min_reward, shortest=shortest, temperature=temperature, top_p=top_p, seed=seed,
                         flags=flags, task_files=task_file or None)
    except (FileNotFoundError, DataError, ConfigError) as exc:
        _fail(str(exc))
    if result.problems:
        print(format_problems(result.problems, limit=20))
    summary = (f"kept {result.written} of {result.sampled} completion(s), from {result.records_kept} of "
               f"{result.records} {result.task} record(s)" + (f"; {result.reward_errors} reward error(s)"
                                                               if result.reward_errors else ""))
    if not result.written:
        _fail(f"{summary}; nothing written: lower --min-reward or sample more (--samples)")
    console.print(f"{escape(summary)}; wrote {escape(str(out))}"
                  + (f" and {result.media_files} media file(s)" if result.media_files else ""), highlight=False)


@make_app.command("synthetic")
def make_synthetic_cmd(
    task: str = typer.Option(..., "--task", help=" | ".join(SYNTHETIC_TASKS)),
    out: Path = typer.Option(..., "--out", help="Output folder (images or videos + train.jsonl + val.jsonl)."),
    n: int = typer.Option(1000, "--n", help="Number of records."),
    seed: int = typer.Option(0, "--seed"),
    option: list[str] = typer.Option(
        [], "--option", "-o", metavar="KEY=VALUE",
        help="A maker option, repeatable; VALUE is read as JSON where it parses (2, true, [2, 3]), else as text. "
        "E.g. -o cells=2 (grounding), -o layout_cue=true (jigsaw), -o ops=+ (math); the options of each maker are "
        "in mmreason.data.synthetic.make_synthetic's docstring."),
) -> None:
    """Procedurally generated, seeded datasets the tiny default model can learn from (no downloads)."""
    from mmreason.data.synthetic import MAKERS, make_synthetic

    if task not in MAKERS:
        _fail(f"no synthetic maker for task {task!r}; known: {', '.join(MAKERS)}{_did_you_mean(task, MAKERS)}")
    options = dict(_maker_option(text) for text in option)
    try:
        path = make_synthetic(task, out, n=n, seed=seed, **options)
    except (ValueError, TypeError) as exc:  # a bad --n, an unknown or ill-typed --option: the message says which
        _fail(str(exc))
    console.print(f"wrote {n} {task} records to {path}")


def _maker_option(text: str) -> tuple[str, Any]:
    """`key=value` as (key, value): the value as JSON where it parses, else the text itself."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        _fail(f"--option must look like key=value (e.g. cells=2), got {text!r}")
    try:
        return key.strip(), json.loads(raw)
    except json.JSONDecodeError:
        return key.strip(), raw


@make_app.command("jigsaw")
def make_jigsaw_cmd(
    images: Path = typer.Option(..., "--images", help="Folder of images to cut into puzzles."),
    out: Path = typer.Option(..., "--out"),
    grid: str = typer.Option("2x2", "--grid", help="rows x cols, e.g. 2x2 or 3x3"),
    per_image: int = typer.Option(1, "--per-image"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Build a jigsaw dataset (shuffled tiles + ground-truth order) from any folder of images."""
    from mmreason.data.synthetic import make_jigsaw_dataset

    try:
        rows, cols = (int(x) for x in grid.lower().split("x"))
    except ValueError:
        _fail(f"--grid must look like 2x2 or 3x4, got {grid!r}")
    try:
        build = make_jigsaw_dataset(images, out, grid=(rows, cols), per_image=per_image, seed=seed)
    except ValueError as exc:  # a grid the jigsaw task would refuse, a bad --per-image: checked before any work
        _fail(str(exc))
    console.print(
        f"wrote {build.n_train} train / {build.n_val} val puzzles to {build.out_dir}"
        + (f"; skipped {len(build.skipped)} unusable image(s)" if build.skipped else "")
    )


@app.command("tiny-model")
def tiny_model(
    out_dir: Path = typer.Argument(..., help="Folder to save the model, processor and tokenizer in."),
    arch: str = typer.Option("qwen2_5_vl", help=f"Model family: {', '.join(family_names())}."),
    hidden_size: int = typer.Option(64),
    layers: int = typer.Option(2),
    seed: int = typer.Option(0),
) -> None:
    """Build the tiny offline VLM (random init, locally trained tokenizer) and save it with save_pretrained."""
    from mmreason.models.tiny import build_tiny

    model, _ = build_tiny(out_dir, arch=arch, hidden_size=hidden_size, layers=layers, seed=seed)
    n = sum(p.numel() for p in model.parameters())
    console.print(f"saved a {n / 1e6:.2f}M-parameter {arch} model to {out_dir}")


@app.command("new-task")
def new_task(
    name: str = typer.Argument(..., help="The task's name (a Python identifier); the file is NAME.py."),
    out: Path = typer.Option(Path("."), "--out", help="Folder to write NAME.py in (created if missing)."),
) -> None:
    """Write a working one-file task (reward, Task, metrics, visualize) with a tiny data maker, to edit into yours."""
    from mmreason.tasks.template import write_task_file

    try:
        path = write_task_file(name, out)
    except (ValueError, FileExistsError) as exc:
        _fail(str(exc))
    console.print(f"wrote {path}; make data with: python {path} make-data data/{name}")
    console.print(f"then: mmreason data check data/{name}/train.jsonl --task {name} --task-file {path}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A run directory (runs/<name>)."),
    out: Path = typer.Option(None, "--out", help="Output HTML file (default: RUN_DIR/report.html)."),
    task_file: list[Path] = TaskFiles,
) -> None:
    """Write a run's self-contained HTML report: curves, group spreads, best/worst samples, eval generations."""
    from mmreason.runs.report import write_report

    _load_user_files(task_file)
    path = write_report(run_dir, out, load_task_files=not task_file)  # else the task files the run recorded
    console.print(f"report: {path}")


def _launched() -> bool:
    """Whether this process already is one rank of a multi-process launch."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _relaunch(num_processes: int | None, argv: list[str], config_file: Path | None) -> int:
    """Re-run `mmreason <argv>` under accelerate's launcher (thin wrapper: `mmreason.train.dist.relaunch`)."""
    from mmreason.train.dist import check_launch_config, relaunch

    if config_file is not None:
        if not config_file.is_file():
            _fail(f"--accelerate-config: no such file {config_file}")
        check_launch_config(config_file)
    count = num_processes or "the config file's"
    console.print(f"launching {count} processes with accelerate")
    return relaunch(num_processes, argv, str(config_file) if config_file else None)


# module -> the error class it defines for mistakes in the user's input (config, data, model, media, registry)
USER_ERRORS = {
    "mmreason.config": "ConfigError",
    "mmreason.data.locate": "DataError",
    "mmreason.models.family": "FamilyError",
    "mmreason.models.policy": "ModelNotFoundError",
    "mmreason.processors.errors": "MediaError",
    "mmreason.registry": "RegistryError",
}


def _is_user_error(exc: BaseException) -> bool:
    """Whether `exc` was caused by the user's input: shown as one clear line, without a traceback.

    Only modules already imported are asked (an error class can be raised only once its module is loaded), so a
    command that never touched torch does not import it here: `--help` stays fast."""
    classes = [getattr(sys.modules[m], name) for m, name in USER_ERRORS.items() if m in sys.modules]
    return isinstance(exc, (FileNotFoundError, PermissionError, *classes))  # PermissionError: a read-only folder


def main() -> None:
    """Entry point: user errors (config, data, model, media, registry) exit 2 and a stopped run exits 1, each with
    one clear message instead of a traceback."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if _is_user_error(exc):
            _error(str(exc))
            sys.exit(2)
        if not _stopped_run(exc):
            raise
        _error(str(exc))
        sys.exit(1)


def _stopped_run(exc: Exception) -> bool:
    """Whether `exc` is mmreason.train.step.TrainingStopped (only a run raises it: no torch import to check)."""
    step = sys.modules.get("mmreason.train.step")
    return step is not None and isinstance(exc, step.TrainingStopped)


if __name__ == "__main__":
    main()
