"""The `grounding` task: a referring expression -> bounding box(es) of the object, or `[]` when it is absent.

Coordinates follow the model family (SampleContext.model_family): Qwen2.5-VL answers in absolute pixels of the
resized image it sees, Qwen2-VL in 0-1000 normalised coordinates. Records keep ground truth in ORIGINAL image pixels;
it is converted to the model's convention for the prompt's gold answer (gt_to_model_coords), never the other way.

Record: {"image": str, "problem": str, "solution": [[x1, y1, x2, y2], ...] | [x1, y1, x2, y2] | [], "id"?,
"reasoning"?}. Boxes need x1 <= x2 and y1 <= y2; boxes partly outside the image are clipped, and a box with no
area inside it is an error (`mmreason.rewards.grounding.check_boxes`, the rule the box rewards check their column
with).
Rewards (weights): format 0.5, iou 1.0, box_f1 0.5 -- IoU is the main signal as in VLM-R1/Visual-RFT (measured
against the whole-image box's, so that hedge earns nothing), F1 at IoU 0.5 adds credit for finding every instance
(with max(#pred, #gt) as its denominator, so extra boxes never pay), and the format reward is half the accuracy
weight. The metrics report the plain IoU and F1.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from mmreason.data.sample import Sample, SampleContext
from mmreason.models.family import ModelFamily
from mmreason.registry import register_task
from mmreason.rewards import extract_answer
from mmreason.rewards.grounding import (
    check_boxes,
    format_boxes,
    gt_to_model_coords,
    model_frame,
    model_to_gt_coords,
    plain_box_f1,
    plain_iou,
    predicted_boxes,
)
from mmreason.tasks import viz
from mmreason.tasks.base import Task, answer_instruction, wrap_target
from mmreason.tasks.common import (
    check_family,
    checked,
    clip_text,
    fmt_num,
    mean,
    rate,
    reasoning_of,
    record_id,
    require,
    require_text,
    score,
    single_image,
    user_messages,
)

RELATIVE_FRAME = ("with coordinates normalised to 0-1000 (0,0 = top-left corner, 1000,1000 = bottom-right "
                  "corner)")
BOX_STYLES = {
    "point_pairs": 'Write each matching box as (x1,y1),(x2,y2) {frame}, boxes separated by ", ".',
    "json_bbox_2d": 'Output every matching box as JSON [{{"bbox_2d": [x1, y1, x2, y2]}}, ...] {frame}.',
    "ref_box": "Write the matching boxes as <box>[[x1, y1, x2, y2], ...]</box> {frame}.",
}


def answer_phrase(family: ModelFamily, model_size: tuple[int, int]) -> str:
    """How to write boxes, in the family's own output style and coordinate convention (those its pretraining
    used: `ModelFamily.box_format` and `box_convention`)."""
    w, h = model_size
    frame = (RELATIVE_FRAME if family.box_convention == "relative_1000" else
             f"in absolute pixel coordinates of the {w}x{h} image (x to the right, y down, from the top-left corner)")
    return BOX_STYLES[family.box_format].format(frame=frame)


def gold_answer(boxes: list[list[float]], image_size, model_size, family: str) -> str:
    """GT converted to the model's coordinates and written as the family writes boxes ("[]" when absent)."""
    return format_boxes([gt_to_model_coords(b, image_size, model_size, family) for b in boxes], family)


@register_task("grounding")
class GroundingTask(Task):
    answer_format = ('boxes in the model family\'s style: [{"bbox_2d": [x1, y1, x2, y2]}] (Qwen2.5-VL, pixels) or '
                     "(x1,y1),(x2,y2) (Qwen2-VL, 0-1000); [] if absent")
    rewards = {"format": 0.5, "iou": 1.0, "box_f1": 0.5}
    metric_names = ("acc@0.5", "mean_iou", "mean_f1")
    tools = ("zoom_in",)
    required_fields = ("image", "problem", "solution")
    record_fields = {
        'image | images': 'one image',
        'problem': 'the referring expression',
        'solution': '[[x1, y1, x2, y2], ...], one box, a box string "[x1,y1,x2,y2]" or [] (original pixels)',
    }

    def to_sample(self, record: dict[str, Any], ctx: SampleContext) -> Sample:
        rid = record_id(record, self.name)
        family = check_family(ctx)
        problem = require_text(record, rid, "problem").rstrip(".")
        solution = require(record, rid, "solution")
        img, ref = single_image(record, rid, ctx, self.name)
        image_size, model_size = tuple(img.original_size), tuple(img.model_size)
        boxes = checked(rid, check_boxes, solution, image_size=image_size)
        prompt = (
            f"Please provide the bounding box coordinates of the region this sentence describes: {problem}. "
            f"{answer_phrase(family, model_size)} If there is no such object in the image, answer []."
            + answer_instruction(ctx.think)
        )
        answer = gold_answer(boxes, image_size, model_size, family.name)
        return Sample(
            id=rid,
            task=self.name,
            messages=user_messages(prompt, n_images=1),
            images=[img.image],
            target=wrap_target(answer, ctx.think, reasoning_of(record, rid)),
            columns={"solution": boxes, "image_size": list(image_size), "model_size": list(model_size),
                     "coord_family": family.name},
            media=[ref],
        )

    def valid_answer(self, completion: str, columns: dict[str, Any]) -> bool:
        # boxes inside the model's frame, or an explicit abstention
        frame = model_frame(columns["model_size"], columns["coord_family"])
        return predicted_boxes(completion, frame) is not None

    def metrics(self, completions: list[str], samples: list[Sample]) -> dict[str, float]:
        # the plain IoU and F1 (the rewards are measured against the whole image and never pay for extra boxes)
        ious, f1s = score(plain_iou, completions, samples), score(plain_box_f1, completions, samples)
        return {"acc@0.5": rate(ious, 0.5), "mean_iou": mean(ious), "mean_f1": mean(f1s)}

    def visualize(self, sample: Sample, completion: str) -> Image.Image:
        cols = sample.columns
        family, model_size, image_size = cols["coord_family"], cols["model_size"], cols["image_size"]
        view, _ = viz.enlarge(sample.images[0], min_side=320)
        # everything is drawn in original pixels, scaled per axis onto the (enlarged) model image
        scale = (view.width / image_size[0], view.height / image_size[1])
        preds = predicted_boxes(completion, model_frame(model_size, family))
        shown = [model_to_gt_coords(b, image_size, model_size, family) for b in preds or []]
        view = viz.draw_boxes(view, cols["solution"], viz.TRUE_COLOR, scale=scale, width=4)
        view = viz.draw_boxes(view, shown, viz.PRED_COLOR, scale=scale, width=2)
        iou, f1 = score(plain_iou, [completion], [sample])[0], score(plain_box_f1, [completion], [sample])[0]
        answer = extract_answer(completion)
        if answer is None:
            verdict = "no <answer>...</answer> found: malformed completion"
        elif preds is None:
            verdict = f"no valid boxes in the answer (none, or outside the image): {clip_text(answer, 70)}"
        else:
            verdict = f"predicted (red, {family}): {clip_text(answer, 90) if preds else 'no object'}"
        return viz.caption_bar(view, [
            f"IoU {fmt_num(iou)} | F1@0.5 {fmt_num(f1)} | {len(cols['solution'])} true box(es), "
            f"{len(shown)} predicted",
            (f"truth (green): {gold_answer(cols['solution'], image_size, model_size, family)}", viz.TRUE_COLOR),
            (verdict, viz.PRED_COLOR),
        ])
