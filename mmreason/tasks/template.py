"""The task-file template behind `mmreason new-task NAME`: one Python file that registers a working task (a reward, a
`Task` with to_sample, metrics and visualize) and carries a tiny seeded data maker (`python NAME.py make-data OUT`).

The written task asks for the colour of the one shape in an image; it is meant to be edited into the user's own
task, and works as it is so that `mmreason data check`, `mmreason tasks` and `mmreason train` can be tried on it
at once. This module owns the template text, the checks on NAME, and writing the file (never over an existing one).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from string import Template

NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

TASK_TEMPLATE = Template('''\
"""The `${name}` task: an image -> the colour of the one shape in it (one of LABELS).

Written by `mmreason new-task ${name}` as a starting point: change LABELS, PROMPT,
the reward and draw_example, and keep make_data in step with them. Try it as it is:

    python ${name}.py make-data data/${name} --n 200
    mmreason data check data/${name}/train.jsonl --task ${name} --task-file ${name}.py
    mmreason tasks --task-file ${name}.py
    mmreason train my_config.yaml --task-file ${name}.py

with a config whose data has {task: ${name}, train: data/${name}/train.jsonl}.

Records: {"id"?: str, "image": "images/00000.png" (relative to the data file), "solution": one of LABELS}.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from mmreason import Sample, SampleContext, Task, register_reward, register_task
from mmreason.rewards import extract_answer
from mmreason.tasks.base import answer_instruction, wrap_target
from mmreason.tasks.common import RecordError, record_id, require, single_image, user_messages
from mmreason.tasks.viz import caption_bar

TASK = "${name}"
REWARD = "${name}_match"
# the answers, and the colour make_data draws each in
LABELS = {"red": (220, 30, 30), "green": (20, 150, 40), "blue": (30, 60, 220)}
PROMPT = "What colour is the shape? Answer with one word: " + ", ".join(LABELS) + "."


def parse_label(completion: str) -> str | None:
    """The label in the <answer> tag (case and a final full stop ignored), else None."""
    answer = extract_answer(completion)
    if answer is None:
        return None
    word = answer.strip().strip(".").lower()
    return word if word in LABELS else None


@register_reward(REWARD)
def label_match(completions: list[str], solution: list[str], **_: Any) -> list[float]:
    """1.0 when the answered label is the true one, else 0.0 (an unreadable answer scores 0)."""
    return [float(parse_label(c) == s) for c, s in zip(completions, solution, strict=True)]


@register_task(TASK)
class ${cls}(Task):
    answer_format = " or ".join(LABELS)
    rewards = {"format": 0.5, REWARD: 1.0}
    metric_names = ("accuracy",)
    required_fields = ("image", "solution")

    def to_sample(self, record: dict[str, Any], ctx: SampleContext) -> Sample:
        """A record -> the prompt with its image, the gold answer for SFT, and the columns the reward reads."""
        rid = record_id(record, self.name)
        label = require(record, rid, "solution")
        if label not in LABELS:
            raise RecordError(f"record {rid!r}: field 'solution' must be one of {', '.join(LABELS)}, got {label!r}")
        image, ref = single_image(record, rid, ctx, self.name)  # sized as the model family takes images
        return Sample(
            id=rid,
            task=self.name,
            messages=user_messages(PROMPT + answer_instruction(ctx.think), n_images=1),
            images=[image.image],
            target=wrap_target(label, ctx.think),
            columns={"solution": label},
            media=[ref],
        )

    def metrics(self, completions: list[str], samples: list[Sample]) -> dict[str, float]:
        scores = label_match(completions, [s.columns["solution"] for s in samples])
        return {"accuracy": sum(scores) / max(len(scores), 1)}

    def visualize(self, sample: Sample, completion: str) -> Image.Image:
        said = parse_label(completion) or "(no answer)"
        return caption_bar(sample.images[0], [f"answer: {said}", f"truth: {sample.columns['solution']}"])


# ------------------------------------------------------------------------------------------------ data maker


def draw_example(rng: random.Random, label: str, size: int = 56) -> Image.Image:
    """A square or a circle in the label's colour, of random size and place, on white."""
    img = Image.new("RGB", (size, size), "white")
    side = rng.randint(size // 3, size * 2 // 3)
    x, y = rng.randint(0, size - side), rng.randint(0, size - side)
    draw = ImageDraw.Draw(img)
    shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
    shape((x, y, x + side - 1, y + side - 1), fill=LABELS[label])
    return img


def make_data(out_dir: str | Path, n: int = 200, seed: int = 0, val_fraction: float = 0.1) -> Path:
    """Write n records (images/, train.jsonl, val.jsonl) into out_dir; the same seed writes the same data."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = []
    for i in range(n):
        label = rng.choice(list(LABELS))
        path = f"images/{i:05d}.png"
        draw_example(rng, label).save(out / path)
        records.append({"id": f"{TASK}-{i:05d}", "image": path, "solution": label})
    n_val = min(n - 1, max(1, round(n * val_fraction))) if n > 1 and val_fraction > 0 else 0
    for split, part in (("train", records[: n - n_val]), ("val", records[n - n_val :])):
        with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\\n" for r in part)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=f"Tools of the {TASK} task.")
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make-data", help="write a small seeded dataset: images/, train.jsonl, val.jsonl")
    make.add_argument("out_dir")
    make.add_argument("--n", type=int, default=200)
    make.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = make_data(args.out_dir, args.n, args.seed)
    print(f"wrote {args.n} {TASK} records to {out}")


if __name__ == "__main__":
    main()
''')


def check_task_name(name: str) -> None:
    """Refuse a NAME that cannot be a task file's name: not an ASCII identifier, a Python keyword, a standard-library
    module (the file would shadow it when run as a script), or a task or reward name already registered."""
    import keyword

    from mmreason.registry import REWARDS, TASKS

    if not NAME_PATTERN.fullmatch(name) or keyword.iskeyword(name):
        raise ValueError(f"task name must be a Python identifier (letters, digits, _; not a keyword), got {name!r}")
    if name in sys.stdlib_module_names:
        raise ValueError(f"task name {name!r} is a standard-library module name; pick another (e.g. {name}_task)")
    if name in TASKS.names():
        raise ValueError(f"task {name!r} is already registered; pick another name")
    if f"{name}_match" in REWARDS.names():
        raise ValueError(f"reward {name + '_match'!r} is already registered; pick another task name")


def task_file_text(name: str) -> str:
    """The task file for task `name` (not checked: see `check_task_name`)."""
    camel = "".join(part[:1].upper() + part[1:] for part in name.split("_"))
    return TASK_TEMPLATE.substitute(name=name, cls=f"{camel or 'User'}Task")  # never `class Task(Task)`


def write_task_file(name: str, out_dir: str | Path = ".") -> Path:
    """Write out_dir/NAME.py (creating out_dir) and return its path; FileExistsError if it exists, ValueError for
    a bad NAME."""
    path = Path(out_dir) / f"{name}.py"
    # an existing file first: its task is then often registered too, and "already exists" is the message that helps
    if NAME_PATTERN.fullmatch(name) and path.exists():
        raise FileExistsError(f"{path} already exists; not overwriting it (remove it or pick another --out)")
    check_task_name(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "x", encoding="utf-8") as f:  # "x": never replace a file that appeared meanwhile
        f.write(task_file_text(name))
    return path
