"""Standard addresses (一标) with their point, and the door plates (智慧门牌) that name them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from grassroots.db import Base

CODE_MAX = 60
TEXT_MAX = 300
TOKEN_MAX = 40
REVOKE_REASON_MAX = 200


class StandardAddress(Base):
    """One standard address: its code, its full text, and the WGS-84 point it stands for."""

    __tablename__ = "std_address"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(CODE_MAX), unique=True)
    text: Mapped[str] = mapped_column(String(TEXT_MAX))  # "重庆市江津区双福街道…1栋"
    # stored_key(text): what typed addresses are matched against, by equality on the index.
    normalized: Mapped[str] = mapped_column(String(TEXT_MAX), index=True)
    lon: Mapped[float] = mapped_column(Float)
    lat: Mapped[float] = mapped_column(Float)
    # The building (or the deepest region) holding the point, fixed when the address is
    # registered, so an incident at this address is routed without a point lookup.
    region_id: Mapped[int | None] = mapped_column(ForeignKey("region.id"), index=True)
    created_at: Mapped[datetime]
    # Retired addresses stay for the incidents and plates that name them; they no longer resolve.
    retired_at: Mapped[datetime | None]


class DoorPlate(Base):
    """A door plate. Its QR code holds only `token`, random and unrelated to anyone living there
    (PIPL: a plate on a public door must not disclose personal data), and it can be revoked."""

    __tablename__ = "door_plate"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token: Mapped[str] = mapped_column(String(TOKEN_MAX), unique=True)
    address_id: Mapped[int] = mapped_column(ForeignKey("std_address.id"), index=True)
    issued_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(String(REVOKE_REASON_MAX))
