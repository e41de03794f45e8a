"""An asyncio TCP centre station for SL 651-2014 units: decode, sink durably, then confirm.

Work modes (the standard's M1..M4), as implemented here:

* M2, confirm each report: every single-frame report (30..34) is passed to the sink and
  confirmed only after the sink returns True. A frame ended by ETB (more frames follow
  in this session) is confirmed with ACK; the last one (ETX) with EOT, which ends the
  session, or ESC, which keeps the link online, as ``link_mode`` says.
* M3, multi-packet: SYN packets are collected per connection and the whole message is
  sunk and confirmed once, after its last packet; single packets get no answer and a
  missing packet is not asked for (no NAK): without a confirmation the unit resends.
* 2F keep-alive: counted, never answered.
* M1 (no confirmation) needs nothing from the centre; M4 (centre polls) is not here.

A sink that returns False or raises gets no confirmation sent, so the unit resends
later; duplicates therefore reach the sink, and deduplication (``Report.dedupe_key``)
belongs to storage. A malformed frame is logged with its raw bytes and counted, and
never closes the listener or any connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from types import TracebackType

from grassroots.irrigation.telemetry.sl651 import (
    REPORT_FUNCTIONS,
    Control,
    Direction,
    Frame,
    FrameError,
    FrameReassembler,
    FrameScanner,
    FunctionCode,
    Report,
    build_ack,
    parse_report,
)
from grassroots.kernel.clock import Clock, utcnow

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5651
# A unit that says nothing for this long has dropped off; free its socket.
IDLE_TIMEOUT_S = 300.0
# Packets of a multi-packet message must keep coming at least this often.
REASSEMBLY_TIMEOUT_S = 300.0
READ_SIZE = 4096
# Enough hex to recognise a frame in the log without letting garbage flood it.
LOG_HEX_LIMIT = 1024
# On close, how long open sessions get to finish what they are doing (a sink call).
CLOSE_GRACE_S = 2.0

Sink = Callable[[Report], Awaitable[bool]]
FrameHook = Callable[[Frame], Awaitable[None]]


class LinkMode(StrEnum):
    """How the confirmation of the last frame of a session ends."""

    END_SESSION = "end_session"  # EOT: the unit hangs up
    STAY_ONLINE = "stay_online"  # ESC: the unit keeps the link open for commands


_LAST_FRAME_END = {LinkMode.END_SESSION: Control.EOT, LinkMode.STAY_ONLINE: Control.ESC}


def confirmation_end(frame: Frame, link_mode: LinkMode) -> Control:
    """ACK while the unit says more frames follow (ETB), else EOT or ESC by link mode."""
    if frame.end == Control.ETB and not frame.is_reassembled:
        return Control.ACK
    return _LAST_FRAME_END[link_mode]


@dataclass(slots=True)
class ServerCounters:
    """Running totals across every connection of one server."""

    connections: int = 0
    frames_ok: int = 0
    frames_bad: int = 0
    reports_sunk: int = 0
    sink_refusals: int = 0
    acks_sent: int = 0
    keepalives: int = 0
    other_frames: int = 0
    messages_expired: int = 0
    idle_timeouts: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain mapping (for metrics pages)."""
        return asdict(self)


def hex_preview(raw: bytes, limit: int = LOG_HEX_LIMIT) -> str:
    """Space-separated hex of at most ``limit`` bytes, noting what was cut."""
    shown = raw[:limit].hex(" ")
    return shown if len(raw) <= limit else f"{shown} …(+{len(raw) - limit} bytes)"


@dataclass(slots=True)
class _Session:
    peer: str
    writer: asyncio.StreamWriter
    scanner: FrameScanner
    reassembler: FrameReassembler


class Sl651Server:
    """Listen for telemetry units; pass each report to ``sink`` and confirm once it is stored."""

    def __init__(
        self,
        sink: Sink,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        link_mode: LinkMode = LinkMode.END_SESSION,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        reassembly_timeout_s: float = REASSEMBLY_TIMEOUT_S,
        clock: Clock | None = None,
        on_frame: FrameHook | None = None,
    ) -> None:
        self.sink = sink
        self.host = host
        self.port = port
        self.link_mode = link_mode
        self.idle_timeout_s = idle_timeout_s
        self.reassembly_timeout_s = reassembly_timeout_s
        self.counters = ServerCounters()
        self._clock = clock
        self._on_frame = on_frame
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self) -> None:
        """Bind and start accepting; with port 0 the bound port is in ``self.port``."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("SL651 centre listening on %s:%s (%s)", self.host, self.port,
                    self.link_mode)

    async def serve_forever(self) -> None:
        """Run until cancelled."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
        # Closing the sockets ends each read loop cleanly; cancelling is the fallback.
        for writer in self._sessions.values():
            writer.transport.abort()
        tasks = list(self._sessions)
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=CLOSE_GRACE_S)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Sl651Server:
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.close()

    def _now(self) -> datetime:
        return self._clock.now() if self._clock is not None else utcnow()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions[task] = writer
        self.counters.connections += 1
        peername = writer.get_extra_info("peername")
        peer = f"{peername[0]}:{peername[1]}" if peername else "unknown peer"
        session = _Session(peer, writer, FrameScanner(),
                           FrameReassembler(timeout_s=self.reassembly_timeout_s))
        try:
            await self._read_loop(reader, session)
        except asyncio.CancelledError:
            # Only close() cancels a session; Python 3.11's start_server would log a
            # cancelled handler as an error, so end quietly instead.
            logger.info("SL651 session with %s cancelled at shutdown", peer)
        except Exception:  # one broken session must never take the listener down
            logger.exception("SL651 session with %s failed", peer)
        finally:
            self._sessions.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_loop(self, reader: asyncio.StreamReader, session: _Session) -> None:
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(READ_SIZE), self.idle_timeout_s)
            except TimeoutError:
                self.counters.idle_timeouts += 1
                logger.info("SL651 %s idle for %ss, closing", session.peer, self.idle_timeout_s)
                return
            if not chunk:
                for error in session.scanner.flush():
                    self._bad(error, session.peer)
                return
            for item in session.scanner.feed(chunk):
                if isinstance(item, FrameError):
                    self._bad(item, session.peer)
                else:
                    await self._frame(item, session)

    def _bad(self, error: FrameError, peer: str) -> None:
        self.counters.frames_bad += 1
        logger.warning("SL651 bad frame from %s: %s (%s); raw=%s", peer, error.reason,
                       error.kind, hex_preview(error.raw))

    async def _frame(self, frame: Frame, session: _Session) -> None:
        if frame.direction != Direction.UP:
            self._bad(FrameError("downlink frame received by the centre", frame.raw),
                      session.peer)
            return
        self.counters.frames_ok += 1
        if frame.is_packet:
            whole = self._reassemble(frame, session)
            if whole is None:
                return
            frame = whole
        if frame.function == FunctionCode.KEEPALIVE:
            self.counters.keepalives += 1
            return
        if frame.function not in REPORT_FUNCTIONS:
            self.counters.other_frames += 1
            if self._on_frame is not None:
                await self._on_frame(frame)
            return
        await self._report(frame, session)

    def _reassemble(self, packet: Frame, session: _Session) -> Frame | None:
        now = asyncio.get_running_loop().time()
        for key in session.reassembler.expire(now=now):
            self.counters.messages_expired += 1
            logger.warning("SL651 %s: dropped incomplete multi-packet message %s",
                           session.peer, key)
        return session.reassembler.add(packet, now=now)

    async def _report(self, frame: Frame, session: _Session) -> None:
        try:
            report = parse_report(frame)
        except FrameError as error:
            self._bad(error, session.peer)
            return
        for warning in report.warnings:
            logger.info("SL651 %s station %s: %s", session.peer, report.station, warning)
        if not await self._sink(report, session.peer):
            return
        session.writer.write(build_ack(frame, end=confirmation_end(frame, self.link_mode),
                                       now=self._now()))
        await session.writer.drain()
        self.counters.acks_sent += 1

    async def _sink(self, report: Report, peer: str) -> bool:
        """True once the sink has committed the report; a failure means no confirmation."""
        try:
            stored = await self.sink(report)
        except Exception:
            logger.exception("SL651 sink failed for %s serial %s from %s; not confirming",
                             report.station, report.serial, peer)
            stored = False
        if stored is not True:
            self.counters.sink_refusals += 1
            return False
        self.counters.reports_sunk += 1
        return True


async def serve(
    host: str,
    port: int,
    sink: Sink,
    *,
    link_mode: LinkMode = LinkMode.END_SESSION,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
) -> None:
    """Run an SL651 centre station until cancelled."""
    async with Sl651Server(sink, host=host, port=port, link_mode=link_mode,
                           idle_timeout_s=idle_timeout_s) as server:
        await server.serve_forever()
