"""Helpers for the field and category-admin page tests: real images, sign-in, router wiring."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from grassroots.command import admin, field, media
from grassroots.kernel.auth import actions as auth_actions
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Role
from grassroots.runtime import Runtime

PASSWORD = "Spring-Field-42"


def include_routers(app: FastAPI) -> FastAPI:
    """Add the command routers this work adds, unless app.py already does."""
    paths = {getattr(route, "path", None) for route in app.routes}
    routers: list[APIRouter] = [media.router, field.router, admin.router]
    for router in routers:
        if not any(getattr(route, "path", None) in paths for route in router.routes):
            app.include_router(router)
    return app


def png_bytes(width: int = 3, height: int = 2) -> bytes:
    """A real, minimal RGB PNG (every pixel red), built with zlib and struct."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def jpeg_bytes(width: int = 640, height: int = 480, padding: int = 0) -> bytes:
    """A JPEG's header (SOI, JFIF APP0, SOF0 with the size) and EOI; `padding` bytes of a COM
    segment-sized filler make it as big as a test needs."""
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = (b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, height, width, 3)
            + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01")
    return b"\xff\xd8" + app0 + sof0 + b"\x00" * padding + b"\xff\xd9"


def webp_bytes(width: int = 5, height: int = 7) -> bytes:
    """A RIFF/WEBP container with a VP8X header giving the canvas size."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (
        (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little"))
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def make_user(session: Session, runtime: Runtime, username: str, role: Role,
              scope_code: str | None = None) -> User:
    return auth_actions.create_user(session=session, actor="cli", username=username,
                                    display_name=username.title(), role=role,
                                    scope_code=scope_code, password=PASSWORD, runtime=runtime)


def csrf_from(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "no CSRF token in the page"
    return match.group(1)


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', html)
    assert match, f"no {name} in the page"
    return match.group(1)


def sign_in(client: TestClient, username: str) -> None:
    """Through the real login form, CSRF token included."""
    client.cookies.clear()
    token = csrf_from(client.get("/login").text)
    response = client.post("/login", data={"username": username, "password": PASSWORD,
                                           "csrf_token": token}, follow_redirects=False)
    assert response.status_code == 303, response.text


def bearer(session: Session, runtime: Runtime, user: User) -> dict[str, str]:
    _token, plaintext = auth_actions.create_api_token(session=session, runtime=runtime,
                                                      actor=user, name="test")
    return {"Authorization": f"Bearer {plaintext}"}


def stored_files(root: Path) -> list[Path]:
    """Every file under the upload directory (staging included)."""
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
