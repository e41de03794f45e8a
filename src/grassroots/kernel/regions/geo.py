"""GCJ-02 (the obfuscated datum of Chinese commercial maps) ⇄ WGS-84, scalar and numpy.

The forward transform is the public standard algorithm (Krasovsky ellipsoid, the polynomial-plus-
sine offset used by every open implementation). There is no closed-form inverse, so GCJ-02 → WGS-84
iterates the forward transform until the residual is below `INVERSE_TOLERANCE_DEG`.
Outside China the datum is not shifted, so both directions return the input unchanged there.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

_A = 6378245.0  # Krasovsky 1940 semi-major axis, metres
_EE = 0.00669342162296594323  # Krasovsky 1940 first eccentricity squared

# Bounding box used by the reference implementations to decide "in China" (lon, lat, degrees).
CHINA_MIN_LON, CHINA_MAX_LON = 72.004, 137.8347
CHINA_MIN_LAT, CHINA_MAX_LAT = 0.8293, 55.8271

INVERSE_TOLERANCE_DEG = 1e-9
INVERSE_MAX_ITERATIONS = 30

FloatArray = npt.NDArray[np.float64]


def out_of_china(lon: float, lat: float) -> bool:
    """True where GCJ-02 applies no offset (outside the rough bounding box of China)."""
    return not (CHINA_MIN_LON <= lon <= CHINA_MAX_LON and CHINA_MIN_LAT <= lat <= CHINA_MAX_LAT)


def _out_of_china_array(lon: FloatArray, lat: FloatArray) -> npt.NDArray[np.bool_]:
    return ~((lon >= CHINA_MIN_LON) & (lon <= CHINA_MAX_LON)
             & (lat >= CHINA_MIN_LAT) & (lat <= CHINA_MAX_LAT))


def _offset(lon: Any, lat: Any) -> tuple[Any, Any]:
    """The GCJ-02 shift (dlon, dlat) in degrees at WGS-84 positions (numpy, scalars too)."""
    x = lon - 105.0
    y = lat - 35.0
    pi = math.pi
    dlat = (-100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * np.sqrt(np.abs(x))
            + (20.0 * np.sin(6.0 * x * pi) + 20.0 * np.sin(2.0 * x * pi)) * 2.0 / 3.0
            + (20.0 * np.sin(y * pi) + 40.0 * np.sin(y / 3.0 * pi)) * 2.0 / 3.0
            + (160.0 * np.sin(y / 12.0 * pi) + 320.0 * np.sin(y * pi / 30.0)) * 2.0 / 3.0)
    dlon = (300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * np.sqrt(np.abs(x))
            + (20.0 * np.sin(6.0 * x * pi) + 20.0 * np.sin(2.0 * x * pi)) * 2.0 / 3.0
            + (20.0 * np.sin(x * pi) + 40.0 * np.sin(x / 3.0 * pi)) * 2.0 / 3.0
            + (150.0 * np.sin(x / 12.0 * pi) + 300.0 * np.sin(x / 30.0 * pi)) * 2.0 / 3.0)
    radlat = lat / 180.0 * pi
    magic = 1.0 - _EE * np.sin(radlat) ** 2
    sqrtmagic = np.sqrt(magic)
    dlat = (dlat * 180.0) / ((_A * (1.0 - _EE)) / (magic * sqrtmagic) * pi)
    dlon = (dlon * 180.0) / (_A / sqrtmagic * np.cos(radlat) * pi)
    return dlon, dlat


def wgs84_to_gcj02(lon: float, lat: float) -> tuple[float, float]:
    """WGS-84 (lon, lat) → GCJ-02 (lon, lat)."""
    if out_of_china(lon, lat):
        return lon, lat
    dlon, dlat = _offset(np.float64(lon), np.float64(lat))
    return float(lon + dlon), float(lat + dlat)


def gcj02_to_wgs84(lon: float, lat: float) -> tuple[float, float]:
    """GCJ-02 (lon, lat) → WGS-84 (lon, lat), iterating the forward transform to < 1e-9°."""
    if out_of_china(lon, lat):
        return lon, lat
    wlon, wlat = lon, lat
    for _ in range(INVERSE_MAX_ITERATIONS):
        glon, glat = wgs84_to_gcj02(wlon, wlat)
        elon, elat = glon - lon, glat - lat
        if abs(elon) < INVERSE_TOLERANCE_DEG and abs(elat) < INVERSE_TOLERANCE_DEG:
            break
        # The offset's derivative is ~1e-5 per degree, so this fixed-point step converges fast.
        wlon -= elon
        wlat -= elat
    return wlon, wlat


def wgs84_to_gcj02_array(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Vectorised WGS-84 → GCJ-02; points outside China pass through."""
    x = np.asarray(lon, dtype=np.float64)
    y = np.asarray(lat, dtype=np.float64)
    dlon, dlat = _offset(x, y)
    outside = _out_of_china_array(x, y)
    return np.where(outside, x, x + dlon), np.where(outside, y, y + dlat)


def gcj02_to_wgs84_array(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Vectorised GCJ-02 → WGS-84 by fixed-point iteration; points outside China pass through."""
    glon = np.asarray(lon, dtype=np.float64)
    glat = np.asarray(lat, dtype=np.float64)
    wlon, wlat = glon.copy(), glat.copy()
    for _ in range(INVERSE_MAX_ITERATIONS):
        flon, flat = wgs84_to_gcj02_array(wlon, wlat)
        elon, elat = flon - glon, flat - glat
        wlon -= elon
        wlat -= elat
        if not (np.nanmax(np.abs(elon), initial=0.0) >= INVERSE_TOLERANCE_DEG
                or np.nanmax(np.abs(elat), initial=0.0) >= INVERSE_TOLERANCE_DEG):
            break
    outside = _out_of_china_array(glon, glat)
    return np.where(outside, glon, wlon), np.where(outside, glat, wlat)


def gcj02_to_wgs84_coordinates(coordinates: object) -> object:
    """Convert nested GeoJSON coordinate lists ([lon, lat] leaves) from GCJ-02 to WGS-84."""
    if isinstance(coordinates, list | tuple) and coordinates and isinstance(
            coordinates[0], int | float):
        lon, lat = gcj02_to_wgs84(float(coordinates[0]), float(coordinates[1]))
        return [lon, lat, *coordinates[2:]]
    if isinstance(coordinates, list | tuple):
        return [gcj02_to_wgs84_coordinates(part) for part in coordinates]
    return coordinates


def metres_per_degree(lat: float) -> tuple[float, float]:
    """Approximate metres per degree of longitude and of latitude at a latitude (WGS-84)."""
    phi = math.radians(lat)
    per_lat = 111132.954 - 559.822 * math.cos(2 * phi) + 1.175 * math.cos(4 * phi)
    per_lon = 111412.84 * math.cos(phi) - 93.5 * math.cos(3 * phi) + 0.118 * math.cos(5 * phi)
    return per_lon, per_lat
