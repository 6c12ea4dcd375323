"""A run's undo stack in the inventory (issue 18): written before each change, so a run whose
process died can still be rolled back by a recovery run.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_undos",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("operation", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("params", sa.String(length=4000), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=500), server_default=sa.text("''"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("state IN ('pending', 'failed')", name=op.f("ck_run_undos_state")),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name=op.f("fk_run_undos_host_id_hosts"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_undos")),
        sa.UniqueConstraint("run_id", "seq", name=op.f("uq_run_undos_run_id_seq")),
    )
    op.create_index(op.f("ix_run_undos_host_id"), "run_undos", ["host_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_run_undos_host_id"), table_name="run_undos")
    op.drop_table("run_undos")
