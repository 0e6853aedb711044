"""The `geolocation` task: a photo -> where it was taken, answered as "latitude, longitude" in decimal degrees.

Record: {"image": str, "solution": {"lat": float, "lon": float, "country": str?, "region": str?, "city": str?},
"id"?, "reasoning"?}. Latitude in [-90, 90], longitude in [-180, 180], north/east positive; names non-empty strings
(`mmreason.rewards.geolocation.check_location`, the rule the geolocation rewards check their column with).
Rewards (weights): format 0.5, geo_distance 1.0 (exp(-d / 1492.7 km), the GeoGuessr world-map curve), geo_hierarchy
0.5 (country / region / city credit from offline reverse geocoding) -- distance is the dense main signal, the tiers
reward getting the right country even when the distance is large.
Metrics: acc@1km/25km/200km/750km/2500km (street, city, region, country, continent, as in the geolocation
literature), median_km, and geoguessr_score: the mean GeoGuessr world-map score in points, 5000 * exp(-d / 1492.7 km)
(0-5000, what geo_distance pays times 5000). The score is the one of them that moves with every answer: on a set of
a few places (the synthetic maker's eight cities) an answer is either on the spot or thousands of km off, and the
median then jumps between 0 and a continent once half the answers are exact. An answer with no coordinates counts
as the largest possible distance (half the Earth's circumference, MAX_KM) so it misses every threshold, the median
stays finite and its score is near 0.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from PIL import Image

from mmreason.data.sample import Sample, SampleContext
from mmreason.registry import register_task
from mmreason.rewards import extract_answer
from mmreason.rewards.geolocation import (
    ACCURACY_THRESHOLDS_KM,
    EARTH_RADIUS_KM,
    GEOGUESSR_MAX_POINTS,
    check_location,
    distance_score,
    format_latlon,
    format_place,
    predicted_distance_km,
    predicted_latlon,
)
from mmreason.tasks import viz
from mmreason.tasks.base import Task, answer_instruction, wrap_target
from mmreason.tasks.common import (
    checked,
    clip_text,
    fmt_num,
    reasoning_of,
    record_id,
    require,
    score,
    single_image,
    user_messages,
)

THRESHOLDS_KM = tuple(int(t) for t in ACCURACY_THRESHOLDS_KM)
MAX_KM = math.pi * EARTH_RADIUS_KM

PROMPT = (
    "Where was this photo taken? Look at the landscape, vegetation, architecture, signs, vehicles and other clues, "
    "and give your best estimate of the location as latitude and longitude in decimal degrees, north and east "
    "positive, in the form: lat, lon"
)


def error_km(completion: str, solution: dict[str, Any]) -> float:
    """Great-circle distance of the answer from the truth; MAX_KM when the answer holds no coordinates."""
    km = predicted_distance_km(completion, solution)
    return MAX_KM if km is None else km


@register_task("geolocation")
class GeolocationTask(Task):
    answer_format = "latitude, longitude in decimal degrees (e.g. 48.8566, 2.3522)"
    rewards = {"format": 0.5, "geo_distance": 1.0, "geo_hierarchy": 0.5}
    metric_names = tuple(f"acc@{t}km" for t in THRESHOLDS_KM) + ("median_km", "geoguessr_score")
    tools = ("zoom_in",)
    required_fields = ("image", "solution")
    record_fields = {"image | images": "one image", "solution": "{lat, lon, country?, region?, city?}"}

    def to_sample(self, record: dict[str, Any], ctx: SampleContext) -> Sample:
        rid = record_id(record, self.name)
        solution = checked(rid, check_location, require(record, rid, "solution"))
        img, ref = single_image(record, rid, ctx, self.name)
        answer = format_latlon(solution["lat"], solution["lon"])
        return Sample(
            id=rid,
            task=self.name,
            messages=user_messages(PROMPT + "." + answer_instruction(ctx.think), n_images=1),
            images=[img.image],
            target=wrap_target(answer, ctx.think, reasoning_of(record, rid)),
            columns={"solution": solution},
            media=[ref],
        )

    def valid_answer(self, completion: str, columns: dict[str, Any]) -> bool:
        return predicted_latlon(completion) is not None  # one latitude and longitude in range

    def metrics(self, completions: list[str], samples: list[Sample]) -> dict[str, float]:
        if len(completions) != len(samples):
            raise ValueError(f"got {len(completions)} completions for {len(samples)} samples; they must pair up")
        if not samples:
            return {name: float("nan") for name in self.metric_names}
        dists = [error_km(c, s.columns["solution"]) for c, s in zip(completions, samples, strict=True)]
        out = {f"acc@{t}km": sum(d <= t for d in dists) / len(dists) for t in THRESHOLDS_KM}
        out["median_km"] = float(statistics.median(dists))
        out["geoguessr_score"] = GEOGUESSR_MAX_POINTS * statistics.fmean(distance_score(d) for d in dists)
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
        place = format_place(sol)
        dist_score = score("geo_distance", [completion], [sample])[0]
        tier_score = score("geo_hierarchy", [completion], [sample])[0]
        return viz.caption_bar(board, [
            f"geo_distance {fmt_num(dist_score, 3)} | geo_hierarchy {fmt_num(tier_score, 3)}",
            (f"truth (green): {fmt_num(sol['lat'], 4)}, {fmt_num(sol['lon'], 4)} {place}".rstrip(), viz.TRUE_COLOR),
            (f"predicted (red): {clip_text(answer, 90) if answer is not None else 'malformed completion'}",
             viz.PRED_COLOR),
        ])
