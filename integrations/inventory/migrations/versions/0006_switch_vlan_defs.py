"""Who made each VLAN definition on a switch (issue 18): ``found`` (an operator's: defined
before metalflow put the VLAN on a port) or ``made`` (created by metalflow's port change), so
the audit deletes only the definitions metalflow made that no port carries any more.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "switch_vlan_defs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("switch_id", sa.Integer(), nullable=False),
        sa.Column("vlan", sa.Integer(), nullable=False),
        sa.Column("origin", sa.String(length=8), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("origin IN ('found', 'made')", name=op.f("ck_switch_vlan_defs_origin")),
        sa.ForeignKeyConstraint(
            ["switch_id"], ["switches.id"], name=op.f("fk_switch_vlan_defs_switch_id_switches"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_switch_vlan_defs")),
        sa.UniqueConstraint("switch_id", "vlan", name=op.f("uq_switch_vlan_defs_switch_id_vlan")),
    )


def downgrade() -> None:
    op.drop_table("switch_vlan_defs")
