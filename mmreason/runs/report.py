"""`mmreason report`: one self-contained HTML page per run (written to `<run_dir>/report.html` at the end of
`mmreason train`): run summary, held-out metrics before / after each stage, reward curves, the spread of rewards
within GRPO groups (and per task the share of groups that give no signal), per-prompt pass rates, the best /
worst / most improved samples drawn by their task's `visualize` with the completion's reasoning and answer, and the
evaluations' generations.

The page needs nothing else: images are base64 PNGs, the CSS is inline and there is no script. Every piece of text
that comes from a model, a prompt or a data file goes through `html.escape`, so a completion holding markup shows as
text and never runs. All data comes from `mmreason.runs.inspection`.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from mmreason.runs import inspection as ins

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 4000  # longer completions are cut in the page (the store keeps them whole)
MAX_IMAGE_WIDTH = 720
# C0 control characters (but tab and newline) shown as their Unicode "control picture" instead of vanishing
_CONTROLS = {c: 0x2400 + c for c in range(32) if chr(c) not in "\t\n"} | {0x7F: 0x2421}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1200px;
       padding: 0 16px;
       color: #1d1d1f; background: #fafafa; line-height: 1.4; }
h1 { font-size: 1.6em; margin-bottom: 4px; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
h3 { margin: 18px 0 6px; } h4 { margin: 8px 0 2px; font-size: 0.85em; color: #555; text-transform: uppercase; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; background: #fff; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } th { background: #f0f0f0; }
pre { white-space: pre-wrap; word-break: break-word; background: #f4f4f4; border-radius: 4px; padding: 6px 8px;
      margin: 2px 0; font-size: 0.85em; max-height: 320px; overflow: auto; }
.card { display: flex; gap: 16px; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 12px;
        margin: 12px 0; } .card .pic { flex: 0 0 auto; max-width: 60%; } .card .text { flex: 1 1 auto; min-width: 0; }
.meta { font-size: 0.85em; color: #333; margin-bottom: 6px; } .note { color: #8a5a00; font-style: italic; }
img { max-width: 100%; height: auto; border: 1px solid #eee; } .figure img { border: none; }
.grid { display: flex; flex-wrap: wrap; gap: 12px; } .grid .cell { background: #fff; border: 1px solid #ddd;
        border-radius: 6px; padding: 8px; max-width: 380px; font-size: 0.85em; }
.good { color: #067d17; } .bad { color: #b3261e; } summary { cursor: pointer; color: #555; font-size: 0.85em; }
"""


def write_report(
    run_dir: str | Path, out: str | Path | None = None, *, n: int = 4, eval_samples: int = 8,
    load_task_files: bool = True,
) -> Path:
    """Write the run's HTML report (default `<run_dir>/report.html`) and return its path.

    n: samples shown in each of the best / worst / most improved sections and drawn per task for the last
        evaluation; eval_samples: held-out samples per task in the generations table. load_task_files: import the
    task files the run recorded in run.json first, so its own tasks can draw their samples.
    """
    if load_task_files:
        _load_task_files(Path(run_dir))
    view = ins.load_run(run_dir)
    page = build_report(view, n=n, eval_samples=eval_samples)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # a browser (or a CI artifact upload) reading the report while it is rewritten sees the old page or the new one
    try:
        tmp.write_text(page, encoding="utf-8", errors="replace")
        os.replace(tmp, path)
    except PermissionError:  # a read-only run folder: one line saying what to do (the CLI prints it)
        raise PermissionError(f"cannot write the report into {path.parent} (not writable); choose another file with "
                              "--out") from None
    finally:
        tmp.unlink(missing_ok=True)  # nothing left behind when the folder cannot take the page
    return path


def _load_task_files(run_dir: Path) -> None:
    """The run's recorded task files; one that fails to load costs only its samples' pictures (a note each)."""
    from mmreason.registry import load_user_file
    from mmreason.runs.run import recorded_task_files

    for path in recorded_task_files(run_dir):
        try:
            load_user_file(path)
        except Exception as exc:  # e.g. its tasks are registered already from another copy of the file
            log.warning("report: task file %s not loaded: %s: %s", path, type(exc).__name__, exc)


def build_report(view: ins.RunView, *, n: int = 4, eval_samples: int = 8) -> str:
    """The report page as one HTML string."""
    sections = [
        _summary(view),
        _eval_section(view),
        _curves_section(view),
        _prompts_section(view),
        _samples_section(view, n),
        _eval_generations(view, n, eval_samples),
    ]
    title = esc(f"mmreason report: {view.name}")
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<style>{CSS}</style>\n</head>\n'
        f"<body>\n<h1>{title}</h1>\n" + "\n".join(sections) + "\n</body>\n</html>\n"
    )


# ------------------------------------------------------------------------------------------------ pieces


def esc(value: Any) -> str:
    """Text for the page: HTML-escaped (quotes too) with control characters made visible."""
    return html.escape(str(value), quote=True).translate(_CONTROLS)


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool) or value is None:
        return esc(value)
    if isinstance(value, int | float):
        return "" if isinstance(value, float) and math.isnan(value) else f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return esc(value)


def clip_multiline(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """`text` cut to `limit` characters with its line breaks kept (for <pre> blocks), ending with how many characters
    were cut; `mmreason.tasks.common.clip_text` instead flattens text to one caption line."""
    return text if len(text) <= limit else f"{text[:limit]}\n… ({len(text) - limit} more characters)"


def image_tag(image: Image.Image, alt: str, max_width: int = MAX_IMAGE_WIDTH) -> str:
    """An <img> holding the image as a base64 PNG (scaled down to max_width)."""
    image = image.convert("RGB")
    if image.width > max_width:
        image = image.resize((max_width, max(1, round(image.height * max_width / image.width))), Image.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}" width="{image.width}" height="{image.height}">'


def figure_tag(fig: Figure, alt: str, dpi: int = 80) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<div class="figure"><img src="data:image/png;base64,{data}" alt="{esc(alt)}"></div>'


def table_html(headers: Sequence[str], rows: Iterable[Sequence[str]], numeric: Sequence[bool] = ()) -> str:
    """A table from already-escaped cells."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{c}</td>' if i < len(numeric) and numeric[i] else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table>\n<tr>{head}</tr>\n" + "\n".join(body) + "\n</table>"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}">\n<h2>{esc(title)}</h2>\n{body}\n</section>'


def _safe(what: str, build: Any) -> str:
    """One broken piece (a plot, a user task's visualize) becomes a note in the page instead of no report."""
    try:
        return build()
    except Exception as exc:  # any failure of one piece must leave the rest of the report
        log.warning("report: %s failed: %s: %s", what, type(exc).__name__, exc)
        return f'<p class="note">{esc(what)} unavailable: {esc(type(exc).__name__)}: {esc(exc)}</p>'


# ------------------------------------------------------------------------------------------------ sections


def _summary(view: ins.RunView) -> str:
    cfg = view.config
    stages = ", ".join(f"{s} ({getattr(cfg, s).steps} steps)" for s in cfg.stages)
    rows = [
        ("run directory", esc(view.run_dir.resolve())),
        ("model", f"{esc(view.info.get('model', cfg.model.name))} ({esc(view.family)}, {esc(cfg.model.dtype)})"),
        ("stages", esc(stages)),
        ("prompt style", "think + answer" if cfg.think else "answer only"),
        (
            "GRPO",
            esc(
                f"G={cfg.grpo.group_size}, prompts/step={cfg.grpo.prompts_per_step}, lr={cfg.grpo.lr}, "
                f"beta={cfg.grpo.beta}, loss_agg={cfg.grpo.loss_agg}, max_new_tokens={cfg.grpo.max_new_tokens}"
            ),
        ),
        (
            "rollouts",
            esc(f"{len(view.rollouts)} completions in {len(view.stages)} stage(s): " + ", ".join(view.stages)),
        ),
        ("report written", esc(dt.datetime.now().isoformat(timespec="seconds"))),
    ]
    for d in view.info.get("data", []):
        rows.append(
            (f"task {esc(d.get('task'))}", esc(f"train={d.get('train')} val={d.get('val')} weight={d.get('weight')}"))
        )
    return _section("summary", "Run", table_html(["", ""], [(f"<b>{k}</b>", v) for k, v in rows]))


def _eval_section(view: ins.RunView) -> str:
    table = ins.eval_table(view)
    if table.empty:
        return _section("eval", "Held-out metrics", _none("no evaluation in metrics.jsonl"))
    # metrics down, evaluations across: a run has few evaluations but tasks x metrics can be many
    columns = [esc(label) for label in table.index]
    values = table.T
    if len(table) > 1:
        values = values.assign(change=table.iloc[-1] - table.iloc[0])
        columns.append(f"change ({esc(table.index[-1])} − {esc(table.index[0])})")
    rows = [[esc(metric), *(fmt(v) for v in row)] for metric, row in zip(values.index, values.to_numpy(), strict=True)]
    note = "<p>Greedy generations on each task's held-out file, before the first stage and after each stage.</p>"
    numeric = [False] + [True] * len(columns)
    return _section("eval", "Held-out metrics", note + table_html(["task/metric", *columns], rows, numeric))


def _curves_section(view: ins.RunView) -> str:
    parts = [
        "<h3>Reward per step</h3>",
        _safe("reward curves", lambda: figure_tag(ins.reward_curves(view), "reward curves")),
        "<h3>Training statistics</h3>",
        _safe("training curves", lambda: figure_tag(ins.training_curves(view), "training curves")),
        *(["<h3>SFT statistics</h3>", _safe("SFT curves", lambda: figure_tag(sft_curves(view), "SFT curves"))]
          if "sft" in view.config.stages else []),
        "<h3>Reward spread within groups</h3>",
        "<p>GRPO learns only from groups whose completions score differently; a group with zero spread gives "
        "no gradient.</p>",
        _safe("group distribution", lambda: figure_tag(ins.group_reward_distribution(view), "group rewards")),
        "<p>Per task: the share of groups whose completions all got the same reward. A task near 1 has stopped "
        "giving signal (always solved, never solved, or a reward that cannot tell its answers apart).</p>",
        _safe("zero-spread groups per task", lambda: figure_tag(zero_spread_by_task(view), "zero-spread groups")),
    ]
    return _section("curves", "Training curves", "\n".join(parts))


def _prompts_section(view: ins.RunView) -> str:
    """Per-prompt pass rates of the GRPO stages (the newest checkpoint's `mmreason.train.prompt_stats`): a summary
    and a histogram; nothing for a run without GRPO."""
    if "grpo" not in view.config.stages:
        return ""
    return _section("prompts", "Prompt pass rates", _safe("prompt pass rates", lambda: _prompts_body(view)))


def _prompts_body(view: ins.RunView) -> str:
    from mmreason.train.prompt_stats import read_prompt_stats

    stats = read_prompt_stats(view.run_dir)
    if stats is None:
        return _none("no per-prompt statistics saved (no GRPO checkpoint)")
    frame = pd.DataFrame(stats.rows())
    rates = frame["pass_rate"]
    summary = [
        ("prompts drawn", f"{len(frame)} ({int(frame['draws'].sum())} groups)"),
        ("never passed (pass rate 0)", fmt(float((rates <= 0).mean()))),
        ("always passed (pass rate 1)", fmt(float((rates >= 1).mean()))),
        ("median pass rate", fmt(float(rates.median()))),
        ("mean share of groups with signal", fmt(float(frame["signal_share"].mean()))),
    ]
    note = (
        "<p>A prompt's pass rate is the mean accuracy of all its completions over the run (grpo.filter.reward "
        "defines accuracy); a group has signal when its completions' total rewards differ.</p>"
    )
    table = table_html(["", ""], [(esc(k), v) for k, v in summary], [False, True])
    figure = _safe("pass-rate histogram", lambda: figure_tag(pass_rate_histogram(rates), "prompt pass rates"))
    return note + table + figure


def pass_rate_histogram(rates: pd.Series) -> Figure:
    """How many prompts have each pass rate (10 bins)."""
    fig = Figure(figsize=(6.4, 2.8), layout="constrained")
    ax = fig.subplots()
    ax.hist(rates.dropna(), bins=10, color="#4a7ab5", edgecolor="white")
    ax.set_xlabel("pass rate")
    ax.set_ylabel("prompts")
    ax.set_title("prompt pass rates over the run", fontsize=10)
    ax.grid(True, alpha=0.3)
    return fig


def _samples_section(view: ins.RunView, n: int) -> str:
    stage = "grpo" if any(ins.stage_matches(s, "grpo") for s in view.stages) else None
    where = "training rollouts" if stage else "all rollouts"
    parts = []
    for kind, title in (("best", "Best completions"), ("worst", "Worst completions")):
        rows = ins.select_samples(view, kind, n, stage=stage, per_sample=True)
        cards = [_card(view, row) for _, row in rows.iterrows()]
        heading = f"<h3>{esc(title)} ({esc(where)}, by reward_total, one per sample)</h3>\n"
        parts.append(heading + ("\n".join(cards) or _none()))
    improved = ins.select_samples(view, "most_improved", n)
    improved = improved[improved["improvement"] > 0]
    cards = [_card(view, row, before=view.rollouts.loc[row["first_row"]]) for _, row in improved.iterrows()]
    parts.append(
        "<h3>Most improved samples</h3>\n<p>Mean reward of a sample's completions at its last appearance (training "
        "step or evaluation) minus that at its first.</p>\n" + ("\n".join(cards) or _none("no sample improved"))
    )
    return _section("samples", "Samples", "\n".join(parts))


def _none(text: str = "nothing to show") -> str:
    return f'<p class="note">{esc(text)}</p>'


def _card(view: ins.RunView, row: pd.Series, before: pd.Series | None = None) -> str:
    picture = _safe(
        f"picture of {row['task']} sample {row['sample_id']}",
        lambda: image_tag(ins.render_row(view, row), f"{row['task']} {row['sample_id']}"),
    )
    text = _completion_html(str(row["completion"] or ""))
    if before is not None:
        meta = (
            f"improved {fmt(row['improvement'])}: mean reward {fmt(row['first_reward'])} at "
            f"{esc(row['first_stage'])} step {esc(row['first_step'])} → {fmt(row['last_reward'])} at "
            f"{esc(row['stage'])} step {esc(row['step'])}"
        )
        text = (
            f'<p class="meta">{meta}</p><h4>now</h4>{text}'
            f"<details><summary>best completion at its first appearance (reward "
            f"{fmt(before['reward_total'])})</summary>{_completion_html(str(before['completion'] or ''))}"
            f"</details>"
        )
    prompt = f"<details><summary>prompt</summary><pre>{esc(clip_multiline(str(row['prompt'])))}</pre></details>"
    text += _turns_html(row.get("turns"))
    return (
        f'<div class="card"><div class="pic">{picture}</div>\n<div class="text"><div class="meta">'
        f"{_row_meta(view, row)}</div>{text}{prompt}</div></div>"
    )


def _turns_html(turns_json: Any) -> str:
    """Every turn of a multi-turn (tool) trajectory, with the tool's images; empty for single-turn rows."""
    if not isinstance(turns_json, str) or not turns_json:
        return ""
    try:
        turns = json.loads(turns_json)
    except ValueError:
        return _none("unreadable turns")
    parts = []
    for i, turn in enumerate(turns):
        pics = "".join(
            _safe(f"tool image {p}", lambda p=p: image_tag(Image.open(p), "tool output", 160))
            for p in turn.get("images", [])
        )
        parts.append(
            f"<h4>turn {i + 1}: {esc(turn.get('role', ''))}</h4><pre>{esc(clip_multiline(str(turn.get('text', ''))))}"
            f"</pre>{pics}"
        )
    return f"<details><summary>all {len(turns)} turns</summary>{''.join(parts)}</details>"


def _row_meta(view: ins.RunView, row: pd.Series) -> str:
    rewards = [
        f"{esc(name)} {fmt(row.get(f'reward_{name}'))}"
        for name in view.reward_names
        if not _missing(row.get(f"reward_{name}"))
    ]
    parts = [
        f"<b>{esc(row['task'])}</b> · sample <code>{esc(row['sample_id'])}</code>",
        f"{esc(row['stage'])} step {esc(row['step'])} · group {esc(row['group_id'])} #{esc(row['completion_index'])}",
        f"<b>reward_total {fmt(row['reward_total'])}</b> ({', '.join(rewards)})",
        f"advantage {fmt(row['advantage'])} · {esc(row['completion_len'])} tokens"
        + (' · <span class="bad">truncated</span>' if bool(row["truncated"]) else ""),
    ]
    return "<br>".join(parts)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _completion_html(completion: str) -> str:
    reasoning, answer = ins.split_completion(completion)
    parts = []
    if reasoning is not None:
        parts.append(f"<h4>reasoning</h4><pre>{esc(clip_multiline(reasoning))}</pre>")
    if answer is not None:
        parts.append(f"<h4>answer</h4><pre>{esc(clip_multiline(answer))}</pre>")
    else:
        parts.append('<p class="note">no &lt;answer&gt;…&lt;/answer&gt; in the completion</p>')
    parts.append(
        f"<details><summary>raw completion ({len(completion)} characters)</summary>"
        f"<pre>{esc(clip_multiline(completion))}</pre></details>"
    )
    return "".join(parts)


def _eval_generations(view: ins.RunView, n: int, per_task: int) -> str:
    rows = view.rollouts[view.rollouts["stage"].str.startswith("eval-")]
    if rows.empty:
        return _section("eval-generations", "Evaluation generations", _none("no evaluation generations stored"))
    # one column per evaluation: a stage's periodic evaluations share a store stage, one step each
    rows = rows.assign(_eval=[str(stage).removeprefix("eval-") + (f"-step{int(step)}" if step else "")
                              for stage, step in zip(rows["stage"], rows["step"], strict=True)])
    evals = list(dict.fromkeys(rows["_eval"]))
    parts = ["<p>Each held-out sample's greedy answer and reward_total at every evaluation.</p>"]
    for task, part in rows.groupby("task", sort=True):
        ids = list(dict.fromkeys(part["sample_id"]))[:per_task]
        headers = ["sample", *(esc(e) for e in evals)]
        table_rows = [[f"<code>{esc(sid)}</code>", *(_eval_cell(part, sid, e) for e in evals)] for sid in ids]
        last = part[part["_eval"] == evals[-1]].head(n)
        cells = [_eval_picture(view, row) for _, row in last.iterrows()]
        parts.append(
            f"<h3>{esc(task)}</h3>\n"
            + table_html(headers, table_rows)
            + f'\n<h4>{esc(evals[-1])}, drawn</h4>\n<div class="grid">{"".join(cells)}</div>'
        )
    return _section("eval-generations", "Evaluation generations", "\n".join(parts))


def _eval_cell(part: pd.DataFrame, sample_id: str, evaluation: str) -> str:
    hit = part[(part["sample_id"] == sample_id) & (part["_eval"] == evaluation)]
    if hit.empty:
        return ""
    row = hit.iloc[0]
    _, answer = ins.split_completion(str(row["completion"] or ""))
    shown = answer if answer is not None else str(row["completion"] or "")
    label = "answer" if answer is not None else "no answer tag; raw"
    return f"<b>{fmt(row['reward_total'])}</b> <small>({label})</small><pre>{esc(clip_multiline(shown, 300))}</pre>"


def _eval_picture(view: ins.RunView, row: pd.Series) -> str:
    picture = _safe(
        f"picture of {row['task']} sample {row['sample_id']}",
        lambda: image_tag(ins.render_row(view, row), f"{row['task']} {row['sample_id']}", max_width=360),
    )
    return (
        f'<div class="cell">{picture}<div><code>{esc(row["sample_id"])}</code> · reward_total '
        f"{fmt(row['reward_total'])}</div></div>"
    )


SFT_METRICS = ("loss", "grad_norm", "lr")


def sft_curves(view: ins.RunView, keys: Sequence[str] = SFT_METRICS) -> Figure:
    """Loss, gradient norm and learning rate of the SFT lines of metrics.jsonl per step, one line per SFT stage."""
    m = view.metrics
    rows = m[m["stage"] == "sft"] if "stage" in m else m
    keys = [k for k in keys if k in rows and rows[k].notna().any()]
    fig = Figure(figsize=(3.4 * max(1, len(keys)), 3.0), layout="constrained")
    if rows.empty or not keys:
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no SFT metrics to plot", ha="center", va="center", fontsize=12)
        ax.set_axis_off()
        return fig
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=True):
        for index, part in rows.groupby("stage_index", sort=True):
            ax.plot(part["step"], part[key], marker="o", markersize=3, label=f"sft-{index}")
        ax.set_title(f"sft {key}", fontsize=10)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    if rows["stage_index"].nunique() > 1:
        axes[0].legend(fontsize=8)
    return fig


ZERO_VAR_PREFIX = "zero_var_groups/"


def zero_spread_table(view: ins.RunView) -> pd.DataFrame:
    """Share of zero-spread groups per (stage, step, task) of the GRPO stages: the `zero_var_groups/<task>` metrics,
    or, for runs that predate them, the same share computed from the rollout store (all totals of a group equal)."""
    m = view.metrics
    cols = [c for c in m.columns if str(c).startswith(ZERO_VAR_PREFIX)]
    rows = m[m["stage"] == "grpo"] if "stage" in m else m.iloc[0:0]
    if cols and not rows.empty:
        long = rows.melt(id_vars=["stage_index", "step"], value_vars=cols, var_name="task", value_name="share")
        long["stage"] = "grpo-" + long["stage_index"].astype(str)
        long["task"] = long["task"].str.removeprefix(ZERO_VAR_PREFIX)
        return long.dropna(subset=["share"])[["stage", "step", "task", "share"]]
    stats = ins.group_stats(view)
    if stats.empty:
        return pd.DataFrame(columns=["stage", "step", "task", "share"])
    stats["share"] = (stats["max"] == stats["min"]).astype(float)
    return stats.groupby(["stage", "step", "task"], sort=False)["share"].mean().reset_index()


def zero_spread_by_task(view: ins.RunView) -> Figure:
    """One line per task (and GRPO stage): the share of its groups with zero reward spread, per step."""
    table = zero_spread_table(view)
    fig = Figure(figsize=(6.4, 3.2), layout="constrained")
    ax = fig.subplots()
    if table.empty:
        ax.text(0.5, 0.5, "no GRPO groups to plot", ha="center", va="center", fontsize=12)
        ax.set_axis_off()
        return fig
    several = table["stage"].nunique() > 1
    for (stage, task), part in table.groupby(["stage", "task"], sort=True):
        ax.plot(part["step"], part["share"], marker="o", markersize=3, label=f"{task} ({stage})" if several else task)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("step")
    ax.set_ylabel("share of groups with zero spread")
    ax.set_title("groups that give no signal, per task", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig
