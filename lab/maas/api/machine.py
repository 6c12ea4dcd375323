"""``machines/{system_id}/``: one machine and its operations (deploy, release, commission,
abort, power, mark broken or fixed, the curtin config MAAS would hand the installer)."""

from __future__ import annotations

import re
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import yaml

from metalflow.lab.maas import model
from metalflow.lab.maas.api.base import (
    ApiError,
    Request,
    Resource,
    Response,
    bad_request,
    choice_error,
    conflict,
    parse_bool,
)
from metalflow.lab.maas.api.machines import POWER_TYPES, power_params
from metalflow.lab.maas.lifecycle import ERASE_MODES
from metalflow.lab.maas.model import USER, Machine
from metalflow.lab.maas.preseed import PreseedError
from metalflow.lab.maas.status import ACTIONS, RELEASABLE, NodeStatus, can_move

S = NodeStatus
DEFAULT_DISTRO = "ubuntu/jammy"


QUERY_POWER_TIMEOUT = 60.0


class OneMachine(Resource):
    def machine_read(self, req: Request, system_id: str) -> Any:
        return self._mj(self._machine(system_id))

    def machine_update(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        d = req.body
        errors: dict[str, list[str]] = {}
        hostname = d.get("hostname")
        if hostname is not None:
            hostname = hostname.strip().split(".", 1)[0]
            if not re.fullmatch(r"[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?", hostname):
                errors["hostname"] = [f"Invalid hostname: {hostname}"]
            elif self.state.hostname_taken(hostname, other_than=m.system_id):
                errors["hostname"] = ["Node with this Hostname already exists."]
        power_type = d.get("power_type")
        if power_type is not None and power_type not in POWER_TYPES:
            errors["power_type"] = choice_error(power_type)
        if errors:
            raise bad_request(errors)
        if hostname is not None:
            m.hostname = hostname
        if power_type is not None:
            m.power_type = power_type
        if d.get("description") is not None:
            m.description = d.get("description") or ""
        m.power_parameters.update(power_params(d))
        return self._mj(m)

    def machine_delete(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        m.gen += 1  # ends any phase
        for iface in m.interfaces.values():
            self.state.by_mac.pop(iface.mac, None)
        del self.state.machines[system_id]
        return Response(204)

    def machine_deploy(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        d = req.body
        if m.status == S.READY:
            if m.owner is not None and m.owner != USER:
                raise conflict("Can't allocate a machine belonging to another user.")
            self.life.allocate(m, agent_name=d.get("agent_name") or "")
        elif d.get("agent_name"):
            m.agent_name = d.get("agent_name") or ""
        if not can_move(m.status, S.DEPLOYING):
            raise conflict(f"Can't deploy a machine that is in the '{m.status.label}' state")
        series = d.get("distro_series") or DEFAULT_DISTRO
        image = self.state.find_image(series)
        if image is None:
            choices = ", ".join(f"'{c}'" for c in ["", *sorted(i.series for i in self.state.images)])
            raise bad_request(
                {"distro_series": [f"'{series}' is not a valid distro_series.  It should be one of: {choices}."]}
            )
        m.osystem, m.distro_series = image.osystem, image.release
        version = model.UBUNTU_VERSIONS.get(image.release) if image.osystem == "ubuntu" else None
        m.hwe_kernel = f"ga-{version}" if version else None
        if d.get("user_data") is not None:
            m.user_data = d.get("user_data") or ""
        try:
            self.life.render_preseed(m)
        except PreseedError as exc:
            raise bad_request(f"Failed to render preseed: {exc}") from None
        self.life.start_deploying(m, image.series)
        return self._mj(m)

    def machine_release(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        d = req.body
        erase = parse_bool(d.get("erase"), "erase")
        secure = parse_bool(d.get("secure_erase"), "secure_erase")
        quick = parse_bool(d.get("quick_erase"), "quick_erase")
        parse_bool(d.get("force"), "force")
        if m.status in (S.RELEASING, S.READY):
            return self._mj(m)  # MAAS: already released (or releasing) is success
        if m.status not in RELEASABLE:
            raise conflict(f"Machine cannot be released in its current state ('{m.status.label}').")
        # The lab's disks support secure erase, so secure wins; quick alone is quick.
        mode = "secure_erase" if secure else "quick_erase" if quick else "erase" if erase else None
        assert mode is None or mode in ERASE_MODES
        self.life.start_release(m, erase_mode=mode)
        return self._mj(m)

    def machine_commission(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        d = req.body
        skip_networking = parse_bool(d.get("skip_networking"), "skip_networking")
        for flag in ("enable_ssh", "skip_bmc_config", "skip_storage"):
            parse_bool(d.get(flag), flag)
        if m.status not in ACTIONS["commission"]:
            raise bad_request({"__all__": ["Commission is not available because of the current state of the node."]})
        self.life.start_commissioning(m, skip_networking=skip_networking)
        return self._mj(m)

    def machine_abort(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        if m.status not in ACTIONS["abort"] or m.status == S.TESTING:
            raise conflict(f"Cannot abort in current state: node {m.system_id} is in state {m.status.label}.")
        self.life.abort(m)
        return self._mj(m)

    def machine_power_on(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        if m.owner is None:
            raise conflict("Can't start node: it hasn't been allocated.")
        if m.status == S.ALLOCATED:  # MAAS's Machine.start(): an allocated machine deploys
            return self.machine_deploy(req, system_id)
        if d := req.body.get("user_data"):
            m.user_data = d
        self.life.power_action(m, "on")
        return self._mj(m)

    def machine_power_off(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        mode = (req.body.get("stop_mode") or "hard").strip().lower()
        if mode not in ("soft", "hard"):
            raise bad_request({"stop_mode": choice_error(mode)})
        self.life.power_action(m, "off", soft=(mode == "soft"))
        return self._mj(m)

    def machine_query_power_state(self, req: Request, system_id: str) -> Any:
        with self.lock:
            m = self._machine(system_id)
            fut = self.life.query_power(m)
        try:
            state = fut.result(timeout=QUERY_POWER_TIMEOUT)
        except FutureTimeout:
            return Response.text(503, "Timed out waiting for power response in Machine.power_state.")
        if state == "error":
            return Response.text(503, "Failed to query node's BMC: no valid answer from the BMC.")
        return {"state": state}

    def machine_mark_broken(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        if m.owner != USER:
            raise ApiError(
                403,
                "You do not have permission to mark this machine broken: "
                "only its owner can (MAAS checks ownership even for admins).",
            )
        comment = req.body.get("comment") or req.body.get("error_description") or ""
        self.life.mark_broken(m, comment)
        return self._mj(m)

    def machine_mark_fixed(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        if m.status not in ACTIONS["mark_fixed"]:
            raise conflict("Can't mark a non-broken node as 'Ready'.")
        self.life.mark_fixed(m)
        return self._mj(m)

    def machine_get_curtin_config(self, req: Request, system_id: str) -> Any:
        """MAAS answers ``text/plain``: ``yaml.safe_dump(config, default_flow_style=False)``."""
        m = self._machine(system_id)
        if m.status not in (S.DEPLOYING, S.DEPLOYED, S.FAILED_DEPLOYMENT):
            raise bad_request(f"Machine {m.hostname} is not in a deployment state.")
        try:
            rendered = self.life.render_preseed(m)
        except PreseedError as exc:
            return Response.text(500, f"Failed to render preseed: {exc}")
        config = dict(rendered.config)
        config.setdefault("network", self._network_config(m))
        return Response.text(200, yaml.safe_dump(config, default_flow_style=False))

    def _network_config(self, m: Machine) -> dict[str, Any]:
        """The part of the merged curtin config MAAS generates from the interfaces (netplan v1)."""
        entries = []
        for iface in m.interfaces.values():
            subnets = []
            for link in iface.links:
                if link.mode == "link_up" or link.subnet_id is None:
                    subnets.append({"type": "manual"})
                    continue
                sn = self.state.subnets[link.subnet_id]
                if link.mode == "dhcp":
                    subnets.append({"type": "dhcp4"})
                else:
                    entry = {"type": "static", "address": f"{link.ip or ''}/{sn.network.prefixlen}"}
                    if link.default_gateway and sn.gateway_ip:
                        entry["gateway"] = sn.gateway_ip
                    subnets.append(entry)
            e: dict[str, Any] = {
                "id": iface.name,
                "name": iface.name,
                "type": iface.type,
                "mac_address": iface.mac,
                "mtu": iface.mtu,
                "subnets": subnets,
            }
            if iface.type == "bond":
                e["bond_interfaces"] = sorted(m.interfaces[p].name for p in iface.parents)
                params = iface.params if isinstance(iface.params, dict) else {}
                e["params"] = {k.replace("_", "-"): v for k, v in params.items()}
            entries.append(e)
        return {"version": 1, "config": entries}

    def machine_power_parameters(self, req: Request, system_id: str) -> Any:
        return dict(self._machine(system_id).power_parameters)
