"""Where a run reports besides its own files: experiment trackers, and the run's log file `train.log`.

`Trackers` feeds accelerate's tracker classes (`accelerate.tracking`: TensorBoard, W&B, SwanLab, MLflow, ...) every
metrics line `mmreason.runs.run.log_metrics` writes, and the pictures evaluations draw with their task's
`visualize`; `check_trackers` refuses a named tracker whose package is missing before a run loads anything.

Tracker keys are the metrics.jsonl keys: under the line's stage for training lines (`sft/loss`, `grpo/loss`,
`grpo/reward_mean`: SFT's and GRPO's losses are different quantities) and as they are for evaluations, whose keys
already read `eval/<task>/<metric>`. The x axis is the run's step: the training steps of all stages so far, so a
cold start followed by GRPO draws one increasing axis (W&B drops a step that goes back); an evaluation sits at the
step it follows. A tracker that fails while logging is turned off with one warning: it never stops a run.

`RunLog` copies what a run shows into `runs/<name>/train.log`: logging records at INFO and above (the console keeps
showing what it showed before) and the text of every print of the package's rich consoles. Progress bars are not
copied (their redraws are not lines); `log_metrics` writes one INFO line per metrics line instead.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, RenderHook

from mmreason.config import ConfigError, RunConfig, to_dict

log = logging.getLogger(__name__)

LOG_FILE = "train.log"
TENSORBOARD_DIR = "tensorboard"
IMAGES_PER_EVAL = 4  # pictures each evaluation logs per task
# the package each tracker needs (`pip install 'mmreason[tracking]'` brings tensorboard, wandb, swanlab, mlflow)
PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "swanlab": "swanlab",
    "mlflow": "mlflow",
    "comet_ml": "comet-ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "trackio": "trackio",
}
_NOT_METRICS = ("stage", "step", "time", "label")


# ------------------------------------------------------------------------------------------------ trackers


def check_trackers(names: Sequence[str]) -> None:
    """Raise one ConfigError naming every tracker of `names` whose package is not installed."""
    if not names:
        return
    from accelerate.tracking import get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    missing = [n for n in dict.fromkeys(names) if n not in available]
    if missing:
        packages = " ".join(PACKAGES.get(n, n) for n in missing)
        raise ConfigError(
            f"report_to names {', '.join(missing)}, not installed here: pip install 'mmreason[tracking]' (or pip "
            f"install {packages}), or leave {'it' if len(missing) == 1 else 'them'} out of report_to"
        )


class Trackers:
    """The run's started trackers and its step axis (see the module docstring)."""

    def __init__(self, trackers: list[Any], step: int = 0) -> None:
        self.trackers = trackers
        self.step = step

    @classmethod
    def start(cls, cfg: RunConfig, run_dir: Path, history: Sequence[Mapping[str, Any]] = ()) -> Trackers | None:
        """Start the trackers of `cfg.report_to` (None when it names none); `history` holds the metrics lines a
        resumed run already logged, so its step axis goes on where they stopped."""
        if not cfg.report_to:
            return None
        check_trackers(cfg.report_to)
        step = sum(1 for row in history if _is_training(row))
        started = []
        for name in dict.fromkeys(cfg.report_to):
            try:
                tracker = make_tracker(name, cfg, run_dir, step)
                if hasattr(tracker, "start"):  # accelerate >= 1.4 starts a tracker apart from building it
                    tracker.start()
                tracker.store_init_configuration(flat_config(cfg))
            except Exception as exc:  # e.g. W&B online without a login: one line, before any step is trained
                cls(started).close()
                raise ConfigError(f"report_to: {name} could not start: {type(exc).__name__}: {exc}") from exc
            started.append(tracker)
        return cls(started, step)

    def log(self, row: Mapping[str, Any]) -> None:
        """One metrics line (as metrics.jsonl holds it): a training line advances the step axis."""
        if _is_training(row):
            self.step += 1
        values = tracker_values(row)
        if values:
            self._each("log", lambda t: t.log(values, step=self.step))

    def log_images(self, images: Mapping[str, Any], step: int | None = None) -> None:
        """PIL images by key, at `step` (default: the current step), for the trackers that take images."""
        if images:
            at = self.step if step is None else step
            self._each("log_images", lambda t: _log_images(t, images, at))

    def close(self) -> None:
        self._each("finish", lambda t: t.finish())
        self.trackers = []

    def _each(self, what: str, call: Any) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as exc:  # a tracker's failure (network, disk) must never cost the run
                log.warning("tracker %s failed to %s (%s: %s); it is off for the rest of the run",
                            tracker.name, what, type(exc).__name__, exc)
                self.trackers.remove(tracker)


def make_tracker(name: str, cfg: RunConfig, run_dir: Path, step: int) -> Any:
    """Accelerate's tracker `name`, writing into the run folder where it writes locally."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    cls = LOGGER_TYPE_TO_CLASS[name]
    if name == "tensorboard":
        # purge_step: TensorBoard drops events at or after it from earlier files: a fresh start hides an older run
        # of the same folder, a resumed one the steps logged after its checkpoint (they are logged again)
        return cls(TENSORBOARD_DIR, str(run_dir), purge_step=step + 1 if step else 0)
    if name == "wandb":
        return cls(os.environ.get("WANDB_PROJECT", "mmreason"), name=cfg.name, dir=str(run_dir))
    if name == "swanlab":
        return cls(os.environ.get("SWANLAB_PROJ_NAME", "mmreason"), experiment_name=cfg.name,
                   logdir=str(run_dir / "swanlog"))
    if name == "mlflow":
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            import mlflow

            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        return cls(experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME", "mmreason"), run_name=cfg.name)
    if cls.requires_logging_directory:
        return cls(cfg.name, str(run_dir / name))
    return cls(cfg.name)


def tracker_values(row: Mapping[str, Any]) -> dict[str, float]:
    """A metrics line's numbers under their tracker keys (see the module docstring); text and None are left out."""
    stage = str(row.get("stage", ""))
    values = {}
    for key, value in row.items():
        if key in _NOT_METRICS or isinstance(value, str) or value is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        values[tracker_key(stage, key)] = number
    return values


def tracker_key(stage: str, key: str) -> str:
    """`sft/loss` for a training line's `loss`; an evaluation's `eval/<task>/<metric>` as it is."""
    if stage.startswith("eval-"):
        return key if key.startswith("eval/") else f"eval/{key}"
    return f"{stage}/{key}"


def flat_config(cfg: RunConfig) -> dict[str, Any]:
    """The config as one level of dotted keys (`grpo.lr`, `data.0.task`) with plain values, as trackers take
    hyperparameters (lists and mappings of plain values become JSON text, None "null")."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for key, sub in value.items():
                walk(f"{prefix}{key}.", sub)
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, sub in enumerate(value):
                walk(f"{prefix}{i}.", sub)
        elif isinstance(value, bool | int | float | str):
            flat[prefix[:-1]] = value
        else:
            flat[prefix[:-1]] = json.dumps(value, default=str)

    walk("", to_dict(cfg))
    return flat


def _is_training(row: Mapping[str, Any]) -> bool:
    return not str(row.get("stage", "")).startswith("eval-")


def _log_images(tracker: Any, images: Mapping[str, Any], step: int) -> None:
    """Each tracker takes pictures its own way; one without a way is skipped."""
    if tracker.name == "tensorboard":
        import numpy as np

        for key, image in images.items():  # one key each: pictures of one task may differ in size
            tracker.log_images({key: np.asarray(image.convert("RGB"))[None]}, step=step, dataformats="NHWC")
    elif tracker.name == "mlflow":
        import mlflow

        for key, image in images.items():
            mlflow.log_image(image.convert("RGB"), key=key.replace("/", "_"), step=step)
    elif hasattr(tracker, "log_images"):
        tracker.log_images({key: [image.convert("RGB")] for key, image in images.items()}, step=step)


def eval_pictures(task: Any, task_name: str, samples: Sequence[Any], texts: Sequence[str]) -> dict[str, Any]:
    """The first `IMAGES_PER_EVAL` generations drawn by the task's `visualize`, keyed `eval/<task>/sample_<i>`;
    a picture that fails to draw is left out (a user's visualize must not stop the run)."""
    images = {}
    for i, (sample, text) in enumerate(zip(samples[:IMAGES_PER_EVAL], texts, strict=False)):
        try:
            images[f"eval/{task_name}/sample_{i}"] = task.visualize(sample, text)
        except Exception as exc:  # any failure of a task's drawing only loses that picture
            log.warning("could not draw %s sample %s for the trackers: %s: %s", task_name, getattr(sample, "id", i),
                        type(exc).__name__, exc)
    return images


# ------------------------------------------------------------------------------------------------ train.log


class _CopyPrints(RenderHook):
    """Prints what a rich console renders into the log file's console too (plain text, fixed width)."""

    def __init__(self, target: Console) -> None:
        self.target = target

    def process_renderables(self, renderables: list[Any]) -> list[Any]:
        try:
            self.target.print(*renderables)
        except Exception:  # the copy must never break the print itself
            pass
        return renderables


class _KeepConsoleLevel(logging.Filter):
    """On a console handler: drops the package's records that only pass because the log file lowered the package's
    level to INFO, so the console shows what it showed before."""

    def __init__(self, package: logging.Logger, level_before: int) -> None:
        super().__init__()
        self.package, self.level_before = package, level_before

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name != self.package.name and not name.startswith(self.package.name + "."):
            return True
        return record.levelno >= self._effective_before(name)

    def _effective_before(self, name: str) -> int:
        logger: logging.Logger | None = logging.getLogger(name)
        while logger is not None:
            level = self.level_before if logger is self.package else logger.level
            if level:
                return level
            logger = logger.parent
        return logging.WARNING


class RunLog:
    """`<run_dir>/train.log` while open: logging records at INFO and above and the package's console prints."""

    def __init__(self, path: Path, append: bool) -> None:
        self.path = path
        self.stream = path.open("a" if append else "w", encoding="utf-8")
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.console = Console(file=self.stream, width=120, no_color=True, highlight=False, force_terminal=False,
                               force_jupyter=False, force_interactive=False, soft_wrap=False, emoji=False)
        self.hook = _CopyPrints(self.console)
        self._package = logging.getLogger("mmreason")
        self._package_level = self._package.level
        self._filtered: list[logging.Handler] = []
        self._keep: logging.Filter | None = None
        self._stderr: logging.Handler | None = None
        self._hooked: list[Console] = []

    def open(self) -> RunLog:
        root = logging.getLogger()
        self.stream.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} mmreason {' '.join(sys.argv[1:])}\n")
        before = self._package.getEffectiveLevel()
        if before > logging.INFO:
            keep = _KeepConsoleLevel(self._package, self._package_level)
            self._filtered = [h for h in root.handlers if h.level == logging.NOTSET]
            for handler in self._filtered:
                handler.addFilter(keep)
            self._keep = keep
            self._package.setLevel(logging.INFO)
        if not root.handlers:
            # logging prints WARNING and above to stderr only while no handler is set up (its "last resort"): the
            # file's handler would silence that, so a plain stderr handler stands in for it meanwhile
            self._stderr = logging.StreamHandler()
            self._stderr.setLevel(logging.WARNING)
            self._stderr.addFilter(_KeepConsoleLevel(self._package, self._package_level))
            root.addHandler(self._stderr)
        root.addHandler(self.handler)
        for console in package_consoles():
            console.push_render_hook(self.hook)
            self._hooked.append(console)
        return self

    def note_failure(self, exc: BaseException) -> None:
        """The reason a run stopped, with its traceback, in the file only (the command line prints its own line)."""
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        self.stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} run stopped: {type(exc).__name__}: {exc}\n")
        self.stream.write("".join(lines))
        self.stream.flush()

    def close(self) -> None:
        for console in self._hooked:
            hooks = console._render_hooks  # remove ours wherever it is: a live display may have pushed its own since
            if self.hook in hooks:
                hooks.remove(self.hook)
        self._hooked = []
        logging.getLogger().removeHandler(self.handler)
        if self._stderr is not None:
            logging.getLogger().removeHandler(self._stderr)
            self._stderr = None
        for handler in self._filtered:
            handler.removeFilter(self._keep)
        self._filtered = []
        self._package.setLevel(self._package_level)
        self.handler.close()
        self.stream.close()


_OPEN: dict[Path, RunLog] = {}


def package_consoles() -> list[Console]:
    """The rich consoles of the package's loaded modules (module-level `console = Console(...)`)."""
    found: dict[int, Console] = {}
    for name, module in list(sys.modules.items()):
        if name == "mmreason" or name.startswith("mmreason."):
            for value in list(vars(module).values()):
                if isinstance(value, Console):
                    found[id(value)] = value
    return list(found.values())


def open_run_log(run_dir: Path, append: bool) -> RunLog:
    """Start copying the console into `<run_dir>/train.log` (appended to when `append`, e.g. on --resume)."""
    key = Path(run_dir).resolve()
    if key not in _OPEN:
        _OPEN[key] = RunLog(key / LOG_FILE, append).open()
    return _OPEN[key]


def close_run_log(run_dir: Path, failure: BaseException | None = None) -> None:
    """Stop copying into the run's train.log (noting `failure` first); nothing when none is open."""
    run_log = _OPEN.pop(Path(run_dir).resolve(), None)
    if run_log is None:
        return
    if failure is not None:
        run_log.note_failure(failure)
    run_log.close()


def metrics_line(row: Mapping[str, Any]) -> str:
    """A metrics line as one log line: `grpo step 3: loss=0.1234 reward_mean=0.5 ...`."""
    parts = []
    for key, value in row.items():
        if key in ("stage", "step", "time"):
            continue
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}" if math.isfinite(value) else f"{key}={value}")
        else:
            parts.append(f"{key}={value}")
    return f"{row.get('stage')} step {row.get('step')}: " + " ".join(parts)
