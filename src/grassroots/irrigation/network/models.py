"""Network tables. Structures carry the field devices; readings refer to a structure by id.

A pump station is a Structure of kind pump_station with its PumpUnit rows. A turnout (斗口) is
the structure where water leaves the canal system for its user and is metered; an offtake for
industry or ecology is a turnout too, marked by its water use. `outlet_canal_id` names the canal
a structure feeds (the pump feeds the main canal, a head gate its branch, a turnout its
lateral), which is how a canal's inflow is found without guessing from positions.
"""

from __future__ import annotations

import enum

from sqlalchemy import Boolean, Enum, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from grassroots.db import Base


def _enum(e: type[enum.Enum], length: int = 30) -> Enum:
    return Enum(e, native_enum=False, length=length, values_callable=lambda x: [m.value for m in x])


class CanalLevel(enum.StrEnum):
    MAIN = "main"  # 干渠
    BRANCH = "branch"  # 支渠
    LATERAL = "lateral"  # 斗渠


class StructureKind(enum.StrEnum):
    PUMP_STATION = "pump_station"  # 泵站
    INTEGRATED_GATE = "integrated_gate"  # 测控一体化闸门
    SMART_HOIST = "smart_hoist"  # 智能启闭机
    PARSHALL_FLUME = "parshall_flume"  # 巴歇尔槽
    LEVEL_GAUGE = "level_gauge"  # 水位计
    SOIL_MOISTURE = "soil_moisture"  # 墒情站
    WEATHER = "weather"  # 气象站


class WaterUse(enum.StrEnum):
    AGRICULTURE = "agriculture"
    INDUSTRY = "industry"
    ECOLOGY = "ecology"


class Crop(enum.StrEnum):
    """Crops with FAO-56 Table 12 coefficients (DOMAIN.md §8)."""

    MAIZE = "maize"
    SPRING_WHEAT = "spring_wheat"
    SUNFLOWER = "sunflower"
    ALFALFA = "alfalfa"


class Canal(Base):
    __tablename__ = "irr_canal"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    level: Mapped[CanalLevel] = mapped_column(_enum(CanalLevel))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("irr_canal.id"), index=True)
    length_km: Mapped[float] = mapped_column(Float)
    design_capacity_m3s: Mapped[float] = mapped_column(Float)
    lining: Mapped[str] = mapped_column(String(40))
    geometry: Mapped[str] = mapped_column(Text)  # GeoJSON LineString, WGS-84


class Structure(Base):
    """A structure on a canal and the device that reports for it (RTU / Modbus / MQTT ids)."""

    __tablename__ = "irr_structure"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    kind: Mapped[StructureKind] = mapped_column(_enum(StructureKind))
    canal_id: Mapped[int | None] = mapped_column(ForeignKey("irr_canal.id"), index=True)
    chainage_km: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    lat: Mapped[float] = mapped_column(Float)
    is_turnout: Mapped[bool] = mapped_column(Boolean, default=False)  # 斗口: metering point
    water_use: Mapped[WaterUse | None] = mapped_column(_enum(WaterUse))
    # Device addressing: an SL 651 station address (10 hex digits), a Modbus endpoint, an MQTT id.
    sl651_address: Mapped[str | None] = mapped_column(String(10), unique=True)
    modbus_host: Mapped[str | None] = mapped_column(String(120))
    modbus_port: Mapped[int | None] = mapped_column(Integer)
    modbus_unit: Mapped[int | None] = mapped_column(Integer)
    mqtt_device_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    config: Mapped[str] = mapped_column(Text, default="{}")  # JSON: throat width, Cd, thresholds…
    # The canal this structure feeds: main for the pump, the branch for its head gate, the
    # lateral for a turnout. None for gauges, hoists on checks, stations.
    outlet_canal_id: Mapped[int | None] = mapped_column(ForeignKey("irr_canal.id"), index=True)


class PumpUnit(Base):
    """One pump set of a pump station, with its nameplate rating."""

    __tablename__ = "irr_pump_unit"
    __table_args__ = (UniqueConstraint("station_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    station_id: Mapped[int] = mapped_column(ForeignKey("irr_structure.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1号机组, 2号机组…
    rated_flow_m3s: Mapped[float] = mapped_column(Float)
    rated_head_m: Mapped[float] = mapped_column(Float)
    rated_power_kw: Mapped[float] = mapped_column(Float)


class WaterUserAssociation(Base):
    """用水户协会: the farmers' body that orders water and settles it at its turnouts."""

    __tablename__ = "irr_wua"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    canal_id: Mapped[int | None] = mapped_column(ForeignKey("irr_canal.id"), index=True)
    contact: Mapped[str | None] = mapped_column(String(120))


class WuaTurnout(Base):
    """A turnout an association takes its water at (an association may have several)."""

    __tablename__ = "irr_wua_turnout"

    wua_id: Mapped[int] = mapped_column(ForeignKey("irr_wua.id"), primary_key=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("irr_structure.id"), primary_key=True,
                                              index=True)


class IrrigatedField(Base):
    """A block of irrigated land: its area in mu, its crop and the turnout that waters it."""

    __tablename__ = "irr_field"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    wua_id: Mapped[int] = mapped_column(ForeignKey("irr_wua.id"), index=True)
    turnout_id: Mapped[int | None] = mapped_column(ForeignKey("irr_structure.id"), index=True)
    area_mu: Mapped[float] = mapped_column(Float)
    crop: Mapped[Crop] = mapped_column(_enum(Crop))
    lon: Mapped[float] = mapped_column(Float)  # centroid, WGS-84
    lat: Mapped[float] = mapped_column(Float)
    polygon: Mapped[str | None] = mapped_column(Text)  # GeoJSON Polygon, WGS-84
