"""create_app(): the FastAPI application with every router, the templates and static files."""

from __future__ import annotations

import gc
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from grassroots import __version__
from grassroots.command.api_fast import IntakeFastPath
from grassroots.command.intake_writer import IntakeWriter
from grassroots.command.open311.api import install_open311_error_handling
from grassroots.runtime import Runtime
from grassroots.settings import Environment, Settings, get_settings
from grassroots.web.auth import install_auth
from grassroots.web.errors import install_error_handlers
from grassroots.web.templating import build_templates


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    runtime = runtime or Runtime(settings or get_settings())
    app = FastAPI(
        title="Grassroots API",
        version=__version__,
        description="基层治理与智慧灌区平台 — grassroots governance and smart irrigation.",
        openapi_url="/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.state.templates = build_templates()
    app.state.intake_writer = IntakeWriter(runtime)
    app.add_event_handler("shutdown", app.state.intake_writer.close)
    if runtime.settings.environment != Environment.TEST:  # the test run makes many apps
        app.add_event_handler("startup", settle_heap)
    static_dir = Path(str(resources.files("grassroots.web"))) / "static"
    app.mount("/static", StaticFiles(directory=static_dir), name="static")
    install_error_handlers(app)
    # Added before the auth middleware, so it runs inside it: it needs the signed-in user.
    app.add_middleware(IntakeFastPath)
    install_auth(app)
    install_open311_error_handling(app)
    _include_routers(app)
    return app


# Young-generation collections after this many net allocations (CPython's default is 700), and
# the older generations after 50 and 1000 younger ones (default 10 and 10).
GC_THRESHOLDS = (20_000, 50, 1_000)


def settle_heap() -> None:
    """Once the server has started: freeze what start-up loaded and collect less often.

    Why: a busy server allocates ORM objects, dicts and futures by the hundred thousand a
    second; with CPython's default thresholds its collector runs constantly and now and then
    walks every object alive, start-up's modules and tables included, stopping the intake
    writer for tens of milliseconds — the p99 of receipt-to-dispatch doubled under load.
    Frozen objects are left out of every collection; what the requests make is mostly freed
    by reference counting anyway, and cycles are still collected, only in bigger rounds.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _include_routers(app: FastAPI) -> None:
    from grassroots.command import admin as command_admin
    from grassroots.command import api as command_api
    from grassroots.command import field as command_field
    from grassroots.command import media as command_media
    from grassroots.command import views as command_views
    from grassroots.command.open311.api import router as open311_router
    from grassroots.irrigation import alarm_views
    from grassroots.irrigation import views as irrigation_views
    from grassroots.irrigation.telemetry import api as telemetry_api
    from grassroots.web import health, regions

    app.include_router(health.router)
    app.include_router(regions.router)
    app.include_router(irrigation_views.router)
    app.include_router(telemetry_api.router)
    app.include_router(alarm_views.router)
    app.include_router(open311_router)
    app.include_router(command_media.router)
    app.include_router(command_field.router)
    app.include_router(command_admin.router)
    app.include_router(command_api.router)
    app.include_router(command_views.router)
