"""A dispatcher signs in through the real login page and sees the street's regions on the map."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page

from grassroots.demo.seed import DEMO_PASSWORD, seed_demo
from grassroots.runtime import Runtime

pytestmark = [pytest.mark.browser,
              pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"


def test_a_dispatcher_logs_in_and_sees_the_zones_on_the_regions_map(
    runtime: Runtime, live_server: str, browser_page: Page
) -> None:
    seed_demo(runtime)
    page = browser_page
    page.goto(f"{live_server}/login")
    page.fill("input[name=username]", "dispatcher")
    page.fill("input[name=password]", DEMO_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server}/command**")  # a dispatcher starts at the workspace
    page.click("header nav a[href='/regions']")
    page.wait_for_url(f"{live_server}/regions**")
    page.wait_for_selector("#regions-map[data-loaded=true]", timeout=20000)
    the_map = page.locator("#regions-map")
    assert the_map.get_attribute("data-count-zone") == "7"
    assert the_map.get_attribute("data-count-grid") == "129"
    assert page.locator("#regions-map canvas").count() >= 1  # drawn, not only fetched
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "regions-map.png"))
    assert "调度员" in page.content()


def test_a_signed_out_visitor_is_sent_to_the_login_page(
    runtime: Runtime, live_server: str, browser_page: Page
) -> None:
    browser_page.goto(f"{live_server}/regions")
    assert "/login" in browser_page.url
    assert browser_page.locator("input[name=password]").count() == 1
