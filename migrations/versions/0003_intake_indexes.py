"""intake indexes: the duplicate probe's (category, received, lon, lat); sparse incident columns
indexed only where set; no deadline index on due_at alone; who read a notice

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 11:01:37.154834
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
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
    # Most incidents leave these empty: an intake then writes no index entry for them.
    with op.batch_alter_table('incident', schema=None) as batch_op:
        for name in _SPARSE:
            batch_op.drop_index(f'ix_incident_{name}')
            batch_op.create_index(f'ix_incident_{name}', [name], unique=False,
                                  postgresql_where=sa.text(f'{name} IS NOT NULL'),
                                  sqlite_where=sa.text(f'{name} IS NOT NULL'))
    # Deadlines are looked up by state and time (ix_deadline_state_due/_warn), never by time alone.
    with op.batch_alter_table('deadline', schema=None) as batch_op:
        batch_op.drop_index('ix_deadline_due_at')
    with op.batch_alter_table('incident_notice', schema=None) as batch_op:
        batch_op.add_column(sa.Column('read_by', sa.String(length=80), nullable=True))


_SPARSE = ('external_ref', 'police_ref', 'duplicate_of_id')


def downgrade() -> None:
    with op.batch_alter_table('incident_notice', schema=None) as batch_op:
        batch_op.drop_column('read_by')
    with op.batch_alter_table('deadline', schema=None) as batch_op:
        batch_op.create_index('ix_deadline_due_at', ['due_at'], unique=False)
    with op.batch_alter_table('incident', schema=None) as batch_op:
        for name in _SPARSE:
            batch_op.drop_index(f'ix_incident_{name}')
            batch_op.create_index(f'ix_incident_{name}', [name], unique=False)
    with op.batch_alter_table('incident', schema=None) as batch_op:
        batch_op.drop_index('ix_incident_duplicate_probe')
        batch_op.create_index(batch_op.f('ix_incident_category_id'), ['category_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_incident_category_received'), ['category_id', 'received_at'], unique=False)
