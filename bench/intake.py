"""Incident intake through the HTTP API: sustained incidents/s, HTTP and receipt→dispatch latency.

Run: .venv/bin/python bench/intake.py [--duration 20] [--warmup 3] [--workers 1,2]
         [--connections 16] [--threads 0] [--rate 0] [--responders 10] [--history 20000]
         [--backends sqlite,postgresql]

The target (≥ 500 incidents/s sustained, p99 receipt→dispatch ≤ 100 ms, PostgreSQL) is checked
open-loop: ``--rate 500 --connections 64``.

For each backend the bench creates its own database (PostgreSQL ``gr_bench_intake_<pid>``,
SQLite in a temporary directory), migrates it, seeds the demo street (grassroots.demo.seed) and
``--history`` closed incidents of the past 90 days (add_history: a street in service has its
history, and without it the planner's statistics describe an empty incident table for the whole
run), and makes an API token for the demo dispatcher. Each (backend, workers) row then starts
on a fresh copy of that seeded database (PostgreSQL: CREATE DATABASE … TEMPLATE; SQLite: a
file copy), so no row inherits the incidents, duplicate candidates or busy responders of the one
before.

The server is uvicorn in a subprocess (``--workers N``) serving create_app() plus one empty
route, GET /bench/empty, added by this file's own factory (the product has no such route); it
passes through the same middleware stack, so it is the ceiling of this server setup.
``--threads N`` sets each worker's thread pool for sync routes (0 keeps anyio's 40), again in
this file's factory. A separate load-generator process (asyncio over raw HTTP/1.1 keep-alive
connections, so that it costs the two cores little) first drives the empty route, then
POST /api/v1/incidents, each for ``--warmup`` + ``--duration`` seconds. Only requests sent after
the warm-up and answered before the end count; incidents/s counts 2xx answers only, anything
else is reported as errors. ``--rate 0`` (the default) is closed-loop: each connection sends
its next request when the last answer arrives, which measures the most the server sustains.
``--rate R`` is open-loop at R requests/s, with latency taken from when each request was due,
so queueing shows.

Each POST reports a new incident at a random point of the demo street that the locate index
places in a zone (every one of them inside the dispatcher's scope), with a random active
category that goes to the zone team and asks nothing required, a random reporter phone (stored
encrypted) and a unique Idempotency-Key. The product dispatches it in the same request to the
nearest available on-duty responder; the request waits for the group-commit writer
(command.intake_writer) and is answered once the batch holding it has committed. The demo roster
has only three on duty per zone, so the bench puts ``--responders`` more on duty in each zone
(through the product's actions), and a bench-only "releaser" thread marks busy responders
available again every 20 ms (SQL straight to responder_status, outside the API, skipping rows an
intake holds locked) — as if each finished at once; without them dispatching would stop after a
few dozen incidents and the rest would skip the dispatch step. Receipt→dispatch comes from the
database after the run: incident.dispatched_at − incident.received_at for the incidents received
in the window (received_at is stamped when the API route takes the request, dispatched_at inside
the batch that writes it, so the wait for the batch counts; the HTTP latency is the end-to-end
figure). CPU is read from /proc over the measured window: the server's process group and, for
PostgreSQL, the backends serving the bench database. At the end the audit chain of every
database is verified.

The bench stops by itself, and stops its server, load generator and databases on Ctrl-C or on
any error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PG_ADMIN_URL = os.environ.get("GRASSROOTS_BENCH_PG_ADMIN_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
HERE = Path(__file__).resolve().parent
RELEASE_EVERY_S = 0.02
RECONNECT_EVERY_S = 0.5
SERVER_START_TIMEOUT_S = 60.0
TARGET_RATE = 500.0
TARGET_P99_MS = 100.0


# --------------------------------------------------------------------------- the server's app


def bench_app() -> Any:
    """create_app() from the environment's settings, plus the empty ceiling route."""
    from fastapi import FastAPI

    from grassroots.app import create_app

    app: FastAPI = create_app()

    @app.get("/bench/empty", include_in_schema=False)
    async def empty() -> dict[str, str]:
        return {}

    threads = int(os.environ.get("GRASSROOTS_BENCH_THREADS", "0"))
    if threads:
        from anyio import to_thread

        def limit_threads() -> None:  # the limiter belongs to the event loop, so set it there
            to_thread.current_default_thread_limiter().total_tokens = threads

        app.add_event_handler("startup", limit_threads)

    return app


# --------------------------------------------------------------------------- load generator


@dataclass
class LoadSpec:
    host: str
    port: int
    method: str
    path: str
    token: str
    points: list[tuple[float, float]]
    categories: list[str]
    warmup_s: float
    duration_s: float
    connections: int
    rate: float  # 0 = closed loop
    seed: int = 12345


def _request_bytes(spec: LoadSpec, rng: random.Random, key: str) -> bytes:
    head = f"{spec.method} {spec.path} HTTP/1.1\r\nHost: {spec.host}:{spec.port}\r\n"
    if spec.method == "GET":
        return (head + "\r\n").encode()
    lon, lat = rng.choice(spec.points)
    body = json.dumps({
        "category_code": rng.choice(spec.categories), "lon": lon, "lat": lat,
        "description": "bench intake", "reporter_phone": f"139{rng.randrange(10**8):08d}",
    }, separators=(",", ":")).encode()
    return (head + f"Authorization: Bearer {spec.token}\r\nContent-Type: application/json\r\n"
            f"Idempotency-Key: {key}\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
            break
    if length:
        await reader.readexactly(length)
    return status


async def _drive(spec: LoadSpec) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    wall_start = time.time()
    measure_from = start + spec.warmup_s
    end = measure_from + spec.duration_s
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    queue: asyncio.Queue[float] | None = asyncio.Queue() if spec.rate > 0 else None
    sent = [0]

    async def connection(number: int) -> None:
        rng = random.Random(spec.seed * 1000 + number)
        counter = 0
        await asyncio.sleep(number * RECONNECT_EVERY_S / spec.connections)  # staggered
        reader, writer = await asyncio.open_connection(spec.host, spec.port)
        opened = time.perf_counter()
        try:
            while True:
                if time.perf_counter() - opened > RECONNECT_EVERY_S:
                    # uvicorn's workers share one listening socket and the first to wake takes
                    # a whole burst of connections; reconnecting now and then lets whichever
                    # worker is free take the next one, as a balancer in front would.
                    writer.close()
                    reader, writer = await asyncio.open_connection(spec.host, spec.port)
                    opened = time.perf_counter()
                if queue is not None:
                    due = await queue.get()
                else:
                    due = time.perf_counter()
                if due >= end or time.perf_counter() >= end:
                    return  # an overloaded open loop leaves its backlog unsent
                counter += 1
                request = _request_bytes(spec, rng, f"b{os.getpid()}-{number}-{counter}")
                sent_at = time.perf_counter()
                try:
                    writer.write(request)
                    status = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    status = 0  # the connection broke: count it and open a new one
                    writer.close()
                    reader, writer = await asyncio.open_connection(spec.host, spec.port)
                done = time.perf_counter()
                sent[0] += 1
                # Counted by when it was sent; its latency runs from when it was due.
                if sent_at >= measure_from and done <= end:
                    name = str(status) if status else "connection error"
                    statuses[name] = statuses.get(name, 0) + 1
                    if 200 <= status < 300:
                        latencies.append(done - due)
        finally:
            writer.close()

    async def pace() -> None:
        assert queue is not None
        interval = 1.0 / spec.rate
        due = start
        while due < end:
            now = time.perf_counter()
            if due > now:
                await asyncio.sleep(due - now)
            queue.put_nowait(due)
            due += interval
        for _ in range(spec.connections):
            queue.put_nowait(end)

    tasks = [loop.create_task(connection(n)) for n in range(spec.connections)]
    if queue is not None:
        tasks.append(loop.create_task(pace()))
    await asyncio.gather(*tasks)
    if queue is not None:
        backlog = sum(1 for due in _drain(queue) if measure_from <= due < end)
        if backlog:
            statuses["due but never sent"] = backlog
    latencies.sort()
    return {"latencies": latencies, "statuses": statuses, "sent": sent[0],
            "window": [wall_start + spec.warmup_s, wall_start + spec.warmup_s + spec.duration_s],
            "seconds": spec.duration_s}


def _drain(queue: asyncio.Queue[float]) -> Iterator[float]:
    while not queue.empty():
        yield queue.get_nowait()


def loadgen_main(spec_path: str, out_path: str) -> None:
    """The load-generator process: read the spec, drive the server, write the results."""
    import resource

    spec = LoadSpec(**json.loads(Path(spec_path).read_text()))
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(_drive(spec))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    Path(out_path).write_text(json.dumps(result))


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _stop_group(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def _cpu_by_pid() -> dict[int, tuple[int, float]]:
    """{pid: (process group, CPU seconds so far)} for every live process (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # fields[0] is the state, [2] the group
        found[int(entry)] = (int(fields[2]), (int(fields[11]) + int(fields[12])) / tick)
    return found


def _postgres_pids(database: str | None) -> set[int]:
    """The server processes serving `database` now (none for SQLite)."""
    if not database:
        return set()
    import sqlalchemy as sa

    from grassroots.db import make_engine

    engine = make_engine(PG_ADMIN_URL)
    with engine.connect() as connection:
        pids = connection.execute(sa.text("SELECT pid FROM pg_stat_activity WHERE datname = :d"),
                                  {"d": database}).scalars().all()
    engine.dispose()
    return {int(pid) for pid in pids}


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


@contextlib.contextmanager
def server(env: dict[str, str], workers: int, log: Path) -> Iterator[tuple[int, int]]:
    """uvicorn serving bench_app(); yields (port, process group id) once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "intake:bench_app", "--factory",
               "--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port),
               "--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    with log.open("ab") as sink:
        process = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        ready = 0
        while ready < workers * 4:  # every worker must have imported the app and answer
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {log}:\n"
                                   + log.read_text()[-3000:])
            try:
                with socket.create_connection(("127.0.0.1", port), 1) as probe:
                    probe.sendall(b"GET /bench/empty HTTP/1.1\r\nHost: x\r\n"
                                  b"Connection: close\r\n\r\n")
                    ready += probe.recv(64).startswith(b"HTTP/1.1 200")
            except OSError:
                time.sleep(0.2)
        yield port, process.pid
    finally:
        _stop_group(process)


def run_load(spec: LoadSpec, workdir: Path, pgid: int,
             database: str | None = None) -> dict[str, Any]:
    spec_path = workdir / "load-spec.json"
    out_path = workdir / "load-result.json"
    spec_path.write_text(json.dumps(spec.__dict__))
    out_path.unlink(missing_ok=True)
    process = subprocess.Popen([sys.executable, __file__, "--loadgen", str(spec_path),
                                str(out_path)], start_new_session=True)
    try:
        # CPU and load are sampled over the measured window only (after the warm-up).
        time.sleep(spec.warmup_s)
        before = _cpu_by_pid()
        busy_before, total_before = _machine_busy()
        time.sleep(spec.duration_s)
        after = _cpu_by_pid()
        busy_after, total_after = _machine_busy()
        load = os.getloadavg()[0]
        backends = _postgres_pids(database)
        process.wait(spec.warmup_s + spec.duration_s + 60)
    finally:
        _stop_group(process)
    if process.returncode != 0 or not out_path.exists():
        raise RuntimeError("the load generator failed")
    result: dict[str, Any] = json.loads(out_path.read_text())

    def used(pids: set[int]) -> float:
        return sum(after[p][1] - before.get(p, (0, 0.0))[1] for p in pids if p in after)

    result["server_cpu_s"] = used({p for p, (group, _) in after.items() if group == pgid})
    result["database_cpu_s"] = used(backends) if database else None
    result["machine_busy"] = (busy_after - busy_before) / max(total_after - total_before, 1.0)
    result["load1"] = load
    return result


# --------------------------------------------------------------------------- databases


@contextlib.contextmanager
def postgres_databases() -> Iterator[Any]:
    """A maker of fresh databases named gr_bench_intake_<pid>[_n]; all dropped at the end."""
    import sqlalchemy as sa

    from grassroots.db import make_engine

    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    made: list[str] = []
    base = PG_ADMIN_URL.rsplit("/", 1)[0]

    def create(suffix: str = "", template: str | None = None) -> tuple[str, str]:
        name = f"gr_bench_intake_{os.getpid()}{suffix}"
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            made.append(name)
            clause = f' TEMPLATE "{template}"' if template else ""
            connection.execute(sa.text(f'CREATE DATABASE "{name}"{clause}'))
        return name, f"{base}/{name}"

    try:
        yield create
    finally:
        with admin.connect() as connection:
            for name in reversed(made):
                connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def add_responders(session: Any, runtime: Any, per_zone: int) -> None:
    """Bench only: `per_zone` more zone-team responders on duty in every zone for a day."""
    from datetime import timedelta

    import sqlalchemy as sa

    from grassroots.command.actions import create_duty_shift
    from grassroots.command.states import SystemActor
    from grassroots.kernel.auth.actions import create_user
    from grassroots.kernel.auth.roles import Role
    from grassroots.kernel.regions.models import Region, RegionLevel

    zones = session.scalars(sa.select(Region).where(Region.level == RegionLevel.ZONE)
                            .order_by(Region.code)).all()
    now = runtime.clock.now()
    for z, zone in enumerate(zones, start=1):
        for k in range(per_zone):
            user = create_user(session=session, actor="bench", username=f"bench{z}{k:03d}",
                               display_name=f"bench responder {z}-{k}", role=Role.ZONE_RESPONDER,
                               scope_code=zone.code, password=None, runtime=runtime)
            create_duty_shift(session=session, runtime=runtime, actor=SystemActor("bench"),
                              user_id=user.id, zone_id=zone.id, unit_type="zone_team",
                              starts_at=now - timedelta(hours=1),
                              ends_at=now + timedelta(hours=23))


def add_history(session: Any, runtime: Any, count: int, points: list[tuple[float, float]],
                locate: Any) -> None:
    """Bench only: `count` closed incidents over the last 90 days, as a street in service holds.

    Why: the bench database would otherwise start with almost no incidents, so the planner's
    statistics (taken once, see vacuum_analyze) would describe a near-empty table for the whole
    run, and every foreign-key check against it would scan instead of using its index — a state
    a database in service (with its history, and autovacuum keeping statistics current) never
    stays in. Written as rows straight into the table (no audit rows, no clocks: they are done
    with), `H0000001` onwards, which no intake number can equal.
    """
    from datetime import timedelta

    import numpy as np
    import sqlalchemy as sa

    from grassroots.command.models import Incident, IncidentCategory
    from grassroots.command.states import UNIT_TIER
    from grassroots.kernel.regions.models import RegionLevel

    categories = list(session.scalars(sa.select(IncidentCategory)))
    rng = np.random.default_rng(20261128)
    now = runtime.clock.now()
    rows = []
    for n in range(count):
        lon, lat = points[int(rng.integers(len(points)))]
        found = locate(lon, lat) or []
        by_level = {str(region.level): region.id for region in found}
        category = categories[int(rng.integers(len(categories)))]
        received = now - timedelta(days=90 * float(rng.random()) + 1)
        rows.append({
            "number": f"H{n + 1:07d}", "category_id": category.id, "channel": "api",
            "client_ref": "bench-history", "title": category.name_zh, "description": "history",
            "lon": lon, "lat": lat, "region_path": found[0].path if found else "",
            "zone_id": by_level.get(RegionLevel.ZONE.value),
            "grid_id": by_level.get(RegionLevel.GRID.value),
            "micro_grid_id": by_level.get(RegionLevel.MICRO_GRID.value),
            "urgency": category.urgency, "state": "closed",
            "tier": UNIT_TIER[category.unit_type].value, "attributes": "{}",
            "needs_duplicate_review": False, "extension_days": 0, "created_by": "bench-history",
            "received_at": received, "registered_at": received, "dispatched_at": received,
            "handled_at": received + timedelta(hours=20),
            "closed_at": received + timedelta(days=1), "version": 9})
    for start in range(0, len(rows), 5000):
        session.execute(sa.insert(Incident), rows[start:start + 5000])
    session.commit()


def prepare(url: str, env: dict[str, str], per_zone: int, history: int) -> dict[str, Any]:
    """Migrate, seed the demo street and a history, make the dispatcher's token; points and
    categories."""
    import numpy as np
    import sqlalchemy as sa

    from grassroots.command.categories import attributes_of
    from grassroots.command.models import IncidentCategory
    from grassroots.demo.seed import seed_demo
    from grassroots.kernel.auth.actions import create_api_token
    from grassroots.kernel.auth.models import User
    from grassroots.kernel.regions.models import Region, RegionLevel
    from grassroots.kernel.regions.queries import get_locate_index
    from grassroots.migrate import upgrade
    from grassroots.models_registry import import_all_models
    from grassroots.runtime import Runtime
    from grassroots.settings import Settings

    import_all_models()
    upgrade(url)
    os.environ.update(env)
    runtime = Runtime(Settings(database_url=url))
    seed_demo(runtime)
    with runtime.session_factory() as session:
        add_responders(session, runtime, per_zone)
        dispatcher = session.scalars(sa.select(User).where(User.username == "dispatcher")).one()
        _token, plaintext = create_api_token(session=session, runtime=runtime, actor=dispatcher,
                                             name="bench intake")
        categories = sorted(
            c.code for c in session.scalars(sa.select(IncidentCategory).where(
                IncidentCategory.active.is_(True), IncidentCategory.unit_type == "zone_team"))
            if not any(a.required for a in attributes_of(c)))
        street = session.scalars(sa.select(Region).where(
            Region.level == RegionLevel.STREET)).first()
        assert street is not None
        locate = get_locate_index(session).locate
        rng = np.random.default_rng(20260501)
        points: list[tuple[float, float]] = []
        while len(points) < 5000:
            lon = float(rng.uniform(street.min_lon, street.max_lon))
            lat = float(rng.uniform(street.min_lat, street.max_lat))
            found = locate(lon, lat)
            if found and any(str(r.level) == RegionLevel.ZONE.value for r in found):
                points.append((round(lon, 7), round(lat, 7)))
        add_history(session, runtime, history, points, locate)
    runtime.engine.dispose()
    return {"token": plaintext, "categories": categories, "points": points}


def vacuum_analyze(url: str) -> None:
    """VACUUM ANALYZE the freshly seeded template, as autovacuum would have long done in use.

    A copy made with CREATE DATABASE … TEMPLATE starts with no activity counters, so autovacuum
    never visits it during a run: without this, its planner statistics and visibility maps are
    whatever the seconds after seeding left (often none), unlike any database in service.
    """
    from grassroots.db import make_engine

    engine = make_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()


class Releaser(threading.Thread):
    """Bench only: every busy responder becomes available again (see the module docstring)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stopping = threading.Event()
        self.released = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        import sqlalchemy as sa

        from grassroots.db import make_engine

        engine = make_engine(self.url)
        if engine.dialect.name == "postgresql":
            sql = sa.text("UPDATE responder_status SET state = 'available', updated_at = now() "
                          "WHERE user_id IN (SELECT user_id FROM responder_status "
                          "WHERE state = 'busy' FOR UPDATE SKIP LOCKED)")
        else:
            sql = sa.text("UPDATE responder_status SET state = 'available', "
                          "updated_at = :now WHERE state = 'busy'")
        try:
            while not self.stopping.wait(RELEASE_EVERY_S):
                try:
                    with engine.begin() as connection:
                        if engine.dialect.name == "sqlite":
                            # SQLite's busy handler polls with growing sleeps, so a writer that
                            # waits long loses to the server's; give up soon and try again.
                            connection.exec_driver_sql("PRAGMA busy_timeout=20")
                        result = connection.execute(sql, {"now": datetime.now(UTC)})
                        self.released += int(result.rowcount or 0)
                except sa.exc.OperationalError:
                    continue  # SQLite busy: try again next tick
        except BaseException as exc:  # reported by the caller
            self.error = exc
        finally:
            engine.dispose()

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


def receipt_to_dispatch(url: str, window: list[float]) -> dict[str, Any]:
    """Received→dispatched seconds for the incidents received in the window; audit verified."""
    import sqlalchemy as sa

    from grassroots.db import make_engine

    engine = make_engine(url)
    start, end = (datetime.fromtimestamp(t, UTC) for t in window)
    with engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT received_at, dispatched_at FROM incident "
            "WHERE received_at >= :start AND received_at < :end"),
            {"start": start, "end": end}).all()
    engine.dispose()

    def aware(value: Any) -> datetime:
        if isinstance(value, str):  # SQLite gives text
            value = datetime.fromisoformat(value)
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    delays = sorted((aware(d) - aware(r)).total_seconds() for r, d in rows if d is not None)
    return {"received": len(rows), "dispatched": len(delays), "delays": delays}


def verify_audit(url: str, env: dict[str, str]) -> str:
    from grassroots.kernel.audit.chain import verify_chain
    from grassroots.runtime import Runtime
    from grassroots.settings import Settings

    os.environ.update(env)
    runtime = Runtime(Settings(database_url=url))
    with runtime.session_factory() as session:
        report = verify_chain(session=session, runtime=runtime)
    runtime.engine.dispose()
    return report.describe().splitlines()[0]


# --------------------------------------------------------------------------- the runs


@dataclass
class Row:
    backend: str
    workers: int
    ceiling: dict[str, Any]
    intake: dict[str, Any]
    dispatch: dict[str, Any]
    released: int
    audit: str
    notes: list[str] = field(default_factory=list)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q * len(values)) - 1))]


def _ok(result: dict[str, Any]) -> int:
    return sum(n for s, n in result["statuses"].items() if s.isdigit() and 200 <= int(s) < 300)


def one_row(backend: str, url: str, workers: int, prepared: dict[str, Any],
            env: dict[str, str], args: argparse.Namespace, workdir: Path) -> Row:
    database = url.rsplit("/", 1)[1] if url.startswith("postgresql") else None
    server_env = {**os.environ, **env, "GRASSROOTS_DATABASE_URL": url,
                  "GRASSROOTS_BENCH_THREADS": str(args.threads)}
    log = workdir / f"server-{backend}-{workers}.log"
    with server(server_env, workers, log) as (port, pgid):
        common = {"host": "127.0.0.1", "port": port, "token": prepared["token"],
                  "points": prepared["points"], "categories": prepared["categories"],
                  "warmup_s": args.warmup, "connections": args.connections}
        ceiling = run_load(LoadSpec(method="GET", path="/bench/empty",
                                    duration_s=args.ceiling_duration, rate=0, **common),
                           workdir, pgid, database)
        releaser = Releaser(url)
        releaser.start()
        try:
            intake = run_load(LoadSpec(method="POST", path="/api/v1/incidents",
                                       duration_s=args.duration, rate=args.rate, **common),
                              workdir, pgid, database)
        finally:
            releaser.stop()
        if releaser.error is not None:
            raise RuntimeError(f"the releaser failed: {releaser.error!r}")
    dispatch = receipt_to_dispatch(url, intake["window"])
    return Row(backend, workers, ceiling, intake, dispatch, releaser.released,
               verify_audit(url, env))


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    mode = (f"open loop at {args.rate:g} req/s" if args.rate
            else f"closed loop, {args.connections} connections")
    mode += f", {args.threads or 40} threads per worker"
    print(f"\nIntake bench — {mode}; {args.warmup:g} s warm-up, {args.duration:g} s measured "
          f"(ceiling {args.ceiling_duration:g} s); target ≥ {TARGET_RATE:g} incidents/s with "
          f"p99 receipt→dispatch ≤ {TARGET_P99_MS:g} ms on PostgreSQL\n")
    header = (f"{'backend':<10} {'workers':>7} {'metric':<34} {'value':>12}")
    print(header)
    print("-" * len(header))
    for row in rows:
        ok = _ok(row.intake)
        errors = sum(row.intake["statuses"].values()) - ok
        lat = row.intake["latencies"]
        cl = row.ceiling["latencies"]
        delays = row.dispatch["delays"]
        per_s = ok / row.intake["seconds"]
        metrics = [
            ("ceiling: empty GET, req/s", f"{_ok(row.ceiling) / row.ceiling['seconds']:,.0f}"),
            ("ceiling: HTTP p50 / p99 ms",
             f"{_pct(cl, 0.5) * 1000:.1f} / {_pct(cl, 0.99) * 1000:.1f}"),
            ("intake: incidents/s (2xx)", f"{per_s:,.1f}"),
            ("intake: errors (non-2xx)", _errors(row.intake["statuses"]) if errors else "0"),
            ("intake: HTTP p50 / p99 ms",
             f"{_pct(lat, 0.5) * 1000:.1f} / {_pct(lat, 0.99) * 1000:.1f}"),
            ("receipt→dispatch p50 / p99 ms",
             f"{_pct(delays, 0.5) * 1000:.1f} / {_pct(delays, 0.99) * 1000:.1f}"),
            ("dispatched / received in window",
             f"{row.dispatch['dispatched']:,} / {row.dispatch['received']:,}"),
            ("server CPU ms per incident",
             f"{row.intake['server_cpu_s'] * 1000 / max(ok, 1):.2f}"),
            ("PostgreSQL CPU ms per incident",
             f"{row.intake['database_cpu_s'] * 1000 / max(ok, 1):.2f}"
             if row.intake["database_cpu_s"] is not None else "-"),
            ("load generator CPU s (whole run)", f"{row.intake['cpu_s']:.1f}"),
            ("machine CPU busy in window", f"{row.intake['machine_busy']:.0%}"),
            ("load average (1 min) at end", f"{row.intake['load1']:.2f}"),
            ("audit", row.audit),
        ]
        for n, (name, value) in enumerate(metrics):
            label = (row.backend, str(row.workers)) if n == 0 else ("", "")
            print(f"{label[0]:<10} {label[1]:>7} {name:<34} {value:>12}")
        print()


def _errors(statuses: dict[str, int]) -> str:
    return ", ".join(f"{s}×{n}" for s, n in sorted(statuses.items())
                     if not (s.isdigit() and 200 <= int(s) < 300))


def machine_facts() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0))
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"{cores} cores ({model or platform.machine()}), load average {load}; "
            f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}")


def postgres_version() -> str:
    import sqlalchemy as sa

    from grassroots.db import make_engine

    engine = make_engine(PG_ADMIN_URL)
    with engine.connect() as connection:
        version = str(connection.execute(sa.text("SHOW server_version")).scalar_one())
    engine.dispose()
    return version


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--ceiling-duration", type=float, default=10.0)
    parser.add_argument("--workers", default="1,2", help="uvicorn worker counts, e.g. 1,2")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0,
                        help="thread pool size per worker for sync routes (0: anyio's 40)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="open-loop requests/s (0: closed loop)")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--history", type=int, default=20000,
                        help="closed incidents of the past 90 days seeded first (add_history)")
    parser.add_argument("--responders", type=int, default=10,
                        help="extra zone-team responders on duty per zone (the demo has 3)")
    parser.add_argument("--loadgen", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        loadgen_main(*args.loadgen)
        return 0
    # Both stop the bench the same way, even where SIGINT arrived ignored (a background job).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    workers = [int(w) for w in args.workers.split(",")]
    backends = [b.strip() for b in args.backends.split(",")]
    facts_before = machine_facts()
    workdir = Path(tempfile.mkdtemp(prefix="gr-bench-intake-"))
    env = {"GRASSROOTS_ENVIRONMENT": "demo", "GRASSROOTS_VAR_DIR": str(workdir / "var"),
           "GRASSROOTS_DATA_KEY_FILE": str(workdir / "var" / "data-keys.json"),
           "GRASSROOTS_UPLOAD_DIR": str(workdir / "var" / "uploads")}
    rows: list[Row] = []
    pg_version = ""
    try:
        for backend in backends:
            if backend == "sqlite":
                seeded = workdir / "seeded.db"
                print(f"seeding SQLite {seeded} …", file=sys.stderr)
                prepared = prepare(f"sqlite:///{seeded}", env, args.responders, args.history)
                for n in workers:
                    copy = workdir / f"run-{n}.db"
                    for suffix in ("", "-wal"):  # the WAL is normally folded in at close
                        if Path(f"{seeded}{suffix}").exists():
                            shutil.copy(f"{seeded}{suffix}", f"{copy}{suffix}")
                    rows.append(one_row("SQLite", f"sqlite:///{copy}", n, prepared, env, args,
                                        workdir))
                    print(f"  SQLite, {n} worker(s) done", file=sys.stderr)
            elif backend == "postgresql":
                pg_version = postgres_version()
                with postgres_databases() as create:
                    template, url = create("_seed")
                    print(f"seeding PostgreSQL {template} …", file=sys.stderr)
                    prepared = prepare(url, env, args.responders, args.history)
                    vacuum_analyze(url)
                    for n in workers:
                        _name, run_url = create(f"_{n}", template=template)
                        rows.append(one_row("PostgreSQL", run_url, n, prepared, env, args,
                                            workdir))
                        print(f"  PostgreSQL, {n} worker(s) done", file=sys.stderr)
            else:
                parser.error(f"unknown backend {backend}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nbefore: {facts_before}")
    print(f"after:  {machine_facts()}")
    if pg_version:
        print(f"PostgreSQL {pg_version}")
    print_table(rows, args)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as stopped:
        print(f"\ninterrupted ({stopped}); server, load generator and databases cleaned up",
              file=sys.stderr)
        sys.exit(130)
