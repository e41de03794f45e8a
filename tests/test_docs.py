"""Every setting, role and permission is documented; adding one undocumented fails here."""

import re
from pathlib import Path

import pytest

from grassroots.kernel.auth.roles import ROLE_PERMISSIONS, Permission, Role
from grassroots.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PERMISSIONS_DOC = ROOT / "docs" / "permissions.md"


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def permissions_doc() -> str:
    return PERMISSIONS_DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_every_setting_is_documented_in_the_readme(readme: str, name: str) -> None:
    assert f"GRASSROOTS_{name.upper()}" in readme


@pytest.mark.parametrize("permission", list(Permission), ids=str)
def test_every_permission_is_documented(permissions_doc: str, permission: Permission) -> None:
    assert f"| `{permission.value}` |" in permissions_doc


@pytest.mark.parametrize("role", list(Role), ids=str)
def test_every_role_is_documented_with_the_permissions_it_has(permissions_doc: str,
                                                              role: Role) -> None:
    rows = [line for line in permissions_doc.splitlines()
            if line.startswith(f"| `{role.value}` |")]
    assert len(rows) == 1, f"docs/permissions.md needs one table row for role {role.value}"
    documented = set(re.findall(r"`([a-z_.]+)`", rows[0].split("|")[-2]))
    assert documented == {p.value for p in ROLE_PERMISSIONS[role]}
