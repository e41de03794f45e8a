"""Jinja2 environment with the helpers every page uses (translation, time display)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi.templating import Jinja2Templates
from jinja2 import ChoiceLoader, FileSystemLoader

from grassroots.kernel.auth.roles import Permission, has_permission
from grassroots.kernel.clock import format_display
from grassroots.plumbing import page_context as page_context

# Each domain keeps its pages in <package>/templates; the web package holds the base layout.
TEMPLATE_PACKAGES = (
    "grassroots.web",
    "grassroots.command",
    "grassroots.governance",
    "grassroots.irrigation",
)


def _template_dirs() -> list[str]:
    dirs = []
    for package in TEMPLATE_PACKAGES:
        path = Path(str(resources.files(package))) / "templates"
        if path.is_dir():
            dirs.append(str(path))
    return dirs


def build_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=_template_dirs()[0])
    templates.env.loader = ChoiceLoader([FileSystemLoader(d) for d in _template_dirs()])
    templates.env.globals["format_time"] = format_display
    templates.env.globals["has_permission"] = user_has_permission
    templates.env.autoescape = True
    return templates


def user_has_permission(user: Any, permission: str) -> bool:
    """For templates: whether a signed-in user's role grants `permission` (e.g. nav links)."""
    return user is not None and has_permission(user.role, Permission(permission))
