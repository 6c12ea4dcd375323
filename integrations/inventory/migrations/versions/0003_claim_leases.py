"""Claims become leases (issue 17): CloudStack sends no ``delete`` for a VM whose first start
failed, so a claim ``prepare`` made must free itself. Existing claims were placements.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "host_claims",
        sa.Column("state", sa.String(length=16), server_default=sa.text("'placed'"), nullable=False),
    )
    op.add_column("host_claims", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("host_claims", sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("host_claims") as batch:
        batch.drop_column("updated_at")
        batch.drop_column("expires_at")
        batch.drop_column("state")
