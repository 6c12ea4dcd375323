"""The host locks runs hold (issue 18): each lease id written when taken and removed when
released, so the lock of a run marked Crashed can be released at once by recovery instead of
after its lease (Prefect offers no way to list leases).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_leases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("limit_name", sa.String(length=128), nullable=False),
        sa.Column("lease_id", sa.String(length=64), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_leases")),
        sa.UniqueConstraint("lease_id", name=op.f("uq_run_leases_lease_id")),
    )
    op.create_index(op.f("ix_run_leases_run_id"), "run_leases", ["run_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_run_leases_run_id"), table_name="run_leases")
    op.drop_table("run_leases")
