"""The `geolocation` task: a photo -> where it was taken, answered as "latitude, longitude" in decimal degrees.

Record: {"image": str, "solution": {"lat": float, "lon": float, "country": str?, "region": str?, "city": str?},
"id"?, "reasoning"?}. Latitude in [-90, 90], longitude in [-180, 180], north/east positive.
Rewards (weights): format 0.5, geo_distance 1.0 (exp(-d / 1492.7 km), the GeoGuessr world-map curve), geo_hierarchy
0.5 (country / region / city credit from offline reverse geocoding) -- distance is the dense main signal, the tiers
reward getting the right country even when the distance is large.
Metrics: acc@1km/25km/200km/750km/2500km (street, city, region, country, continent, as in the geolocation
literature) and median_km; an answer with no coordinates counts as the largest possible distance (half the
Earth's circumference, MAX_KM) so it misses every threshold and the median stays finite.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from PIL import Image

from mmreason.data.sample import Sample, SampleContext
from mmreason.registry import register_task
from mmreason.rewards import extract_answer, predicted_distance_km, predicted_latlon
from mmreason.tasks import viz
from mmreason.tasks.base import Task, answer_instruction, wrap_target
from mmreason.tasks.common import (
    as_number,
    clip_text,
    field_error,
    fmt_num,
    reasoning_of,
    record_id,
    require,
    score,
    single_image,
    user_messages,
)

THRESHOLDS_KM = (1, 25, 200, 750, 2500)
MAX_KM = math.pi * 6371.0088
PLACE_KEYS = ("country", "region", "city")
SOLUTION_SHAPE = 'an object {"lat": -90..90, "lon": -180..180, "country"?, "region"?, "city"?}'

PROMPT = (
    "Where was this photo taken? Look at the landscape, vegetation, architecture, signs, vehicles and other clues, "
    "and give your best estimate of the location as latitude and longitude in decimal degrees, north and east "
    "positive, in the form: lat, lon"
)


def parse_geo_solution(value: Any, rid: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise field_error(rid, "solution", SOLUTION_SHAPE, value)
    lat, lon = as_number(value.get("lat")), as_number(value.get("lon"))
    if lat is None or lon is None or not -90 <= lat <= 90 or not -180 <= lon <= 180:
        raise field_error(rid, "solution", SOLUTION_SHAPE, value)
    out: dict[str, Any] = {"lat": lat, "lon": lon}
    for key in PLACE_KEYS:
        if value.get(key) is not None:
            if not isinstance(value[key], str) or not value[key].strip():
                raise field_error(rid, f"solution.{key}", "a non-empty string", value[key])
            out[key] = value[key].strip()
    return out


def error_km(completion: str, solution: dict[str, Any]) -> float:
    """Great-circle distance of the answer from the truth; MAX_KM when the answer holds no coordinates."""
    km = predicted_distance_km(completion, solution)
    return MAX_KM if km is None else km


@register_task("geolocation")
class GeolocationTask(Task):
    answer_format = "latitude, longitude in decimal degrees (e.g. 48.8566, 2.3522)"
    rewards = {"format": 0.5, "geo_distance": 1.0, "geo_hierarchy": 0.5}
    metric_names = tuple(f"acc@{t}km" for t in THRESHOLDS_KM) + ("median_km",)
    tools = ("zoom_in",)
    required_fields = ("image", "solution")

    def to_sample(self, record: dict[str, Any], ctx: SampleContext) -> Sample:
        rid = record_id(record, self.name)
        solution = parse_geo_solution(require(record, rid, "solution"), rid)
        img, ref = single_image(record, rid, ctx, self.name)
        answer = f"{fmt_num(solution['lat'], 6)}, {fmt_num(solution['lon'], 6)}"
        return Sample(
            id=rid,
            task=self.name,
            messages=user_messages(PROMPT + "." + answer_instruction(ctx.think), n_images=1),
            images=[img.image],
            target=wrap_target(answer, ctx.think, reasoning_of(record, rid)),
            columns={"solution": solution},
            media=[ref],
        )

    def metrics(self, completions: list[str], samples: list[Sample]) -> dict[str, float]:
        if len(completions) != len(samples):
            raise ValueError(f"got {len(completions)} completions for {len(samples)} samples; they must pair up")
        if not samples:
            return {name: float("nan") for name in self.metric_names}
        dists = [error_km(c, s.columns["solution"]) for c, s in zip(completions, samples, strict=True)]
        out = {f"acc@{t}km": sum(d <= t for d in dists) / len(dists) for t in THRESHOLDS_KM}
        out["median_km"] = float(statistics.median(dists))
        return out

    def visualize(self, sample: Sample, completion: str) -> Image.Image:
        sol = sample.columns["solution"]
        point, answer = predicted_latlon(completion), extract_answer(completion)
        if point is None:
            title = "no coordinates in the answer" if answer is not None else "no <answer> found (malformed)"
        else:
            title = f"great-circle distance {error_km(completion, sol):,.1f} km"
        world = viz.world_plot((sol["lat"], sol["lon"]), point, title)
        photo, _ = viz.enlarge(sample.images[0], min_side=160)
        board = viz.side_by_side([photo, world], ["photo", "map (equirectangular)"], height=world.height)
        place = ", ".join(sol[k] for k in reversed(PLACE_KEYS) if k in sol)
        dist_score = score("geo_distance", [completion], [sample])[0]
        tier_score = score("geo_hierarchy", [completion], [sample])[0]
        return viz.caption_bar(board, [
            f"geo_distance {fmt_num(dist_score, 3)} | geo_hierarchy {fmt_num(tier_score, 3)}",
            (f"truth (green): {fmt_num(sol['lat'], 4)}, {fmt_num(sol['lon'], 4)} {place}".rstrip(), viz.TRUE_COLOR),
            (f"predicted (red): {clip_text(answer, 90) if answer is not None else 'malformed completion'}",
             viz.PRED_COLOR),
        ])
