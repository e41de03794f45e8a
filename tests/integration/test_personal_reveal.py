import json

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from grassroots.kernel.audit.chain import verify_chain
from grassroots.kernel.audit.models import AuditRow
from grassroots.kernel.crypto import CryptoError
from grassroots.kernel.errors import ValidationFailed
from grassroots.kernel.personal import ID_NUMBER, REVEAL_ACTION, reveal
from grassroots.runtime import Runtime

NUMBER = "11010519491231002X"


def _audit_rows(session: Session) -> list[AuditRow]:
    return list(session.scalars(sa.select(AuditRow).order_by(AuditRow.seq)))


def test_a_reveal_returns_the_value_and_leaves_exactly_one_audit_row_with_the_reason(
        session: Session, runtime: Runtime) -> None:
    stored = ID_NUMBER.protect(NUMBER, crypto=runtime.crypto)
    with session.begin():
        value = reveal(session, runtime=runtime, actor="dispatcher1",
                       field_context=ID_NUMBER.context, object_type="person", object_id=42,
                       ciphertext=stored.ciphertext, reason="核实低保申请人身份",
                       source_ip="10.0.0.8")
    assert value == NUMBER
    rows = _audit_rows(session)
    assert len(rows) == 1
    row = rows[0]
    assert (row.actor, row.action, row.object_type, row.object_id, row.source_ip) == (
        "dispatcher1", REVEAL_ACTION, "person", "42", "10.0.0.8")
    assert json.loads(row.detail) == {"field": "person.id_number", "reason": "核实低保申请人身份"}
    assert NUMBER not in row.detail  # the log says who looked and why, never the value
    assert verify_chain(session=session, runtime=runtime).ok


@pytest.mark.parametrize("reason", ["", "   ", "查看", "ok"])
def test_a_reveal_without_a_stated_reason_is_refused_and_not_logged(
        session: Session, runtime: Runtime, reason: str) -> None:
    stored = ID_NUMBER.protect(NUMBER, crypto=runtime.crypto)
    with pytest.raises(ValidationFailed) as caught, session.begin():
        ID_NUMBER.reveal(session, runtime=runtime, actor="dispatcher1", object_type="person",
                         object_id=42, ciphertext=stored.ciphertext, reason=reason)
    assert caught.value.message_id == "personal.reveal.reason_required"
    assert _audit_rows(session) == []


def test_a_ciphertext_from_another_field_cannot_be_revealed(session: Session,
                                                            runtime: Runtime) -> None:
    token = runtime.crypto.encrypt(NUMBER, context="person.phone")
    with pytest.raises(CryptoError), session.begin():
        reveal(session, runtime=runtime, actor="dispatcher1", field_context="person.id_number",
               object_type="person", object_id=42, ciphertext=token, reason="核实身份信息")
    assert _audit_rows(session) == []


def test_each_reveal_is_logged_separately(session: Session, runtime: Runtime) -> None:
    stored = ID_NUMBER.protect(NUMBER, crypto=runtime.crypto)
    for reason in ("核实身份信息", "办理社保补贴"):
        with session.begin():
            ID_NUMBER.reveal(session, runtime=runtime, actor="leader", object_type="person",
                             object_id=7, ciphertext=stored.ciphertext, reason=reason)
    reasons = [json.loads(r.detail)["reason"] for r in _audit_rows(session)]
    assert reasons == ["核实身份信息", "办理社保补贴"]
