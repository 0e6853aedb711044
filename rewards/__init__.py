"""mmreason.rewards: rule rewards, one module per answer type, and the generic answer reading they share.

Importing this package registers every built-in reward in `mmreason.registry.REWARDS`:
    format, format_nothink                      (format)        -- answer layout
    iou, box_f1                                 (grounding)     -- boxes; columns solution, image_size, model_size,
                                                                   coord_family
    jigsaw_exact, jigsaw_fraction               (jigsaw)        -- tile order; column solution
    geo_distance, geo_hierarchy                 (geolocation)   -- column solution {"lat", "lon", names?}
    cls_match                                   (classification) -- columns solution, synonyms?
    count_match                                 (counting)      -- column solution
    choice_match                                (choice)        -- columns solution, options?
    math_verify                                 (math_answer)   -- column solution
    tiou                                        (temporal)      -- columns solution, duration?
    tool_success, tool_discipline               (tool_use)      -- columns tool_calls, tool_errors, budget_exceeded
    budget_length, budget_difficulty            (budget)        -- columns budget_words, budget_tag?,
                                                                   difficulty_label?, prompt_pass_rate?

Contract: `fn(completions, **columns) -> list[float | None]`, one score per completion in [0, 1]; each column is a
per-completion list; unknown columns are ignored; a row whose `solution` is None scores None (not applicable;
`budget_difficulty` also when the prompt's level is unknown);
a completion that does not parse scores 0.0 and no completion string ever raises; bad ground truth raises
`ColumnError` naming the reward, row and column.

Each answer type's module is the one home of that type's rules: `check_*` (is a ground-truth value valid; raises
`ColumnError`, a ValueError saying what was expected), the prediction parser, the gold-answer formatter (`format_*`)
and the single-item `*_score(completion, ...)` functions. The tasks check their records with the same `check_*`
functions, so a record a task accepts is ground truth its rewards accept. `parse` holds only the generic pieces:
`<think>`/`<answer>` tags, text and number parsing, and the column plumbing.
"""

# Every module is imported so that its @register_reward decorators run.
from . import (  # noqa: F401
    budget,
    choice,
    classification,
    counting,
    format,
    geolocation,
    grounding,
    jigsaw,
    math_answer,
    parse,
    temporal,
    tool_use,
)
from .choice import (
    check_choice,
    check_letter,
    check_options,
    choice_score,
    format_choice,
    parse_choice,
    predicted_choice,
)
from .classification import check_label, check_label_list, cls_score, format_label, label_matches, normalize_label
from .counting import check_count, count_score, format_count, predicted_count
from .format import format_completion, has_answer_only_format, has_think_answer_format
from .geolocation import (
    ACCURACY_THRESHOLDS_KM,
    EARTH_RADIUS_KM,
    GEOGUESSR_WORLD_SCALE_KM,
    TIER_WEIGHTS,
    Place,
    check_location,
    country_code,
    distance_score,
    format_latlon,
    format_place,
    geo_distance_score,
    geo_hierarchy_score,
    haversine_km,
    hierarchy_score,
    parse_latlon,
    parse_place,
    predicted_distance_km,
    predicted_latlon,
    reverse_geocode_place,
    truth_place,
)
from .grounding import (
    MATCH_IOU,
    QWEN2_5_VL,
    QWEN2_VL,
    best_iou,
    box_area,
    box_f1_score,
    box_iou,
    canonical_family,
    check_boxes,
    check_size,
    clean_box,
    clip_box,
    count_matches,
    f1_at_iou,
    format_boxes,
    gt_to_model_coords,
    iou_score,
    is_abstention,
    model_frame,
    model_to_gt_coords,
    parse_boxes,
    predicted_boxes,
)
from .jigsaw import (
    check_order,
    format_order,
    jigsaw_exact_score,
    jigsaw_fraction_score,
    order_exact,
    order_fraction,
    parse_order,
    predicted_order,
)
from .math_answer import check_solution, format_math_answer, math_equal, math_score
from .parse import (
    ColumnError,
    bad_value,
    completion_text,
    extract_answer,
    extract_think,
    format_number,
    normalize_text,
    parse_int,
    parse_number,
    score_each,
)
from .temporal import (
    check_duration,
    check_segment,
    format_segment,
    interval_iou,
    parse_segment,
    predicted_segment,
    tiou_score,
)

__all__ = [
    "ACCURACY_THRESHOLDS_KM",
    "EARTH_RADIUS_KM",
    "GEOGUESSR_WORLD_SCALE_KM",
    "MATCH_IOU",
    "QWEN2_5_VL",
    "QWEN2_VL",
    "TIER_WEIGHTS",
    "ColumnError",
    "Place",
    "bad_value",
    "best_iou",
    "box_area",
    "box_f1_score",
    "box_iou",
    "canonical_family",
    "check_boxes",
    "check_choice",
    "check_count",
    "check_duration",
    "check_label",
    "check_label_list",
    "check_letter",
    "check_location",
    "check_options",
    "check_order",
    "check_segment",
    "check_size",
    "check_solution",
    "choice_score",
    "clean_box",
    "clip_box",
    "cls_score",
    "completion_text",
    "count_matches",
    "count_score",
    "country_code",
    "distance_score",
    "extract_answer",
    "extract_think",
    "f1_at_iou",
    "format_boxes",
    "format_choice",
    "format_completion",
    "format_count",
    "format_label",
    "format_latlon",
    "format_math_answer",
    "format_number",
    "format_order",
    "format_place",
    "format_segment",
    "geo_distance_score",
    "geo_hierarchy_score",
    "gt_to_model_coords",
    "has_answer_only_format",
    "has_think_answer_format",
    "haversine_km",
    "hierarchy_score",
    "interval_iou",
    "iou_score",
    "is_abstention",
    "jigsaw_exact_score",
    "jigsaw_fraction_score",
    "label_matches",
    "math_equal",
    "math_score",
    "model_frame",
    "model_to_gt_coords",
    "normalize_label",
    "normalize_text",
    "order_exact",
    "order_fraction",
    "parse_boxes",
    "parse_choice",
    "parse_int",
    "parse_latlon",
    "parse_number",
    "parse_order",
    "parse_place",
    "parse_segment",
    "predicted_boxes",
    "predicted_choice",
    "predicted_count",
    "predicted_distance_km",
    "predicted_latlon",
    "predicted_order",
    "predicted_segment",
    "reverse_geocode_place",
    "score_each",
    "tiou_score",
    "truth_place",
]
