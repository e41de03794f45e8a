"""The `grassroots` command against the test database: verify, user create, regions export."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from grassroots.cli import main
from grassroots.kernel.addresses.models import DoorPlate, StandardAddress
from grassroots.kernel.audit import record
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth.models import User
from grassroots.runtime import Runtime
from grassroots.settings import Settings


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings, runtime: Runtime) -> None:
    """Point the command at this test's database and keys, as an operator's shell would."""
    monkeypatch.setenv("GRASSROOTS_ENVIRONMENT", "test")
    monkeypatch.setenv("GRASSROOTS_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("GRASSROOTS_DATA_KEY_FILE", str(settings.data_key_file))
    monkeypatch.setenv("GRASSROOTS_VAR_DIR", str(settings.var_dir))


def _audit_rows(session: Session, runtime: Runtime, count: int) -> None:
    for i in range(count):
        with session.begin():
            record(session, runtime=runtime, actor="alice", action="test:write",
                   object_type="thing", object_id=i)


def test_audit_verify_exits_zero_on_an_intact_chain_and_one_on_a_tampered_row(
    cli_env: None, session: Session, runtime: Runtime, capsys: pytest.CaptureFixture[str],
) -> None:
    _audit_rows(session, runtime, 3)
    assert main(["audit", "verify"]) == 0
    assert "intact" in capsys.readouterr().out
    with session.begin():
        session.execute(sa.update(AuditRow).where(AuditRow.seq == 2).values(outcome="failure"))
    assert main(["audit", "verify"]) == 1
    assert "seq=2" in capsys.readouterr().out


def test_user_create_reads_the_password_from_standard_input(
    cli_env: None, session: Session, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("Correct-Horse-42\n"))
    assert main(["user", "create", "wangwu", "--role", "viewer", "--name", "王五"]) == 0
    user = session.scalars(sa.select(User).where(User.username == "wangwu")).one()
    assert user.display_name == "王五"
    assert "Correct-Horse-42" not in user.password_hash


def test_user_create_refuses_an_unknown_role(cli_env: None,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["user", "create", "x", "--role", "wizard"]) == 2
    assert "unknown role" in capsys.readouterr().err


def test_a_bad_setting_stops_the_command_with_its_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GRASSROOTS_DATABASE_URL", "mysql://nowhere")
    assert main(["audit", "verify"]) == 2
    assert "GRASSROOTS_DATABASE_URL" in capsys.readouterr().err


def test_regions_export_writes_a_feature_collection(cli_env: None, tmp_path: Path) -> None:
    target = tmp_path / "regions.geojson"
    assert main(["regions", "export", str(target)]) == 0
    data = json.loads(target.read_text(encoding="utf-8"))
    assert data["type"] == "FeatureCollection"


def test_addresses_import_is_all_or_nothing_and_plates_can_be_listed(
    cli_env: None, session: Session, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("code,text,lon,lat\nA1,双福街道福城路1号,106.26,29.29\n"
                   "A2,双福街道福城路2号,106.26,95\n", encoding="utf-8")
    assert main(["addresses", "import", str(bad)]) == 1
    assert "第3行" in capsys.readouterr().err
    assert session.scalars(sa.select(StandardAddress)).all() == []

    good = tmp_path / "good.csv"
    good.write_text("code,text,lon,lat\nA1,双福街道福城路1号,106.26,29.29\n"
                    "A2,双福街道福城路2号,106.27,29.29\n", encoding="utf-8")
    assert main(["addresses", "import", str(good), "--issue-plates"]) == 0
    assert "imported 2" in capsys.readouterr().out
    listing = tmp_path / "plates.csv"
    assert main(["addresses", "plates", str(listing)]) == 0
    lines = listing.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "token,address_code,address"
    assert [line.split(",")[1] for line in lines[1:]] == ["A1", "A2"]
    session.rollback()
    tokens = {plate.token for plate in session.scalars(sa.select(DoorPlate))}
    assert {line.split(",")[0] for line in lines[1:]} == tokens
