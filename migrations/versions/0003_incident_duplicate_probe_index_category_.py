"""incident duplicate-probe index (category, received, lon, lat)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 11:01:37.154834
"""
from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The duplicate probe's lon/lat box is checked on the index entries (no table read for the
    # incidents outside it); category_id alone was a prefix of the index it replaces.
    with op.batch_alter_table('incident', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_incident_category_received'))
        batch_op.drop_index(batch_op.f('ix_incident_category_id'))
        batch_op.create_index('ix_incident_duplicate_probe', ['category_id', 'received_at', 'lon', 'lat'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('incident', schema=None) as batch_op:
        batch_op.drop_index('ix_incident_duplicate_probe')
        batch_op.create_index(batch_op.f('ix_incident_category_id'), ['category_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_incident_category_received'), ['category_id', 'received_at'], unique=False)
