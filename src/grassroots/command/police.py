"""The 110 police desk, as the command loop sees it (12345 ↔ 110 transfers, docs/DOMAIN.md §2).

The police system itself is outside Grassroots: a deployment plugs in an adapter for its local
110 interface. `FakePoliceDesk` is an in-process stand-in for the demo and the tests (a fake is
allowed here because the real counterpart lives outside this system); it keeps what was sent so
a test can check it, and answers with a reference number the way a desk would.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from grassroots.kernel.clock import to_display
from grassroots.kernel.errors import GrassrootsError

TRANSFER_TO_POLICE = "transfer_to_police"  # the transition row's action for an outbound transfer


class PoliceDeskUnavailable(GrassrootsError):
    """The 110 desk did not take the transfer; nothing was recorded, so it can be tried again."""

    status_code = 502
    code = "police_desk_unavailable"
    message_id = "command.error.police_desk_unavailable"


@dataclass(frozen=True)
class PoliceTransfer:
    """What the centre hands to 110 for one incident."""

    incident_number: str
    category_code: str
    category_name: str
    title: str
    description: str
    lon: float | None
    lat: float | None
    address_text: str | None
    reporter_phone: str | None  # in full: the police need to call the caller back
    reason: str | None
    sent_at: datetime


class PoliceDesk(Protocol):
    """Sends an incident to 110 and returns the reference number the desk gives it."""

    def transfer(self, transfer: PoliceTransfer, /) -> str: ...


@dataclass
class FakePoliceDesk:
    """An in-process 110 desk: records each transfer and numbers it like 110-20260310-0001."""

    sent: list[tuple[str, PoliceTransfer]] = field(default_factory=list)
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def transfer(self, transfer: PoliceTransfer, /) -> str:
        with self._lock:
            day = to_display(transfer.sent_at).strftime("%Y%m%d")
            reference = f"110-{day}-{next(self._counter):04d}"
            self.sent.append((reference, transfer))
        return reference
