"""No JSON API route or page answers with data to a visitor who has not signed in."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

# Public on purpose: health checks, the login flow, the API description, and Open311, whose
# reads are public by the GeoReport v2 specification (its writes need an api_key).
PUBLIC = re.compile(r"^/(healthz|login|logout|openapi\.json|api/docs|open311/)")


def _sample_path(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "1", path)


def test_every_non_public_route_refuses_an_anonymous_visitor(app: FastAPI,
                                                             client: TestClient) -> None:
    checked = 0
    for route in app.routes:
        if not isinstance(route, APIRoute) or PUBLIC.match(route.path) or route.path == "/":
            continue
        for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
            response = client.request(method, _sample_path(route.path), follow_redirects=False,
                                      headers={"Accept": "application/json"})
            refused = response.status_code in (401, 403) or (
                response.status_code in (302, 303, 307) and "/login" in
                response.headers.get("location", ""))
            assert refused, f"{method} {route.path} answered {response.status_code}"
            checked += 1
    assert checked >= 10  # the app really has routes to check
