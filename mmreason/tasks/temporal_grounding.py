"""The `temporal_grounding` task: a video and a described moment -> its start and end time in seconds.

The prompt states the video's duration and the timestamps of the sampled frames the model sees, so answers in
seconds are grounded in what it was shown (frames are sampled by the processors at ctx.video_fps / video_nframes).
Record: {"video": str (a video file), "problem": str (the moment's description), "solution": [start_s, end_s],
"id"?, "reasoning"?}; 0 <= start < end, starting before the video ends (an end past the video's duration is
clipped to it): `mmreason.rewards.temporal.check_segment`, the rule the tiou reward checks its column with.
Rewards (weights): format 0.5, tiou 1.0 (temporal IoU, as in Time-R1 style recipes, measured against the whole
video's so that answering the whole video earns nothing; the metrics report the plain tIoU).
Metrics: mean_tiou and recall at tIoU 0.3 / 0.5 / 0.7 (r@0.3, r@0.5, r@0.7), the standard moment-retrieval numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from mmreason.data.sample import Sample, SampleContext
from mmreason.processors import MediaError, load_video
from mmreason.registry import register_task
from mmreason.rewards import extract_answer
from mmreason.rewards.temporal import check_segment, format_segment, plain_tiou, predicted_segment
from mmreason.tasks import viz
from mmreason.tasks.base import Task, answer_instruction, wrap_target
from mmreason.tasks.common import (
    RecordError,
    check_family,
    checked,
    clip_text,
    field_error,
    fmt_num,
    mean,
    media_sources,
    rate,
    reasoning_of,
    record_id,
    require,
    require_text,
    score,
    user_messages,
)


def load_clip(record: dict[str, Any], rid: str, ctx: SampleContext):
    name, sources = media_sources(record, rid, ("video", "videos"))
    src = sources[0]
    if len(sources) != 1 or not isinstance(src, (str, Path)) or not str(src).strip():
        raise field_error(rid, name, "one video file path", record[name])
    path = Path(ctx.base_dir) / Path(src).expanduser()
    family = check_family(ctx)
    if not family.video:
        raise ValueError(f"the {family.label} model family ({family.name}) takes no video: video tasks need another")
    try:
        clip = load_video(path, fps=ctx.video_fps, nframes=ctx.video_nframes, min_frames=ctx.video_min_frames,
                          max_frames=ctx.video_max_frames, total_pixels=ctx.video_total_pixels,
                          min_pixels=ctx.min_pixels, family=family)
    except (MediaError, OSError, ValueError) as exc:
        raise RecordError(f"record {rid!r}: field 'video': {exc}") from exc
    return clip, str(path)


def temporal_prompt(problem: str, duration: float, timestamps: list[float]) -> str:
    times = ", ".join(fmt_num(t, 1) for t in timestamps)
    return (
        f"The video lasts {fmt_num(duration, 1)} seconds; the {len(timestamps)} frames shown were taken at {times} "
        f"seconds. When does this happen in the video: \"{problem.rstrip('.')}\"? Give the start and end time in "
        "seconds as: start, end"
    )


@register_task("temporal_grounding")
class TemporalGroundingTask(Task):
    answer_format = "start, end (seconds)"
    rewards = {"format": 0.5, "tiou": 1.0}
    metric_names = ("mean_tiou", "r@0.3", "r@0.5", "r@0.7")
    tools = ("crop_video", "select_frames")
    required_fields = ("video", "problem", "solution")
    record_fields = {
        'video | videos': 'one video file',
        'problem': "the moment's description",
        'solution': '[start_s, end_s]',
    }
    media_fields = ("video", "videos")

    def to_sample(self, record: dict[str, Any], ctx: SampleContext) -> Sample:
        rid = record_id(record, self.name)
        problem = require_text(record, rid, "problem")
        solution = require(record, rid, "solution")
        clip, ref = load_clip(record, rid, ctx)
        segment = list(checked(rid, check_segment, solution, duration=clip.duration))
        prompt = temporal_prompt(problem, clip.duration, clip.timestamps) + "." + answer_instruction(ctx.think)
        answer = format_segment(*segment)
        return Sample(
            id=rid,
            task=self.name,
            messages=user_messages(prompt, video=True),
            video=clip,
            target=wrap_target(answer, ctx.think, reasoning_of(record, rid)),
            columns={"solution": segment, "duration": clip.duration},
            media=[ref],
            # the crop_video tool re-samples a window of the source file at a higher frame rate
            meta={"video_path": ref},
        )

    def valid_answer(self, completion: str, columns: dict[str, Any]) -> bool:
        return predicted_segment(completion, columns.get("duration")) is not None  # a segment inside the video

    def metrics(self, completions: list[str], samples: list[Sample]) -> dict[str, float]:
        tious = score(plain_tiou, completions, samples)  # plain tIoU (the reward is measured against the whole video)
        return {"mean_tiou": mean(tious), "r@0.3": rate(tious, 0.3), "r@0.5": rate(tious, 0.5),
                "r@0.7": rate(tious, 0.7)}

    def visualize(self, sample: Sample, completion: str) -> Image.Image:
        clip, (start, end) = sample.video, sample.columns["solution"]
        answer = extract_answer(completion)
        pred = predicted_segment(completion, sample.columns["duration"])
        tiou = score(plain_tiou, [completion], [sample])[0]
        strip = viz.frame_strip(clip.frames, clip.timestamps, sample.columns["duration"],
                                [("truth", (start, end), viz.TRUE_COLOR), ("predicted", pred, viz.PRED_COLOR)],
                                f"tIoU {fmt_num(tiou, 3)}")
        shown = clip_text(answer, 80) if answer is not None else "no <answer>...</answer> found (malformed)"
        return viz.caption_bar(strip, [
            (f"truth: {fmt_num(start)} - {fmt_num(end)} s of {fmt_num(sample.columns['duration'])} s",
             viz.TRUE_COLOR),
            (f"predicted: {shown}", viz.PRED_COLOR),
        ])
