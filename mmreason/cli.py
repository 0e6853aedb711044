"""The `mmreason` command line: train, eval, tasks, data check / make, tiny-model, report."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mmreason.data.synthetic import MAKERS as SYNTHETIC_MAKERS  # light: numpy + PIL, for the --task help
from mmreason.models.family import family_names

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Multimodal visual-reasoning RL: SFT + GRPO.",
)
data_app = typer.Typer(no_args_is_help=True, help="Validate and make datasets.")
make_app = typer.Typer(no_args_is_help=True, help="Make datasets (synthetic tasks, jigsaw puzzles from images).")
app.add_typer(data_app, name="data")
data_app.add_typer(make_app, name="make")
console = Console()

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
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved config and plan, then exit."),
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
        argv = ["train", config, *(overrides or []), *(["--resume"] if resume else [])]
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
        console.print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        console.print(plan(cfg))
        return
    run = run_train(cfg, resume=resume)
    if not run.is_main:  # one summary per launch
        return
    console.print(_eval_table(run.history))
    console.print(f"run directory: {run.run_dir}")
    console.print(f"rollouts: {run.run_dir / 'rollouts'}  metrics: {run.run_dir / 'metrics.jsonl'}")
    report = run.run_dir / "report.html"
    if report.exists():
        console.print(f"report: {report}")


def _eval_table(history: list[dict]) -> Table:
    """The held-out metrics of a run's history (`mmreason.runs.inspection.eval_metrics_table`) as a rich table:
    one row per evaluation (before, after each stage), one column per task metric."""
    import pandas as pd

    from mmreason.runs.inspection import eval_metrics_table

    frame = eval_metrics_table(history)
    table = Table(title="held-out metrics")
    table.add_column("when")
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for label, values in zip(frame.index, frame.itertuples(index=False), strict=True):
        table.add_row(str(label), *["" if pd.isna(v) else f"{v:.3f}" for v in values])
    return table


@app.command("eval")
def eval_cmd(
    target: Path = typer.Argument(..., help="A run directory (its latest checkpoint) or a checkpoint folder."),
    task: str = typer.Option(..., "--task", help="Task name."),
    data: str = typer.Option(..., "--data", help="Held-out data: a file, a folder (default split: validation, val "
                             "or test), a save_to_disk folder or a hub id; path@split picks a split."),
    limit: int = typer.Option(0, help="Evaluate at most this many records (0 = all)."),
    max_new_tokens: int = typer.Option(64),
    batch_size: int = typer.Option(16),
    think: bool = typer.Option(True, help="Ask for <think> reasoning (False: answer only)."),
    split: str = SplitOpt,
    fmt: str = FormatOpt,
    column: list[str] = ColumnOpt,
    media_dir: Path = MediaDirOpt,
    task_file: list[Path] = TaskFiles,
) -> None:
    """Report a task's metrics for a checkpoint and write its generations to the rollout store."""
    from mmreason.train.evaluate import eval_checkpoint

    _load_user_files(task_file)
    entry = _entry(task, data, split, fmt, column, media_dir)
    entry.update(val=entry.pop("train"), val_split=entry.pop("split"))
    metrics, out_dir = eval_checkpoint(target, task, entry, limit, max_new_tokens, batch_size, think)
    table = Table(title=f"{task} on {data}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4f}")
    console.print(table)
    console.print(f"generations written to {out_dir / 'rollouts'}")


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


@make_app.command("synthetic")
def make_synthetic_cmd(
    task: str = typer.Option(..., "--task", help=" | ".join(SYNTHETIC_MAKERS)),
    out: Path = typer.Option(..., "--out", help="Output folder (images or videos + train.jsonl + val.jsonl)."),
    n: int = typer.Option(1000, "--n", help="Number of records."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Procedurally generated, seeded datasets the tiny default model can learn from (no downloads)."""
    from mmreason.data.synthetic import make_synthetic

    if task not in SYNTHETIC_MAKERS:
        _fail(f"no synthetic maker for task {task!r}; known: {', '.join(SYNTHETIC_MAKERS)}")
    try:
        path = make_synthetic(task, out, n=n, seed=seed)
    except ValueError as exc:  # a bad --n and the like: the maker's message says which
        _fail(str(exc))
    console.print(f"wrote {n} {task} records to {path}")


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
    build = make_jigsaw_dataset(images, out, grid=(rows, cols), per_image=per_image, seed=seed)
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
    path = write_report(run_dir, out)
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


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's input: shown as one clear line, without a traceback."""
    from mmreason.config import ConfigError
    from mmreason.data.records import DataError
    from mmreason.models.family import FamilyError
    from mmreason.processors import MediaError
    from mmreason.registry import RegistryError

    return ConfigError, DataError, FamilyError, MediaError, RegistryError, FileNotFoundError


def main() -> None:
    """Entry point: user errors (config, data, media, registry) exit 2 and a stopped run exits 1, each with one
    clear message instead of a traceback."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except _user_errors() as exc:
        _error(str(exc))
        sys.exit(2)
    except Exception as exc:
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
