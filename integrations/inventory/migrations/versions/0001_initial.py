"""Initial schema: switches, hosts, host_nics, port_vlans, host_events.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("cloudstack_id", sa.String(length=64), nullable=True),
        sa.Column("ipmi_address", sa.String(length=255), nullable=False),
        sa.Column("ipmi_port", sa.Integer(), server_default=sa.text("623"), nullable=False),
        sa.Column("ipmi_username", sa.String(length=128), nullable=False),
        sa.Column("ipmi_credential_ref", sa.String(length=255), nullable=False),
        sa.Column("boot_mac", sa.String(length=17), nullable=False),
        sa.Column("cpu_count", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=False),
        sa.Column("arch", sa.String(length=64), nullable=False),
        sa.Column("maas_system_id", sa.String(length=32), nullable=True),
        sa.Column("last_vm_uuid", sa.String(length=64), nullable=True),
        sa.Column("last_vm_name", sa.String(length=255), nullable=True),
        sa.Column("power_state", sa.String(length=8), server_default=sa.text("'unknown'"), nullable=False),
        sa.Column("power_state_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("poll_failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_poll_error", sa.String(length=500), nullable=True),
        sa.Column("maintenance", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("maintenance_reason", sa.String(length=500), nullable=True),
        sa.Column("maintenance_source", sa.String(length=16), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "maintenance_source IS NULL OR maintenance_source IN ('poll', 'operator')",
            name=op.f("ck_hosts_maintenance_source"),
        ),
        sa.CheckConstraint("power_state IN ('on', 'off', 'unknown')", name=op.f("ck_hosts_power_state")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hosts")),
        sa.UniqueConstraint("cloudstack_id", name=op.f("uq_hosts_cloudstack_id")),
        sa.UniqueConstraint("maas_system_id", name=op.f("uq_hosts_maas_system_id")),
        sa.UniqueConstraint("name", name=op.f("uq_hosts_name")),
    )
    op.create_table(
        "switches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=255), nullable=False),
        sa.Column("port", sa.Integer(), server_default=sa.text("22"), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column("credential_ref", sa.String(length=255), nullable=False),
        sa.Column("pxe_vlan", sa.Integer(), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_switches")),
        sa.UniqueConstraint("address", name=op.f("uq_switches_address")),
        sa.UniqueConstraint("name", name=op.f("uq_switches_name")),
    )
    op.create_table(
        "host_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("operation", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("step", sa.String(length=128), nullable=False),
        sa.Column("system", sa.String(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.String(length=1000), server_default=sa.text("''"), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('started', 'ok', 'failed', 'skipped', 'compensated')", name=op.f("ck_host_events_outcome")
        ),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_host_events_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_events")),
    )
    with op.batch_alter_table("host_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_host_events_host_id_at"), ["host_id", "at"], unique=False)

    op.create_table(
        "host_nics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=False),
        sa.Column("mac", sa.String(length=17), nullable=False),
        sa.Column("switch_id", sa.Integer(), nullable=True),
        sa.Column("port", sa.String(length=64), nullable=True),
        sa.Column("is_boot", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.CheckConstraint("(switch_id IS NULL) = (port IS NULL)", name=op.f("ck_host_nics_cabled")),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"], name=op.f("fk_host_nics_host_id_hosts"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["switch_id"], ["switches.id"], name=op.f("fk_host_nics_switch_id_switches")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_host_nics")),
        sa.UniqueConstraint("mac", name=op.f("uq_host_nics_mac")),
        sa.UniqueConstraint("switch_id", "port", name=op.f("uq_host_nics_switch_id_port")),
    )
    with op.batch_alter_table("host_nics", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_host_nics_host_id"), ["host_id"], unique=False)

    op.create_table(
        "port_vlans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("switch_id", sa.Integer(), nullable=False),
        sa.Column("port", sa.String(length=64), nullable=False),
        sa.Column("vlan", sa.Integer(), nullable=False),
        sa.Column("tagged", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("purpose", sa.String(length=8), nullable=False),
        sa.Column("host_id", sa.Integer(), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("purpose IN ('pxe', 'guest', 'extra')", name=op.f("ck_port_vlans_purpose")),
        sa.CheckConstraint("vlan BETWEEN 1 AND 4094", name=op.f("ck_port_vlans_vlan")),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"], name=op.f("fk_port_vlans_host_id_hosts"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(["switch_id"], ["switches.id"], name=op.f("fk_port_vlans_switch_id_switches")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_port_vlans")),
        sa.UniqueConstraint("switch_id", "port", "vlan", name=op.f("uq_port_vlans_switch_id_port_vlan")),
    )
    with op.batch_alter_table("port_vlans", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_port_vlans_host_id"), ["host_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("port_vlans", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_port_vlans_host_id"))

    op.drop_table("port_vlans")
    with op.batch_alter_table("host_nics", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_host_nics_host_id"))

    op.drop_table("host_nics")
    with op.batch_alter_table("host_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_host_events_host_id_at"))

    op.drop_table("host_events")
    op.drop_table("switches")
    op.drop_table("hosts")
