"""Open311 API clients (keys kept as an SM3 hash) and what a request brings beyond the incident."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from grassroots.db import Base


class Open311Client(Base):
    """An application allowed to POST requests; its key is shown once and kept only as a hash."""

    __tablename__ = "open311_client"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)  # unique among unrevoked clients
    key_prefix: Mapped[str] = mapped_column(String(16))  # enough to tell keys apart in a list
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SM3, hex
    created_by: Mapped[str] = mapped_column(String(120))
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Open311Request(Base):
    """The Open311 fields an incident has no column for, one row per incident from this channel.

    Contact details beyond the phone and name (which intake encrypts on the incident) are
    personal data and are stored SM4-GCM encrypted; none of this is shown in the public feed.
    """

    __tablename__ = "open311_request"

    incident_id: Mapped[int] = mapped_column(ForeignKey("incident.id"), primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("open311_client.id"), index=True)
    address_id: Mapped[str | None] = mapped_column(String(120))  # standard address (door plate)
    media_url: Mapped[str | None] = mapped_column(String(1000))
    account_id: Mapped[str | None] = mapped_column(String(120))  # the client's own user id
    email_enc: Mapped[str | None] = mapped_column(String(600))
    device_id_enc: Mapped[str | None] = mapped_column(String(600))
