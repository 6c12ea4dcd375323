"""``zones/``, ``resourcepools/`` and ``domains/``: where machines sit; the lab has only MAAS's
defaults."""

from __future__ import annotations

from typing import Any

from metalflow.lab.maas import model
from metalflow.lab.maas.api.base import Request, Resource


class Placement(Resource):
    def zones_read(self, req: Request) -> Any:
        return [dict(model.ZONE)]

    def pools_read(self, req: Request) -> Any:
        return [dict(model.POOL)]

    def domains_read(self, req: Request) -> Any:
        return [dict(model.DOMAIN)]
