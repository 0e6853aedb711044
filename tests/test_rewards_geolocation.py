"""Geolocation: haversine against known city pairs, the GeoGuessr distance curve, and hierarchical credit."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from mmreason.rewards.geolocation import (
    EARTH_RADIUS_KM,
    Place,
    check_location,
    country_code,
    distance_score,
    format_latlon,
    format_place,
    haversine_km,
    hierarchy_score,
    parse_latlon,
    parse_place,
    predicted_distance_km,
    reverse_geocode_place,
)
from mmreason.rewards.parse import ColumnError

from mmreason.registry import get_reward

PARIS, LONDON = (48.8566, 2.3522), (51.5074, -0.1278)
NEW_YORK, LOS_ANGELES = (40.7128, -74.0060), (34.0522, -118.2437)
SYDNEY, TOKYO = (-33.8688, 151.2093), (35.6762, 139.6503)


# Great-circle distances on the R = 6371.0088 km sphere, computed independently (atan2 of cross and dot products
# of unit vectors) and matching published city-pair values (Paris-London 343.5 km, NY-LA ~3936 km, Sydney-Tokyo
# ~7826 km).
@pytest.mark.parametrize(
    "a, b, km",
    [
        (PARIS, LONDON, 343.557),
        (NEW_YORK, LOS_ANGELES, 3935.752),
        (SYDNEY, TOKYO, 7825.829),
        ((0.0, 0.0), (0.0, 180.0), 20015.114),  # half the equator: pi * R
        ((90.0, 0.0), (-90.0, 0.0), 20015.114),
        ((0.0, 179.0), (0.0, -179.0), 222.390),  # across the antimeridian
        (PARIS, PARIS, 0.0),
    ],
)
def test_haversine_city_pairs_within_1_km(a, b, km):
    assert haversine_km(*a, *b) == pytest.approx(km, abs=1.0)
    assert haversine_km(*b, *a) == pytest.approx(km, abs=1.0)


def test_half_circumference_uses_the_mean_radius():
    assert haversine_km(0, 0, 0, 180) == pytest.approx(math.pi * EARTH_RADIUS_KM)


@pytest.mark.parametrize(
    "km, score",
    [(0, 1.0), (1, 0.9993), (25, 0.9834), (200, 0.8746), (750, 0.6050), (2500, 0.1873), (20015, 0.0), (-5, 1.0)],
)
def test_distance_score_is_the_geoguessr_world_curve(km, score):
    assert distance_score(km) == pytest.approx(score, abs=1e-4)
    assert 5000 * distance_score(km) == pytest.approx(5000 * math.exp(-max(km, 0) / 1492.7))


TRUTH_PARIS = {"lat": PARIS[0], "lon": PARIS[1]}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>48.8566, 2.3522</answer>", 1.0),
        ("<answer>51.5074, -0.1278</answer>", math.exp(-343.557 / 1492.7)),
        ('<answer>{"lat": 51.5074, "lon": -0.1278}</answer>', math.exp(-343.557 / 1492.7)),
        ("<answer>51.5074N 0.1278W</answer>", math.exp(-343.557 / 1492.7)),
        ("<answer>Paris, France</answer>", 0.0),  # no coordinates
        ("<answer>200, 400</answer>", 0.0),
        ("<answer>1e400, 2</answer>", 0.0),
        ("48.8566, 2.3522", 0.0),  # no answer tag
        ("", 0.0),
    ],
)
def test_geo_distance_reward(text, expected):
    assert get_reward("geo_distance")([text], solution=[TRUTH_PARIS]) == [pytest.approx(expected, abs=1e-3)]


def test_reverse_geocode_place_offline():
    place = reverse_geocode_place(*PARIS)
    assert (place.country, place.country_code, place.region, place.city) == ("France", "FR", "Île-de-France", "Paris")
    assert reverse_geocode_place(*NEW_YORK).country_code == "US"


@pytest.mark.parametrize(
    "name, code",
    [
        ("France", "FR"),
        ("france", "FR"),
        ("FR", "FR"),
        ("USA", "US"),
        ("United States of America", "US"),
        ("the United States", "US"),
        ("UK", "GB"),
        ("England", "GB"),
        ("South Korea", "KR"),
        ("Korea, Republic of", "KR"),
        ("Côte d'Ivoire", "CI"),
        ("Czechia", "CZ"),
        ("The Netherlands", "NL"),
        ("fr", None),  # lower-case two letters are words, not codes
        ("Atlantis", None),
        ("", None),
        (None, None),
    ],
)
def test_country_code(name, code):
    assert country_code(name) == code


@pytest.mark.parametrize(
    "text, expected",
    [
        ("France", Place(country="France", country_code="FR")),
        ("Paris, France", Place(country="France", country_code="FR", names=("Paris",))),
        ('{"city": "Paris", "state": "IDF", "country": "FR"}', Place("FR", "FR", "IDF", "Paris")),
        ("a, b, c, d", None),  # more than three parts is hedging
        ("Paris,, France", None),
        ("", None),
        ("{}", None),
    ],
)
def test_parse_place(text, expected):
    assert parse_place(text) == expected


NAMED_PARIS = {"lat": PARIS[0], "lon": PARIS[1], "country": "France", "region": "Île-de-France", "city": "Paris"}


@pytest.mark.parametrize(
    "text, solution, expected",
    [
        ("<answer>Paris, Ile-de-France, France</answer>", NAMED_PARIS, 1.0),
        ("<answer>Paris, France</answer>", NAMED_PARIS, 0.7),  # country 0.5 + city 0.2
        ("<answer>Ile de France, France</answer>", NAMED_PARIS, 0.8),  # country 0.5 + region 0.3
        ("<answer>France</answer>", NAMED_PARIS, 0.5),
        ("<answer>FR</answer>", NAMED_PARIS, 0.5),
        ("<answer>Lyon, Auvergne-Rhone-Alpes, France</answer>", NAMED_PARIS, 0.5),
        ("<answer>Paris, Texas, USA</answer>", NAMED_PARIS, 0.0),  # right city name, wrong country: nothing
        ("<answer>Paris</answer>", NAMED_PARIS, 0.0),  # the last part is read as the country
        ("<answer>Paris, Lyon, Nice, France</answer>", NAMED_PARIS, 0.0),  # hedging
        ('<answer>{"city": "paris", "country": "france"}</answer>', NAMED_PARIS, 0.7),
        ("<answer>48.8566, 2.3522</answer>", NAMED_PARIS, 1.0),  # coordinates are reverse-geocoded
        ("<answer>Paris, France (48.8566, 2.3522)</answer>", NAMED_PARIS, 1.0),  # coordinates win over names
        ("<answer>45.764, 4.8357</answer>", NAMED_PARIS, 0.5),  # Lyon's coordinates
        ("<answer>51.5074, -0.1278</answer>", NAMED_PARIS, 0.0),  # London
        ("<answer>Paris, France</answer>", {"lat": PARIS[0], "lon": PARIS[1], "country": "France"}, 0.7),
        ("<answer>France</answer>", {"lat": 0.0, "lon": 0.0, "country": "France"}, 0.5 / 1.0),
        ("<answer>Paris, France</answer>", TRUTH_PARIS, 0.7),  # truth names from reverse geocoding
        ("<answer>New York, New York, USA</answer>", {"lat": NEW_YORK[0], "lon": NEW_YORK[1]}, 1.0),
        ("<answer>New York, USA</answer>", {"lat": NEW_YORK[0], "lon": NEW_YORK[1]}, 0.8),  # one name, one tier
        ("no answer tag", NAMED_PARIS, 0.0),
        ("<answer></answer>", NAMED_PARIS, 0.0),
        ("<answer><script>alert(1)</script></answer>", NAMED_PARIS, 0.0),
    ],
)
def test_geo_hierarchy_reward(text, solution, expected):
    assert get_reward("geo_hierarchy")([text], solution=[solution]) == [pytest.approx(expected)]


def test_hierarchy_denominator_skips_tiers_the_truth_lacks():
    truth = Place(country="France", country_code="FR", city="Paris")
    assert hierarchy_score(Place(country="France", country_code="FR", names=("Paris",)), truth) == pytest.approx(1.0)
    assert hierarchy_score(Place(country="France", country_code="FR"), truth) == pytest.approx(0.5 / 0.7)
    assert hierarchy_score(Place(country="Frankreich"), truth) == 0.0


@pytest.mark.parametrize(
    "solution",
    [
        {"lat": 91, "lon": 0},
        {"lat": 0},
        {"lat": "48", "lon": 2},
        {"lat": math.nan, "lon": 0},
        [48.8, 2.3],
        {"lat": 0, "lon": 0, "country": 3},
    ],
)
def test_bad_solution_is_a_column_error(solution):
    for name in ("geo_distance", "geo_hierarchy"):
        with pytest.raises(ColumnError, match="solution"):
            get_reward(name)(["<answer>1, 2</answer>"], solution=[solution])


def test_helpers_round_trip_and_distance():
    assert parse_latlon(format_latlon(*SYDNEY)) == pytest.approx(SYDNEY)
    km = predicted_distance_km(f"<answer>{format_latlon(*TOKYO)}</answer>", {"lat": SYDNEY[0], "lon": SYDNEY[1]})
    assert km == pytest.approx(7825.829, abs=1.0)
    assert predicted_distance_km("<answer>Tokyo</answer>", TRUTH_PARIS) is None


def test_numpy_scalars_in_the_solution_are_accepted():
    solution = {"lat": np.float32(PARIS[0]), "lon": np.float64(PARIS[1])}
    assert get_reward("geo_distance")(["<answer>48.8566, 2.3522</answer>"], solution=[solution]) == [
        pytest.approx(1.0, abs=1e-4)
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("48.8566, 2.3522", (48.8566, 2.3522)),
        ("(-33.8688, 151.2093)", (-33.8688, 151.2093)),
        ("48.8566 2.3522", (48.8566, 2.3522)),
        ('{"lat": 48.8, "lon": 2.3}', (48.8, 2.3)),
        ('{"latitude": "48.8", "longitude": -2.3}', (48.8, -2.3)),
        ('```json\n{"lat": 1, "lng": 2}\n```', (1.0, 2.0)),
        ("48.8N 2.3E", (48.8, 2.3)),
        ("2.35°E, 48.85°N", (48.85, 2.35)),
        ("33.87° S, 151.21° W", (-33.87, -151.21)),
        ("33°52'S 151°12'E", (-33 - 52 / 60, 151.2)),
        ("48 North, 2 West", (48.0, -2.0)),
        ("lat: 48.8, lon: 2.3", (48.8, 2.3)),
        ("Longitude 2.3; latitude 48.8", (48.8, 2.3)),
        ('roughly {"lat": 48.8, "lon": 2.3} I think', (48.8, 2.3)),  # JSON inside prose, read by its labels
        ("Paris 2024, 48.85, 2.35", (48.85, 2.35)),  # the first in-range adjacent pair
        ("Paris, France", None),
        ("100, 200", None),
        ("48.8", None),
        ("91N 2E", None),
        ("1e400, 2", None),
        ('{"lat": NaN, "lon": 2}', None),
        ("", None),
        ("1 " * 50_000, (1.0, 1.0)),
    ],
)
def test_parse_latlon(text, expected):
    got = parse_latlon(text)
    if expected is None:
        assert got is None
    else:
        assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    "value, expected",
    [
        ({"lat": 48.8566, "lon": 2.3522}, {"lat": 48.8566, "lon": 2.3522}),
        (
            {"lat": 1, "lon": 2, "country": " France ", "city": None, "extra": 1},
            {"lat": 1.0, "lon": 2.0, "country": "France"},
        ),
        ({"lat": np.float32(-90), "lon": np.int64(180)}, {"lat": -90.0, "lon": 180.0}),
    ],
)
def test_check_location(value, expected):
    assert check_location(value) == expected


@pytest.mark.parametrize(
    "value, column",
    [
        ({"lat": 1, "lon": 2, "region": ""}, "solution.region"),
        ({"lat": 1, "lon": 2, "city": "  "}, "solution.city"),
        ({"lat": 1, "lon": 2, "country": ["France"]}, "solution.country"),
        ({"lat": True, "lon": 2}, "solution"),
        ({"lat": 1, "lon": 180.5}, "solution"),
        ("48.8, 2.3", "solution"),
    ],
)
def test_check_location_rejects(value, column):
    with pytest.raises(ColumnError, match=f"^{re.escape(column)}: expected"):
        check_location(value)


def test_format_latlon_and_place():
    assert format_latlon(48.8566, 2.3522) == "48.8566, 2.3522"
    assert format_latlon(1, -2.5) == "1, -2.5"
    assert format_latlon(48.123456789, 2.0, digits=3) == "48.123, 2"
    assert format_place({"lat": 0, "lon": 0, "city": "Paris", "country": "France"}) == "Paris, France"
