"""API input and output shapes for the network."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from grassroots.irrigation.network.models import CanalLevel, Crop, StructureKind, WaterUse

LonLat = tuple[float, float]


class CanalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=40)
    name: str = Field(min_length=1, max_length=120)
    level: CanalLevel
    parent_code: str | None = None
    length_km: float = Field(gt=0, le=500)
    design_capacity_m3s: float = Field(gt=0, le=1000)
    lining: str = Field(min_length=1, max_length=40)
    path: list[LonLat] = Field(min_length=2)


class StructureIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=40)
    name: str = Field(min_length=1, max_length=120)
    kind: StructureKind
    canal_code: str | None = None
    outlet_canal_code: str | None = None
    chainage_km: float | None = Field(default=None, ge=0)
    lon: float = Field(ge=-180, le=180)
    lat: float = Field(ge=-90, le=90)
    is_turnout: bool = False
    water_use: WaterUse | None = None
    sl651_address: str | None = Field(default=None, pattern=r"^[0-9A-F]{10}$")
    modbus_host: str | None = Field(default=None, max_length=120)
    modbus_port: int | None = Field(default=None, ge=1, le=65535)
    modbus_unit: int | None = Field(default=None, ge=0, le=247)
    mqtt_device_id: str | None = Field(default=None, min_length=1, max_length=64)
    config: dict[str, Any] = Field(default_factory=dict)


class PumpUnitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    number: int = Field(ge=1, le=99)
    rated_flow_m3s: float = Field(gt=0, le=100)
    rated_head_m: float = Field(gt=0, le=500)
    rated_power_kw: float = Field(gt=0, le=100_000)


class WuaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=40)
    name: str = Field(min_length=1, max_length=120)
    canal_code: str | None = None
    contact: str | None = Field(default=None, max_length=120)
    turnout_codes: list[str] = Field(default_factory=list)


class FieldIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=1, max_length=40)
    name: str = Field(min_length=1, max_length=120)
    wua_code: str
    turnout_code: str | None = None
    area_mu: float = Field(gt=0, le=1_000_000)
    crop: Crop
    lon: float = Field(ge=-180, le=180)
    lat: float = Field(ge=-90, le=90)
    ring: list[LonLat] | None = Field(default=None, min_length=4)


class NetworkIn(BaseModel):
    """A whole network (or the part of one still missing) to import in one action."""

    model_config = ConfigDict(extra="forbid")

    canals: list[CanalIn] = Field(default_factory=list)  # parents before their children
    structures: list[StructureIn] = Field(default_factory=list)
    pump_units: dict[str, list[PumpUnitIn]] = Field(default_factory=dict)  # by station code
    wuas: list[WuaIn] = Field(default_factory=list)
    fields: list[FieldIn] = Field(default_factory=list)


class Feature(BaseModel):
    """A GeoJSON Feature (RFC 7946)."""

    type: Literal["Feature"] = "Feature"
    id: str
    geometry: dict[str, Any]
    properties: dict[str, Any]


class FeatureCollection(BaseModel):
    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[Feature]
