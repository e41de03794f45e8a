"""GCJ-02 ⇄ WGS-84 against published reference values, and the inverse's accuracy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grassroots.kernel.regions.geo import (
    gcj02_to_wgs84,
    gcj02_to_wgs84_array,
    gcj02_to_wgs84_coordinates,
    metres_per_degree,
    out_of_china,
    wgs84_to_gcj02,
    wgs84_to_gcj02_array,
)

# (WGS-84 lon, lat) → (GCJ-02 lon, lat) from the test suites of googollee/eviltransform
# (Shanghai, Shenzhen, Beijing) and wandergis/coordtransform (Beijing, 116.404 / 39.915).
REFERENCE = [
    ((121.5272106, 31.1774276), (121.531541859215, 31.17530398364597)),
    ((113.912316, 22.543847), (113.9171764808363, 22.540796131694766)),
    ((116.377817, 39.911954), (116.38404722455657, 39.91334545536069)),
    ((116.404, 39.915), (116.41024449916938, 39.91640428150164)),
]


@pytest.mark.parametrize(("wgs", "gcj"), REFERENCE)
def test_wgs84_to_gcj02_reproduces_the_published_values(wgs: tuple, gcj: tuple) -> None:
    lon, lat = wgs84_to_gcj02(*wgs)
    assert lon == pytest.approx(gcj[0], abs=1e-9)
    assert lat == pytest.approx(gcj[1], abs=1e-9)


@pytest.mark.parametrize(("wgs", "gcj"), REFERENCE)
def test_gcj02_to_wgs84_inverts_the_published_values(wgs: tuple, gcj: tuple) -> None:
    lon, lat = gcj02_to_wgs84(*gcj)
    assert abs(lon - wgs[0]) < 1e-7 and abs(lat - wgs[1]) < 1e-7


def test_a_round_trip_across_china_is_accurate_to_a_millionth_of_a_degree() -> None:
    rng = np.random.default_rng(1)
    lons, lats = rng.uniform(74, 134, 20_000), rng.uniform(18, 53, 20_000)
    glon, glat = wgs84_to_gcj02_array(lons, lats)
    back_lon, back_lat = gcj02_to_wgs84_array(glon, glat)
    assert np.max(np.abs(back_lon - lons)) < 1e-6
    assert np.max(np.abs(back_lat - lats)) < 1e-6
    for k in range(0, 20_000, 997):
        assert gcj02_to_wgs84(*wgs84_to_gcj02(lons[k], lats[k])) == pytest.approx(
            (lons[k], lats[k]), abs=1e-7)


def test_the_array_versions_agree_with_the_scalar_ones() -> None:
    lons, lats = np.array([106.27, 121.5, 10.0]), np.array([29.39, 31.2, 50.0])
    glon, glat = wgs84_to_gcj02_array(lons, lats)
    for k in range(3):
        assert (glon[k], glat[k]) == pytest.approx(wgs84_to_gcj02(lons[k], lats[k]), abs=1e-12)


def test_the_offset_near_chongqing_is_a_few_hundred_metres() -> None:
    lon, lat = 106.27, 29.39  # Shuangfu, Jiangjin
    glon, glat = wgs84_to_gcj02(lon, lat)
    per_lon, per_lat = metres_per_degree(lat)
    shift = math.hypot((glon - lon) * per_lon, (glat - lat) * per_lat)
    assert 200 < shift < 700


def test_points_outside_china_are_not_shifted() -> None:
    assert out_of_china(2.35, 48.85)
    assert not out_of_china(106.27, 29.39)
    assert wgs84_to_gcj02(2.35, 48.85) == (2.35, 48.85)
    assert gcj02_to_wgs84(-74.0, 40.7) == (-74.0, 40.7)
    lon, lat = wgs84_to_gcj02_array(np.array([2.35]), np.array([48.85]))
    assert (lon[0], lat[0]) == (2.35, 48.85)


def test_nested_geojson_coordinates_are_converted_position_by_position() -> None:
    gcj = wgs84_to_gcj02(106.27, 29.39)
    ring = [[list(gcj), list(gcj), list(gcj), list(gcj)]]
    converted = gcj02_to_wgs84_coordinates(ring)
    assert isinstance(converted, list)
    assert converted[0][2] == pytest.approx([106.27, 29.39], abs=1e-7)
