"""Audit tables: one row per write, and a single head row that anchors the chain."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from grassroots.db import Base


class AuditRow(Base):
    """One write by one actor. `seq` is gapless; `mac` chains it to the row before."""

    __tablename__ = "audit_row"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, unique=True, index=True)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(120))
    action: Mapped[str] = mapped_column(String(120), index=True)
    object_type: Mapped[str] = mapped_column(String(60))
    object_id: Mapped[str] = mapped_column(String(120))
    outcome: Mapped[str] = mapped_column(String(20))
    source_ip: Mapped[str | None] = mapped_column(String(64))
    detail: Mapped[str] = mapped_column(Text, default="{}")
    key_id: Mapped[str] = mapped_column(String(40))
    mac: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """The last sequence number and MAC; updating it first serialises appenders on any database."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_mac: Mapped[str] = mapped_column(String(64), default="")
