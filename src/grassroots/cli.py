"""The `grassroots` command: demo, serve, db, seed, user, audit, regions, addresses, …"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

from grassroots.runtime import Runtime
from grassroots.settings import Settings, SettingsError, load_settings

Handler = Callable[[argparse.Namespace, Settings], int]


def _runtime(settings: Settings) -> Runtime:

    return Runtime(settings)


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from grassroots.migrate import upgrade

    settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url, args.revision)
    print(f"database at {args.revision}")
    return 0


def cmd_seed_demo(args: argparse.Namespace, settings: Settings) -> int:
    from grassroots.demo.seed import seed_demo

    summary = seed_demo(_runtime(settings), progress=not args.quiet)
    print(json.dumps(summary, ensure_ascii=False))
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from grassroots.app import create_app

    host = args.host or settings.host
    port = args.port or settings.port
    print(f"Grassroots at http://{host}:{port}/  (Ctrl-C stops it)")
    uvicorn.run(create_app(settings), host=host, port=port, log_level="info",
                workers=1, proxy_headers=False)
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    """Migrate, seed (once), then serve: the one command a new user runs."""
    from grassroots.demo.seed import seed_demo
    from grassroots.migrate import upgrade

    settings.var_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    summary = seed_demo(_runtime(settings), progress=True)
    print(json.dumps(summary, ensure_ascii=False))
    if args.no_serve:
        return 0
    import threading

    # The demo runs the periodic jobs and telemetry intake in-process, so clocks escalate and a
    # device pointed at 127.0.0.1 (MQTT 1883, SL 651 5651) shows up without a second command.
    runtime = _runtime(settings)
    _start_jobs(runtime, threading.Event())
    _start_ingest_in_background(runtime)
    return cmd_serve(args, settings)


def _start_ingest_in_background(runtime: Runtime) -> None:
    """MQTT and SL 651 intake in a thread; a busy port or an absent broker only logs."""
    import asyncio
    import logging
    import threading

    from grassroots.irrigation.telemetry.service import IngestOptions, IngestService

    async def run() -> None:
        service = IngestService(runtime, IngestOptions(modbus=False))
        try:
            await service.start()
        except OSError as exc:
            logging.getLogger("grassroots.demo").warning(
                "demo telemetry intake not started (%s); run `grassroots ingest` instead", exc)
            return
        await asyncio.Event().wait()

    threading.Thread(target=asyncio.run, args=(run(),), name="ingest", daemon=True).start()


def _read_password(prompt: str) -> str:
    interactive = sys.stdin.isatty()
    password = getpass.getpass(prompt) if interactive else sys.stdin.readline().rstrip("\n")
    if not password:
        raise SystemExit("no password given on standard input")
    return password


def cmd_user_create(args: argparse.Namespace, settings: Settings) -> int:
    from grassroots.kernel.auth.actions import create_user
    from grassroots.kernel.auth.roles import Role

    try:
        role = Role(args.role)
    except ValueError:
        print(f"unknown role {args.role!r}; one of: {', '.join(r.value for r in Role)}",
              file=sys.stderr)
        return 2
    password = _read_password("password: ")
    runtime = _runtime(settings)
    with runtime.session_factory() as session:
        user = create_user(session=session, actor="cli", username=args.username,
                           display_name=args.name or args.username, role=role,
                           scope_code=args.scope, password=password, runtime=runtime)
    print(f"created user {user.username} ({user.role.value}) id={user.id}")
    return 0


def cmd_audit_verify(args: argparse.Namespace, settings: Settings) -> int:
    from grassroots.kernel.audit.chain import verify_chain

    runtime = _runtime(settings)
    with runtime.session_factory() as session:
        report = verify_chain(session=session, runtime=runtime)
    print(report.describe())
    return 0 if report.ok else 1


def cmd_regions_import(args: argparse.Namespace, settings: Settings) -> int:
    from grassroots.kernel.regions.geojson import import_geojson

    runtime = _runtime(settings)
    data = json.loads(Path(args.file).read_text(encoding="utf-8"))
    with runtime.session_factory() as session:
        result = import_geojson(session=session, actor="cli", data=data, runtime=runtime,
                                replace=args.replace)
    print(result.describe())
    return 0 if result.ok else 1


def cmd_regions_export(args: argparse.Namespace, settings: Settings) -> int:
    from grassroots.kernel.regions.geojson import export_geojson

    runtime = _runtime(settings)
    with runtime.session_factory() as session:
        try:
            data = export_geojson(session=session, level=args.level)
        except ValueError as exc:
            print(f"cannot export: {exc}", file=sys.stderr)
            return 2
    text = json.dumps(data, ensure_ascii=False)
    if args.output == "-":
        sys.stdout.write(text + "\n")
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {len(data['features'])} regions to {args.output}")
    return 0


def cmd_addresses_import(args: argparse.Namespace, settings: Settings) -> int:
    """Standard addresses from a UTF-8 CSV with a header: code,text,lon,lat (WGS-84)."""
    import csv

    from grassroots.kernel.addresses.actions import AddressImportFailed, import_addresses
    from grassroots.kernel.i18n import translate

    runtime = _runtime(settings)
    try:
        with Path(args.file).open(encoding="utf-8-sig", newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        print(f"{args.file}: cannot read a UTF-8 CSV file: {exc}", file=sys.stderr)
        return 1
    with runtime.session_factory() as session:
        try:
            created = import_addresses(session=session, runtime=runtime, actor="cli",
                                       rows=rows[1:], first_row=2,
                                       issue_plates=args.issue_plates)
        except AddressImportFailed as exc:
            for problem in exc.problems:
                print(translate(problem.message_id, args.lang, row=problem.row,
                                count=len(exc.problems), **problem.params), file=sys.stderr)
            return 1
    print(f"imported {created} standard addresses" + (" with a door plate each"
                                                      if args.issue_plates else ""))
    return 0


def cmd_addresses_plates(args: argparse.Namespace, settings: Settings) -> int:
    """The active door plates as CSV (token, address code, address), for printing QR codes."""
    import csv

    from grassroots.kernel.addresses.queries import active_plate_rows

    runtime = _runtime(settings)
    with runtime.session_factory() as session:
        rows = active_plate_rows(session=session)
    lines = [["token", "address_code", "address"], *rows]
    if args.output == "-":
        try:
            csv.writer(sys.stdout).writerows(lines)
            sys.stdout.flush()
        except BrokenPipeError:  # `… plates | head`: the reader has all it wanted
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (no flush error at exit)
        return 0
    with Path(args.output).open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows(lines)
    print(f"wrote {len(rows)} door plates to {args.output}")
    return 0


def cmd_calendar_import(args: argparse.Namespace, settings: Settings) -> int:
    from grassroots.kernel.calendar import CalendarDataError, import_year

    runtime = _runtime(settings)
    try:
        data = json.loads(Path(args.file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"{args.file}: cannot read a JSON year file: {exc}", file=sys.stderr)
        return 1
    with runtime.session_factory() as session:
        try:
            result = import_year(session, data, actor="cli", runtime=runtime)
        except CalendarDataError as exc:
            print(exc.describe(), file=sys.stderr)
            return 1
    print(result.describe())
    return 0


def cmd_keys_rotate(args: argparse.Namespace, settings: Settings) -> int:
    from grassroots.kernel.keys import cli_rotate
    from grassroots.models_registry import import_all_models

    import_all_models()
    return cli_rotate(settings)


def cmd_keys_retire(args: argparse.Namespace, settings: Settings) -> int:
    from grassroots.kernel.keys import cli_retire
    from grassroots.models_registry import import_all_models

    import_all_models()
    return cli_retire(settings)


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from grassroots.irrigation.telemetry.service import cli_ingest

    return cli_ingest(settings, mqtt_host=args.mqtt_host, mqtt_port=args.mqtt_port,
                      sl651_port=args.sl651_port, modbus=not args.no_modbus)


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    """Periodic work. Run several workers; they coordinate through the database."""
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    threads = _start_jobs(_runtime(settings), stop)
    print("worker running: " + ", ".join(t.name for t in threads) + " (Ctrl-C stops it)")
    while not stop.wait(1.0):
        pass
    for thread in threads:
        thread.join(timeout=10)
    return 0


def _start_jobs(runtime: Runtime, stop: Any) -> list[Any]:
    """The periodic jobs, each in a thread: SLA sweeper, irrigation alarms, derived flows."""
    import threading

    from grassroots.command.jobs import run_sweeper
    from grassroots.irrigation.alarms import run_alarm_job
    from grassroots.irrigation.derive import run_derive_job

    jobs: list[tuple[str, Callable[..., object], dict[str, Any]]] = [
            ("sla-sweeper", run_sweeper, {"runtime": runtime, "stop": stop}),
            ("irrigation-alarms", run_alarm_job, {"runtime": runtime, "stop": stop}),
            ("derived-flows", run_derive_job, {"runtime": runtime, "stop": stop})]
    threads = [threading.Thread(target=target, name=name, kwargs=kwargs, daemon=True)
               for name, target, kwargs in jobs]
    for thread in threads:
        thread.start()
    return threads


def cmd_irrigation_simulate(args: argparse.Namespace, settings: Settings) -> int:
    from grassroots.irrigation.simulator import cli_simulate

    return cli_simulate(settings, mqtt_host=args.mqtt_host, mqtt_port=args.mqtt_port,
                        sl651_host=args.sl651_host, sl651_port=args.sl651_port,
                        modbus=not args.no_modbus, speed=args.speed, duration_s=args.duration,
                        season_day=args.season_day, fault_rate=args.fault_rate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="grassroots", description="基层治理与智慧灌区平台")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Handler, help_text: str,
            parent: argparse._SubParsersAction[argparse.ArgumentParser] = sub,
            ) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text)
        p.set_defaults(handler=handler)
        return p

    def serve_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host", default=None)
        p.add_argument("--port", type=int, default=None)

    demo = add("demo", cmd_demo, "migrate, seed the demo street and district, serve the web app")
    serve_options(demo)
    demo.add_argument("--no-serve", action="store_true", help="set up only; do not serve")
    serve_options(add("serve", cmd_serve, "serve the web app"))

    db = sub.add_parser("db", help="database schema").add_subparsers(dest="db_command",
                                                                       required=True)
    add("upgrade", cmd_db_upgrade, "apply migrations", db).add_argument(
        "revision", nargs="?", default="head")

    seed = sub.add_parser("seed", help="load data").add_subparsers(dest="seed_command",
                                                                     required=True)
    add("demo", cmd_seed_demo, "load the demo data (idempotent)", seed).add_argument(
        "--quiet", action="store_true")

    user = sub.add_parser("user", help="accounts").add_subparsers(dest="user_command",
                                                                    required=True)
    create = add("create", cmd_user_create, "create a user; password read from stdin", user)
    create.add_argument("username")
    create.add_argument("--name", help="display name")
    create.add_argument("--role", required=True)
    create.add_argument("--scope", default=None, help="region code of the data scope")

    audit = sub.add_parser("audit", help="audit trail").add_subparsers(dest="audit_command",
                                                                         required=True)
    add("verify", cmd_audit_verify, "check the audit chain; non-zero exit on tampering", audit)

    regions = sub.add_parser("regions", help="region tree").add_subparsers(
        dest="regions_command", required=True)
    imp = add("import", cmd_regions_import, "import regions from GeoJSON", regions)
    imp.add_argument("file")
    imp.add_argument("--replace", action="store_true",
                     help="update regions whose code already exists")
    exp = add("export", cmd_regions_export, "export regions as GeoJSON", regions)
    exp.add_argument("output", nargs="?", default="-")
    exp.add_argument("--level", default=None)

    addresses_parser = sub.add_parser("addresses", help="standard addresses and door plates")
    addresses = addresses_parser.add_subparsers(dest="addresses_command", required=True)
    imp = add("import", cmd_addresses_import,
              "import standard addresses from CSV (code,text,lon,lat); all rows or none", addresses)
    imp.add_argument("file")
    imp.add_argument("--issue-plates", action="store_true",
                     help="issue a door plate (QR id) for each new address")
    imp.add_argument("--lang", default="zh_CN", choices=["zh_CN", "en"])
    add("plates", cmd_addresses_plates, "list active door plates as CSV, for printing",
        addresses).add_argument("output", nargs="?", default="-")

    calendar = sub.add_parser("calendar", help="official working-day calendar").add_subparsers(
        dest="calendar_command", required=True)
    add("import", cmd_calendar_import, "import a year's State Council holiday arrangement (JSON)",
        calendar).add_argument("file")

    keys = sub.add_parser("keys", help="data encryption keys").add_subparsers(
        dest="keys_command", required=True)
    add("rotate", cmd_keys_rotate,
        "new data key; re-encrypt every registered column (rerun to finish an interrupted run)",
        keys)
    add("retire", cmd_keys_retire, "drop old data keys once no row uses them", keys)

    add("worker", cmd_worker, "run periodic jobs: the SLA deadline sweeper and escalations")
    ingest = add("ingest", cmd_ingest,
                 "run telemetry ingestion: MQTT, the SL 651 centre station, Modbus polling")
    ingest.add_argument("--mqtt-host", default="127.0.0.1")
    ingest.add_argument("--mqtt-port", type=int, default=1883)
    ingest.add_argument("--sl651-port", type=int, default=5651)
    ingest.add_argument("--no-modbus", action="store_true")

    irrigation = sub.add_parser("irrigation", help="irrigation district").add_subparsers(
        dest="irrigation_command", required=True)
    sim = add("simulate", cmd_irrigation_simulate,
              "run simulated field devices of the demo district (MQTT, SL 651, Modbus)", irrigation)
    sim.add_argument("--mqtt-host", default="127.0.0.1")
    sim.add_argument("--mqtt-port", type=int, default=1883)
    sim.add_argument("--sl651-host", default="127.0.0.1")
    sim.add_argument("--sl651-port", type=int, default=5651)
    sim.add_argument("--no-modbus", action="store_true")
    sim.add_argument("--speed", type=float, default=1.0)
    sim.add_argument("--duration", type=float, default=None, help="seconds; default: until Ctrl-C")
    sim.add_argument("--season-day", type=date.fromisoformat, default=None,
                     help="follow this day's delivery plan, e.g. 2025-07-11")
    sim.add_argument("--fault-rate", type=float, default=0.02, help="faults per device per hour")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    handler: Handler = args.handler
    return handler(args, settings)


if __name__ == "__main__":
    raise SystemExit(main())
