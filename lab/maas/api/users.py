"""``users/``: who the API key belongs to (the lab has one user, an admin)."""

from __future__ import annotations

from typing import Any

from metalflow.lab.maas.api.base import Request, Resource
from metalflow.lab.maas.model import API, USER


class Users(Resource):
    def whoami(self, req: Request) -> Any:
        return {
            "username": USER,
            "email": f"{USER}@example.com",
            "is_superuser": True,
            "is_local": True,
            "sshkeys_count": 0,
            "resource_uri": f"{API}/users/{USER}/",
        }
