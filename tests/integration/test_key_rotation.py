import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import grassroots.kernel.auth.models  # noqa: F401  (the app_user table)
from grassroots.kernel.audit.chain import verify_chain
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.auth.models import User
from grassroots.kernel.auth.roles import Role
from grassroots.kernel.crypto import DATA_KEYS_ENV, KeyRing, SoftwareProvider
from grassroots.kernel.keys import (
    ENCRYPTED_COLUMNS,
    ROTATE_ACTION,
    KeyRotationRefused,
    cli_retire,
    cli_rotate,
    register_encrypted_column,
    retire_keys,
    rotate_data_key,
)
from grassroots.runtime import Runtime
from grassroots.settings import Settings


@pytest.fixture
def keyed(runtime: Runtime, settings: Settings, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """A runtime on the shared test database with its own copy of the key file to rotate."""
    monkeypatch.delenv(DATA_KEYS_ENV, raising=False)
    assert runtime.crypto  # creates the session-wide key file if no test has yet
    key_file = tmp_path / "keys" / "data-keys.json"
    key_file.parent.mkdir()
    shutil.copy(settings.data_key_file, key_file)
    own = Runtime(settings.model_copy(update={"data_key_file": key_file}), clock=runtime.clock)
    own.__dict__["engine"] = runtime.engine
    return own


def _ring(runtime: Runtime) -> KeyRing:
    return KeyRing.from_json(runtime.settings.data_key_file.read_text(encoding="utf-8"))


def _add_users(runtime: Runtime, count: int, *, crypto: SoftwareProvider | None = None,
               start: int = 0) -> dict[str, str]:
    """Users with encrypted phones (every third without one) and TOTP secrets; name → phone."""
    crypto = crypto or runtime.crypto
    now = runtime.clock.now()
    phones: dict[str, str] = {}
    with runtime.session_factory() as session, session.begin():
        for i in range(start, start + count):
            phone = f"1380000{i:04d}"
            has_phone = i % 3 != 2
            session.add(User(
                username=f"user{i}", display_name=f"用户{i}", role=Role.VIEWER,
                password_hash="not-a-real-hash", created_at=now, password_changed_at=now,
                phone_enc=crypto.encrypt(phone, context="user.phone") if has_phone else None,
                phone_index=crypto.blind_index(phone, context="user.phone") if has_phone else None,
                totp_secret_enc=crypto.encrypt(f"SECRET{i}", context="user.totp"),
            ))
            if has_phone:
                phones[f"user{i}"] = phone
    return phones


def _users(runtime: Runtime) -> list[Any]:
    with runtime.session_factory() as session:
        return list(session.execute(
            sa.select(User.username, User.phone_enc, User.phone_index, User.totp_secret_enc)
            .order_by(User.id)
        ))


def _key_ids(runtime: Runtime) -> set[str]:
    crypto = runtime.crypto
    ids = set()
    for row in _users(runtime):
        ids |= {crypto.key_id_of(t) for t in (row.phone_enc, row.totp_secret_enc) if t}
    return ids


def _audit(runtime: Runtime, action: str) -> list[AuditRow]:
    with runtime.session_factory() as session:
        return list(session.scalars(sa.select(AuditRow).where(AuditRow.action == action)))


def test_the_auth_columns_are_registered_for_rotation() -> None:
    names = {(c.table, c.column, c.context) for c in ENCRYPTED_COLUMNS}
    assert ("app_user", "phone_enc", "user.phone") in names
    assert ("app_user", "totp_secret_enc", "user.totp") in names


def test_registering_a_column_twice_is_harmless_but_a_different_context_is_refused() -> None:
    before = list(ENCRYPTED_COLUMNS)
    register_encrypted_column("app_user", "id", "phone_enc", "user.phone")
    assert before == ENCRYPTED_COLUMNS
    with pytest.raises(ValueError):
        register_encrypted_column("app_user", "id", "phone_enc", "person.phone")


def test_rotation_moves_every_value_onto_a_new_key_and_keeps_values_and_indexes(
        keyed: Runtime, runtime: Runtime) -> None:
    old = _ring(keyed).current
    phones = _add_users(keyed, 8)
    before = _users(keyed)
    assert _key_ids(keyed) == {old}

    result = rotate_data_key(runtime=keyed, session_factory=keyed.session_factory,
                             actor="secadmin", batch_size=3)

    ring = _ring(keyed)
    assert result.new_key_created and result.ok
    assert ring.current == result.key_id != old
    assert old in ring.data_keys  # kept until retired
    assert result.moved == len(phones) + 8
    assert _key_ids(keyed) == {ring.current}
    fresh = SoftwareProvider(ring)  # what a restarted process will load
    after = _users(keyed)
    for was, now in zip(before, after, strict=True):
        assert now.phone_index == was.phone_index
        if was.phone_enc:
            assert now.phone_enc != was.phone_enc
            assert fresh.decrypt(now.phone_enc, context="user.phone") == phones[now.username]
        else:
            assert now.phone_enc is None
        assert fresh.decrypt(now.totp_secret_enc, context="user.totp") == (
            "SECRET" + now.username.removeprefix("user"))
    # The rotating process itself now encrypts with the new key.
    assert keyed.crypto.key_id_of(keyed.crypto.encrypt("x", context="t")) == ring.current

    rows = _audit(keyed, ROTATE_ACTION)
    assert len(rows) == 1
    assert (rows[0].actor, rows[0].object_id, rows[0].outcome) == (
        "secadmin", ring.current, "success")
    assert json.loads(rows[0].detail)["moved"] == result.moved
    with keyed.session_factory() as session:
        assert verify_chain(session=session, runtime=runtime).ok


def test_an_interrupted_rotation_is_finished_by_the_next_run_without_another_key(
        keyed: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    old = _ring(keyed).current
    _add_users(keyed, 9)
    calls = {"n": 0}
    original = SoftwareProvider.reencrypt

    def failing(self: SoftwareProvider, token: str, *, context: str) -> str:
        calls["n"] += 1
        if calls["n"] > 4:
            raise RuntimeError("power cut")
        return original(self, token, context=context)

    monkeypatch.setattr(SoftwareProvider, "reencrypt", failing)
    with pytest.raises(RuntimeError):
        rotate_data_key(runtime=keyed, session_factory=keyed.session_factory, actor="secadmin",
                        batch_size=2)
    monkeypatch.setattr(SoftwareProvider, "reencrypt", original)
    new = _ring(keyed).current
    assert new != old
    assert _key_ids(keyed) == {old, new}  # two batches of two committed, the third rolled back
    with pytest.raises(KeyRotationRefused, match="still encrypt"):
        retire_keys(runtime=keyed, session_factory=keyed.session_factory, actor="secadmin")

    result = rotate_data_key(runtime=keyed, session_factory=keyed.session_factory,
                             actor="secadmin", batch_size=2)

    assert not result.new_key_created
    assert result.key_id == new == _ring(keyed).current
    assert result.moved == 6 + 9 - 4  # the rows already on the new key were skipped
    assert _key_ids(keyed) == {new}


def test_retire_refuses_while_a_row_uses_the_old_key_and_removes_it_after(
        keyed: Runtime) -> None:
    old_ring = _ring(keyed)
    _add_users(keyed, 3)
    rotate_data_key(runtime=keyed, session_factory=keyed.session_factory, actor="secadmin")
    # A web worker that has not restarted still writes with the old key.
    _add_users(keyed, 1, crypto=SoftwareProvider(old_ring), start=10)

    with pytest.raises(KeyRotationRefused, match=old_ring.current):
        retire_keys(runtime=keyed, session_factory=keyed.session_factory, actor="secadmin")
    assert old_ring.current in _ring(keyed).data_keys

    again = rotate_data_key(runtime=keyed, session_factory=keyed.session_factory,
                            actor="secadmin")
    assert not again.new_key_created and again.moved == 2
    result = retire_keys(runtime=keyed, session_factory=keyed.session_factory, actor="secadmin")

    ring = _ring(keyed)
    assert result.retired == [old_ring.current]
    assert set(ring.data_keys) == {ring.current}
    assert ring.index_key == old_ring.index_key and ring.mac_keys == old_ring.mac_keys
    fresh = SoftwareProvider(ring)
    for row in _users(keyed):
        fresh.decrypt(row.totp_secret_enc, context="user.totp")
    assert len(_audit(keyed, "crypto:key:retire")) == 1


def test_the_current_key_cannot_be_retired(keyed: Runtime) -> None:
    current = _ring(keyed).current
    with pytest.raises(KeyRotationRefused, match="current"):
        retire_keys(runtime=keyed, session_factory=keyed.session_factory, actor="secadmin",
                    key_ids=[current])
    assert _ring(keyed).current == current


def test_retire_with_only_the_current_key_does_nothing(keyed: Runtime) -> None:
    result = retire_keys(runtime=keyed, session_factory=keyed.session_factory, actor="secadmin")
    assert result.retired == []
    assert _audit(keyed, "crypto:key:retire") == []


def test_a_value_that_cannot_be_decrypted_is_reported_and_the_rest_still_move(
        keyed: Runtime) -> None:
    _add_users(keyed, 2)
    with keyed.session_factory() as session, session.begin():
        session.execute(sa.update(User).where(User.username == "user0")
                        .values(phone_enc="sm4gcm:k99:AAAA"))

    result = rotate_data_key(runtime=keyed, session_factory=keyed.session_factory,
                             actor="secadmin")

    assert result.failed == 1 and not result.ok
    assert "app_user.phone_enc id=" in result.describe()
    assert result.moved == 3
    assert _audit(keyed, ROTATE_ACTION)[0].outcome == "failure"


def test_keys_from_the_environment_cannot_be_rotated(keyed: Runtime,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    before = keyed.settings.data_key_file.read_text(encoding="utf-8")
    monkeypatch.setenv(DATA_KEYS_ENV, before)
    with pytest.raises(KeyRotationRefused, match=DATA_KEYS_ENV):
        rotate_data_key(runtime=keyed, session_factory=keyed.session_factory, actor="secadmin")
    with pytest.raises(KeyRotationRefused, match=DATA_KEYS_ENV):
        retire_keys(runtime=keyed, session_factory=keyed.session_factory, actor="secadmin")
    assert keyed.settings.data_key_file.read_text(encoding="utf-8") == before


def test_the_cli_handlers_rotate_and_retire(keyed: Runtime,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _add_users(keyed, 2)
    old = _ring(keyed).current

    assert cli_rotate(keyed.settings) == 0
    out = capsys.readouterr().out
    new = _ring(keyed).current
    assert f"new data key {new} is current" in out
    assert "re-encrypted 4 value(s)" in out

    assert cli_retire(keyed.settings) == 0
    assert old in capsys.readouterr().out
    assert set(_ring(keyed).data_keys) == {new}


def test_the_cli_reports_a_refusal_with_exit_code_2(keyed: Runtime,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv(DATA_KEYS_ENV, keyed.settings.data_key_file.read_text(encoding="utf-8"))
    assert cli_rotate(keyed.settings) == 2
    assert DATA_KEYS_ENV in capsys.readouterr().err
