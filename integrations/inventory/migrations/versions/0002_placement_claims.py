"""Placement claims: a host set aside for one CloudStack VM (the 4.22 pool model's prepare).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "host_claims",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("vm_uuid", sa.String(length=64), nullable=False),
        sa.Column("vm_name", sa.String(length=255), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_host_claims_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_claims")),
        sa.UniqueConstraint("host_id", name=op.f("uq_host_claims_host_id")),
        sa.UniqueConstraint("vm_uuid", name=op.f("uq_host_claims_vm_uuid")),
    )


def downgrade() -> None:
    op.drop_table("host_claims")
