"""A dispatcher watches the live workspace while a phone call is entered in another tab: the new
incident appears in the queue without the workspace reloading (server-sent events + htmx)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Page
from sqlalchemy import select
from tests.browser.conftest import _free_port
from tests.web.dispatcher_support import with_command_routes

from grassroots.command import actions
from grassroots.command.context import current_calendar, current_locator
from grassroots.command.models import DutyShift
from grassroots.command.states import SystemActor
from grassroots.demo.seed import DEMO_PASSWORD, seed_demo
from grassroots.kernel.auth.models import User
from grassroots.kernel.regions.models import Region, RegionLevel
from grassroots.runtime import Runtime

pytestmark = [pytest.mark.browser,
              pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
DEMO = SystemActor("system:browser-test")


@pytest.fixture
def live_server(runtime: Runtime) -> Iterator[str]:
    """The conftest's live server, with the command routers whether or not app.py has them."""
    from grassroots.app import create_app

    port = _free_port()
    app = with_command_routes(create_app(runtime=runtime))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("live server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def _busy_street(runtime: Runtime) -> None:
    """Positions for the people on duty now and a few incidents, so the screen has a day on it."""
    with runtime.session_factory() as session:
        now = runtime.clock.now()
        on_duty = session.execute(
            select(DutyShift.user_id, Region)
            .join(Region, Region.id == DutyShift.zone_id)
            .where(DutyShift.starts_at <= now, DutyShift.ends_at > now)
            .order_by(DutyShift.user_id)).tuples().all()
        for k, (user_id, zone) in enumerate(on_duty):
            lon = zone.min_lon + (zone.max_lon - zone.min_lon) * (0.3 + 0.13 * (k % 4))
            lat = zone.min_lat + (zone.max_lat - zone.min_lat) * (0.35 + 0.1 * (k % 3))
            actions.update_responder_status(session=session, runtime=runtime, actor=DEMO,
                                            user_id=user_id, lon=lon, lat=lat)
        dispatcher = session.scalars(select(User).where(User.username == "dispatcher")).one()
        zones = list(session.scalars(select(Region).where(Region.level == RegionLevel.ZONE)
                                     .order_by(Region.code)))
        calls = [("emergency.waterlogging", 0, {}, "地下通道积水约 30 厘米"),
                 ("street.outside_store", 1, {}, "商铺占道经营"),
                 ("security.fight", 2, {"injured": "no"}, "两人在超市门口争吵推搡"),
                 ("city_env.overflowing_bin", 3, {}, "垃圾桶满溢")]
        for code, z, answers, text in calls:
            zone = zones[z]
            actions.intake(session=session, runtime=runtime, actor=dispatcher, channel="phone",
                           category_code=code, calendar=current_calendar(session),
                           locator=current_locator(session),
                           lon=(zone.min_lon + zone.max_lon) / 2,
                           lat=(zone.min_lat + zone.max_lat) / 2, description=text,
                           attributes=answers, reporter_phone="13800001234")


def _sign_in(page: Page, live_server: str, target: str) -> None:
    page.goto(f"{live_server}/login?next={target}")
    page.fill("input[name=username]", "dispatcher")
    page.fill("input[name=password]", DEMO_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server}{target}")


def test_a_phone_call_entered_in_one_tab_appears_live_in_the_workspace(
    runtime: Runtime, live_server: str, browser_page: Page
) -> None:
    seed_demo(runtime)
    _busy_street(runtime)
    page = browser_page
    _sign_in(page, live_server, "/command")
    page.wait_for_selector("#live-status.online", timeout=15000)
    page.wait_for_selector("#command-map[data-zones='7']", timeout=20000)
    assert page.locator("tr.queue-row").count() == 4
    assert page.locator("#command-map canvas").count() >= 1
    page.evaluate("window.__sameDocument = true")

    # A second screen (its own browser session) takes the call.
    browser = page.context.browser
    assert browser is not None
    call = browser.new_page(viewport={"width": 1280, "height": 860}, locale="zh-CN")
    _sign_in(call, live_server, "/command/new")
    call.wait_for_selector("#entry-map[data-zones='7']", timeout=20000)
    call.fill("#reporter-phone", "13987654321")
    call.fill("#reporter-name", "赵六")
    call.select_option("#category", "construction.night_noise")
    call.select_option("select[name='attr.construction.night_noise.still_ongoing']", "yes")
    box = call.locator("#entry-map").bounding_box()
    assert box is not None
    call.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    assert call.input_value("#lon") and call.input_value("#lat")
    call.fill("#description", "工地夜间打桩，噪声很大")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    call.screenshot(path=str(SCREENSHOTS / "command-new.png"))
    call.click("#entry-submit")
    call.wait_for_url(f"{live_server}/command/incidents/*")
    number = call.locator("h1").inner_text().split()[1]
    assert number.startswith("SF20260310-")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    call.screenshot(path=str(SCREENSHOTS / "command-incident.png"), full_page=True)
    call.close()

    page.wait_for_selector(f"tr.queue-row[data-number='{number}']", timeout=15000)
    assert page.evaluate("window.__sameDocument") is True  # updated, not reloaded
    assert page.locator("tr.queue-row").count() == 5
    page.wait_for_timeout(500)  # the markers redraw after the swap
    page.screenshot(path=str(SCREENSHOTS / "command-workspace.png"))
    assert "指挥调度工作台" in page.content()
    page.goto(f"{live_server}/command/duty")
    assert page.locator("section.duty-zone").count() == 7
    page.screenshot(path=str(SCREENSHOTS / "command-duty.png"))
