"""Geolocation: the location answer type's parsers (`parse_latlon`, `parse_place`), ground-truth check
(`check_location`), gold-answer formatters (`format_latlon`, `format_place`) and rewards: great-circle distance score
(`geo_distance`) and country/region/city credit (`geo_hierarchy`).

Column `solution`: {"lat": -90..90, "lon": -180..180, "country": str?, "region": str?, "city": str?}; a name, when
present and not None, must be a non-empty string (`check_location`, which the geolocation task checks its records
with too).

`geo_distance` = exp(-d / 1492.7 km), d = haversine distance (mean Earth radius R = 6371.0088 km) between the
predicted and true points. This is GeoGuessr's world-map points curve, 5000 * exp(-d / 1492.7), divided by 5000:
1.0 at the spot, ~0.98 at 25 km, ~0.87 at 200 km, ~0.61 at 750 km, ~0.19 at 2500 km. No coordinates -> 0.0.

`geo_hierarchy` gives tiered credit with weights country 0.5, region 0.3, city 0.2:
    score = (0.5 * C + 0.3 * (C and R) + 0.2 * (C and T)) / (0.5 + 0.3 * [truth has a region] + 0.2 * [... city])
C, R, T = the predicted country / region / city match the truth's; region and city count only under the right
country (so "Springfield" earns nothing in the wrong country), and tiers the truth lacks leave the denominator.
- Truth tiers: the record's names where given; any missing tier is filled by reverse-geocoding the true point.
- Predicted tiers: when the answer holds coordinates (`parse_latlon`; coordinates win over names), by
  reverse-geocoding them offline with the `reverse_geocode` package (nearest GeoNames place of >= 1000 people, by
  planar lat/lon distance, so a point at sea takes the nearest coast's place); otherwise from names: JSON
  {"country", "region"/"state"/"province", "city"} or "City, Region, Country" / "City, Country" / "Country" (at
  most 3 comma-separated parts, most specific first: the last is the country; of three, the first is the city and
  the second the region, so "Lyon, Paris, France" names one city, not two; of two, the first may match the region
  or the city; more parts score 0 as hedging).
- Matching: countries by ISO code when both resolve (names from the package's country list plus common aliases:
  "USA", "UK", "South Korea", "Czechia", ...; a bare 2-letter upper-case code counts), else by normalised name;
  regions and cities by normalised name (accents, case and punctuation ignored; for cities "City of X" and
  "X City" equal "X"). Abbreviated regions ("NY", "NSW") are not expanded.
"""

from __future__ import annotations

import csv
import itertools
import math
import re
import threading
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import reverse_geocode

from mmreason.registry import register_reward

from .parse import (
    NUMBER_PATTERN,
    NUMBER_RE,
    bad_value,
    extract_answer,
    finite_float,
    format_number,
    is_finite_token,
    is_number,
    loads_or_none,
    normalize_text,
    score_each,
    strip_code_fence,
)

EARTH_RADIUS_KM = 6371.0088  # IUGG mean Earth radius
GEOGUESSR_WORLD_SCALE_KM = 1492.7
GEOGUESSR_MAX_POINTS = 5000.0  # a guess on the spot; distance_score is the share of it a guess earns
TIER_WEIGHTS = {"country": 0.5, "region": 0.3, "city": 0.2}
ACCURACY_THRESHOLDS_KM = (1.0, 25.0, 200.0, 750.0, 2500.0)  # street / city / region / country / continent
MAX_PLACE_PARTS = 3

# Normalised alias -> ISO 3166-1 alpha-2 code, for names the package's country list spells differently.
_COUNTRY_ALIASES = {
    "usa": "US", "us": "US", "u s": "US", "u s a": "US", "united states of america": "US",
    "uk": "GB", "u k": "GB", "great britain": "GB", "britain": "GB", "england": "GB", "scotland": "GB",
    "wales": "GB", "northern ireland": "GB", "uae": "AE", "czechia": "CZ", "south korea": "KR", "korea": "KR",
    "republic of korea": "KR", "north korea": "KP", "russia": "RU", "iran": "IR", "syria": "SY", "laos": "LA",
    "libya": "LY", "north macedonia": "MK", "eswatini": "SZ", "turkiye": "TR", "ivory coast": "CI",
    "cabo verde": "CV", "burma": "MM", "palestine": "PS", "vatican": "VA", "vatican city": "VA", "holy see": "VA",
    "dr congo": "CD", "drc": "CD", "democratic republic of the congo": "CD", "congo kinshasa": "CD",
    "republic of the congo": "CG", "congo brazzaville": "CG", "micronesia": "FM", "moldova": "MD",
    "tanzania": "TZ", "brunei": "BN", "viet nam": "VN", "bolivia": "BO", "venezuela": "VE",
    "british virgin islands": "VG", "us virgin islands": "VI", "falkland islands": "FK", "cocos islands": "CC",
    "caribbean netherlands": "BQ", "holland": "NL", "netherlands": "NL", "timor leste": "TL", "east timor": "TL",
}  # fmt: skip


@dataclass(frozen=True)
class Place:
    """Named tiers of a location; `names` are unplaced parts of a "City, Region, Country" answer."""

    country: str | None = None
    country_code: str | None = None
    region: str | None = None
    city: str | None = None
    names: tuple[str, ...] = ()


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in km between two (lat, lon) points in degrees, on a sphere of R = 6371.0088 km."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2.0 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def distance_score(km: float) -> float:
    """exp(-km / 1492.7): GeoGuessr's world-map score / 5000, in [0, 1]."""
    return min(1.0, math.exp(-max(0.0, km) / GEOGUESSR_WORLD_SCALE_KM))


PLACE_KEYS = ("country", "region", "city")
LOCATION_EXPECTED = "{'lat': -90..90, 'lon': -180..180, 'country'?: str, 'region'?: str, 'city'?: str}"


def check_location(value: Any, name: str = "solution") -> dict[str, Any]:
    """The location as {"lat": float, "lon": float} plus the names it gives (stripped), else ColumnError.

    lat and lon must be finite numbers in [-90, 90] and [-180, 180]; a name that is present and not None must be a
    non-empty string (the error then names `<name>.<key>`). Other keys are dropped.
    """
    if not isinstance(value, dict):
        raise bad_value(name, LOCATION_EXPECTED, value)
    lat, lon = (finite_float(value.get(k)) if is_number(value.get(k)) else None for k in ("lat", "lon"))
    if lat is None or lon is None or not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise bad_value(name, LOCATION_EXPECTED, value)
    out: dict[str, Any] = {"lat": lat, "lon": lon}
    for key in PLACE_KEYS:
        given = value.get(key)
        if given is not None:
            if not isinstance(given, str) or not given.strip():
                raise bad_value(f"{name}.{key}", "a non-empty string", given)
            out[key] = given.strip()
    return out


@lru_cache(maxsize=1)
def _country_index() -> dict[str, str]:
    """Normalised country name (package list + aliases) -> ISO code."""
    path = Path(reverse_geocode.__file__).parent / "countries.csv"
    index: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for row in csv.reader(f):
            if len(row) == 2:
                index[_country_key(row[1])] = row[0]
    index.update(_COUNTRY_ALIASES)
    return index


def _country_key(name: str) -> str:
    key = normalize_text(name)
    return key[4:] if key.startswith("the ") else key


def country_code(name: str | None) -> str | None:
    """ISO alpha-2 code of a country name, alias or code ("France", "USA", "FR"), else None."""
    if not isinstance(name, str) or len(name) > 100:
        return None
    raw = name.strip()
    index = _country_index()
    if len(raw) == 2 and raw.isascii() and raw.isupper():
        return raw if raw in index.values() else index.get(raw.lower())
    return index.get(_country_key(raw))


_GEO_LOCK = threading.Lock()


@lru_cache(maxsize=8192)
def reverse_geocode_place(lat: float, lon: float) -> Place:
    """Country, region (admin-1 "state") and city of the nearest GeoNames place, offline."""
    with _GEO_LOCK:  # the package builds its KD-tree lazily in an unguarded singleton
        hit = dict(reverse_geocode.get((lat, lon)))
    return Place(
        country=hit.get("country") or None,
        country_code=hit.get("country_code") or None,
        region=hit.get("state") or None,
        city=hit.get("city") or None,
    )


def parse_place(text: str) -> Place | None:
    """Named tiers from an answer: JSON {"country", "region"/"state"/"province", "city"} or up to three
    comma-separated names, most specific first ("Paris, Ile-de-France, France"). None when unreadable."""
    body = strip_code_fence(text).strip().rstrip(".").strip()
    obj = loads_or_none(body) if body.startswith("{") else None
    if isinstance(obj, dict):
        get = {str(k).lower(): v for k, v in obj.items() if isinstance(v, str) and v.strip()}.get
        country = get("country")
        region = get("region") or get("state") or get("province")
        place = Place(country=country, country_code=country_code(country), region=region, city=get("city"))
        return place if any((place.country, place.region, place.city)) else None
    parts = [p.strip() for p in body.split(",")]
    if not body or len(parts) > MAX_PLACE_PARTS or any(not p or len(p) > 100 for p in parts):
        return None
    country, code = parts[-1], country_code(parts[-1])
    if len(parts) == MAX_PLACE_PARTS:  # each name has its tier: two cities cannot hedge for one
        return Place(country=country, country_code=code, region=parts[1], city=parts[0])
    return Place(country=country, country_code=code, names=tuple(parts[:-1]))


def _name_key(name: str | None, city: bool = False) -> str:
    key = normalize_text(name) if isinstance(name, str) else ""
    if city:
        key = key[8:] if key.startswith("city of ") else key
        key = key[:-5] if key.endswith(" city") else key
    return key


def _claim(truth: str | None, direct: str | None, pool: list[str], city: bool = False) -> bool:
    """Does the prediction name `truth`, directly or through one unplaced name (which is then used up)?"""
    key = _name_key(truth, city)
    if not key:
        return False
    if _name_key(direct, city) == key:
        return True
    for i, name in enumerate(pool):
        if _name_key(name, city) == key:
            del pool[i]
            return True
    return False


def _same_country(pred: Place, truth: Place) -> bool:
    if pred.country_code and truth.country_code:
        return pred.country_code == truth.country_code
    key = _country_key(truth.country or "")
    return bool(key) and _country_key(pred.country or "") == key


def hierarchy_score(pred: Place, truth: Place) -> float:
    """The tiered credit of the module doc, in [0, 1]."""
    w = TIER_WEIGHTS
    total = w["country"] + (w["region"] if truth.region else 0.0) + (w["city"] if truth.city else 0.0)
    if not _same_country(pred, truth):
        return 0.0
    pool = list(pred.names)
    score = w["country"]
    score += w["region"] if _claim(truth.region, pred.region, pool) else 0.0
    score += w["city"] if _claim(truth.city, pred.city, pool, city=True) else 0.0
    return min(1.0, score / total)


def truth_place(solution: dict[str, Any]) -> Place:
    """The solution's tiers: its own names where given, the rest by reverse-geocoding its lat/lon."""
    names = {k: solution.get(k) or None for k in PLACE_KEYS}
    geo = reverse_geocode_place(float(solution["lat"]), float(solution["lon"])) if None in names.values() else None
    country = names["country"] or (geo.country if geo else None)
    code = country_code(names["country"]) if names["country"] else (geo.country_code if geo else None)
    region = names["region"] or (geo.region if geo else None)
    return Place(country=country, country_code=code, region=region, city=names["city"] or (geo.city if geo else None))


_N = f"({NUMBER_PATTERN})"
_HEMI_RE = re.compile(
    rf"{_N}\s{{0,3}}°?\s{{0,3}}(?:{_N}\s{{0,3}}['′]\s{{0,3}})?(?:{_N}\s{{0,3}}(?:\"|″|'')\s{{0,3}})?"
    r"([NSEW]|[Nn]orth|[Ss]outh|[Ee]ast|[Ww]est)(?![a-zA-Z])",
)
_LABELLED_RE = re.compile(rf"\b(lat(?:itude)?|lo?ng?(?:itude)?)\b[\"']?\s{{0,3}}[:=]?\s{{0,3}}{_N}", re.IGNORECASE)
_PAIR_SEP_RE = re.compile(r"\s{0,10}°?\s{0,10}[,;/]?\s{0,10}")


def _valid_latlon(lat: float | None, lon: float | None) -> tuple[float, float] | None:
    if lat is None or lon is None or not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    return (lat, lon)


def _latlon_from_json(body: str) -> tuple[float, float] | None:
    obj = loads_or_none(body) if body[:1] == "{" else None
    if not isinstance(obj, dict):
        return None
    lowered = {str(k).lower(): v for k, v in obj.items()}
    lat = next((lowered[k] for k in ("lat", "latitude") if k in lowered), None)
    lon = next((lowered[k] for k in ("lon", "lng", "long", "longitude") if k in lowered), None)
    return _valid_latlon(finite_float(lat), finite_float(lon))


# a reader's answer when the text states several different points: a hedge, not an answer (no reader after it runs)
_HEDGE = (math.nan, math.nan)


def _one(values: list[float]) -> float | None:
    """The value all of `values` agree on; None when there is none; nan when they differ (a hedge)."""
    return None if not values else values[0] if len(set(values)) == 1 else math.nan


def _agreed(lats: list[float], lons: list[float]) -> tuple[float, float] | None:
    lat, lon = _one(lats), _one(lons)
    if (lat is not None and math.isnan(lat)) or (lon is not None and math.isnan(lon)):
        return _HEDGE
    return _valid_latlon(lat, lon)


def _latlon_from_hemispheres(text: str) -> tuple[float, float] | None:
    lats: list[float] = []
    lons: list[float] = []
    for m in _HEMI_RE.finditer(text):
        deg, minutes, seconds = (finite_float(g) if g else 0.0 for g in m.groups()[:3])
        if deg is None or minutes is None or seconds is None:
            continue
        if deg < 0 or not 0 <= minutes < 60 or not 0 <= seconds < 60:
            continue
        value = deg + minutes / 60.0 + seconds / 3600.0
        hemi = m.group(4)[0].upper()
        if hemi in "NS":
            lats.append(-value if hemi == "S" else value)
        else:
            lons.append(-value if hemi == "W" else value)
    return _agreed(lats, lons)


def _latlon_from_labels(text: str) -> tuple[float, float] | None:
    lats: list[float] = []
    lons: list[float] = []
    for m in _LABELLED_RE.finditer(text):
        value = finite_float(m.group(2)) if is_finite_token(m.group(2)) else None
        if value is not None:
            (lats if m.group(1).lower().startswith("lat") else lons).append(value)
    return _agreed(lats, lons)


def _latlon_from_pairs(text: str) -> tuple[float, float] | None:
    tokens = list(NUMBER_RE.finditer(text))
    found: set[tuple[float, float]] = set()
    for a, b in itertools.pairwise(tokens):
        if _PAIR_SEP_RE.fullmatch(text, a.end(), b.start()) is None:
            continue
        pair = _valid_latlon(*(float(t.group(0)) if is_finite_token(t.group(0)) else None for t in (a, b)))
        if pair:
            found.add(pair)
            if len(found) > 1:  # "48.85, 2.35, 35.68, 139.69": several points
                return _HEDGE
    return found.pop() if found else None


def parse_latlon(text: str) -> tuple[float, float] | None:
    """(lat, lon) in degrees, else None. Forms, tried in order (the first that yields an in-range pair wins):
    JSON {"lat": .., "lon": ..} (also latitude/longitude/lng/long); hemisphere letters or words, decimal or
    degrees-minutes-seconds, either order ("48.85N 2.35E", "2.35°E, 48.85°N", "33°52'S 151°12'E"); labels
    ("lat: 48.8, lon: 2.3"); otherwise two adjacent numbers (separated only by spaces, a comma, semicolon, slash
    or degree sign) with lat in [-90, 90] and lon in [-180, 180] ("48.8566, 2.3522"). A form that states several
    different points ("48.85, 2.35, 35.68, 139.69", "48.8N 2.3E or 35.7N 139.7E") is a hedge: None.
    """
    if not isinstance(text, str):
        return None
    body = unicodedata.normalize("NFKC", strip_code_fence(text)).strip()
    for reader in (_latlon_from_json, _latlon_from_hemispheres, _latlon_from_labels, _latlon_from_pairs):
        found = reader(body)
        if found:
            return None if found is _HEDGE else found
    return None


def predicted_latlon(completion: str) -> tuple[float, float] | None:
    """(lat, lon) from the completion's answer tag, or None."""
    answer = extract_answer(completion)
    return None if answer is None else parse_latlon(answer)


def predicted_distance_km(completion: str, solution: Any) -> float | None:
    """Great-circle km from the predicted to the true point; None when the answer has no coordinates."""
    loc = check_location(solution)
    pred = predicted_latlon(completion)
    return None if pred is None else haversine_km(pred[0], pred[1], float(loc["lat"]), float(loc["lon"]))


def geo_distance_score(completion: str, solution: Any) -> float:
    km = predicted_distance_km(completion, solution)
    return 0.0 if km is None else distance_score(km)


def geo_hierarchy_score(completion: str, solution: Any) -> float:
    loc = check_location(solution)
    answer = extract_answer(completion)
    if answer is None:
        return 0.0
    coords = parse_latlon(answer)
    pred = reverse_geocode_place(*coords) if coords else parse_place(answer)
    return 0.0 if pred is None else hierarchy_score(pred, truth_place(loc))


def format_latlon(lat: float, lon: float, digits: int = 6) -> str:
    """Answer text for a point: "48.8566, 2.3522" (at most `digits` decimals; what `parse_latlon` reads back)."""
    return f"{format_number(lat, digits)}, {format_number(lon, digits)}"


def format_place(solution: dict[str, Any]) -> str:
    """Answer text naming a place most specific first, e.g. "Paris, Ile-de-France, France" (given names only)."""
    return ", ".join(solution[k] for k in reversed(PLACE_KEYS) if solution.get(k))


@register_reward("geo_distance")
def geo_distance_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """exp(-d / 1492.7 km) for the predicted point. Column: solution {"lat", "lon", ...}."""
    return score_each("geo_distance", completions, columns, geo_distance_score)


@register_reward("geo_hierarchy")
def geo_hierarchy_reward(completions: Sequence[Any], **columns: Any) -> list[float | None]:
    """Country 0.5 / region 0.3 / city 0.2 credit (module doc). Column: solution {"lat", "lon", names?}."""
    return score_each("geo_hierarchy", completions, columns, geo_hierarchy_score)
