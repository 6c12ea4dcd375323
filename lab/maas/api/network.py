"""``subnets/``, ``fabrics/``, ``fabrics/{id}/vlans/`` and ``vlans/``: the network, read-only
(the lab's network is fixed by its spec)."""

from __future__ import annotations

from typing import Any

from metalflow.lab.maas import model
from metalflow.lab.maas.api.base import Request, Resource, not_found
from metalflow.lab.maas.model import Fabric


class Network(Resource):
    def subnets_read(self, req: Request) -> Any:
        return [model.subnet_json(self.state, s) for s in self.state.subnets.values()]

    def subnet_read(self, req: Request, spec: str) -> Any:
        s = self.state.subnet_from_spec(spec)
        if s is None:
            raise not_found("Subnet")
        return model.subnet_json(self.state, s)

    def fabrics_read(self, req: Request) -> Any:
        return [model.fabric_json(self.state, f) for f in self.state.fabrics.values()]

    def _fabric(self, fabric_id: str) -> Fabric:
        f = self.state.fabrics.get(int(fabric_id)) if fabric_id.isdigit() else None
        if f is None:
            f = next((x for x in self.state.fabrics.values() if x.name == fabric_id), None)
        if f is None:
            raise not_found("Fabric")
        return f

    def fabric_read(self, req: Request, fabric_id: str) -> Any:
        return model.fabric_json(self.state, self._fabric(fabric_id))

    def fabric_vlans_read(self, req: Request, fabric_id: str) -> Any:
        f = self._fabric(fabric_id)
        return [model.vlan_json(self.state, v) for v in self.state.vlans.values() if v.fabric_id == f.id]

    def fabric_vlan_read(self, req: Request, fabric_id: str, vid: str) -> Any:
        f = self._fabric(fabric_id)
        v = self.state.vlan_by_vid(f.id, int(vid)) if vid.isdigit() else None
        if v is None:
            raise not_found("VLAN")
        return model.vlan_json(self.state, v)

    def vlan_read(self, req: Request, vlan_id: str) -> Any:
        v = self.state.vlans.get(int(vlan_id)) if vlan_id.isdigit() else None
        if v is None:
            raise not_found("VLAN")
        return model.vlan_json(self.state, v)
