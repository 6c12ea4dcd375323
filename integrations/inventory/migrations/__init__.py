"""Alembic migrations of the inventory, shipped with the package (see ``..migrate``)."""
