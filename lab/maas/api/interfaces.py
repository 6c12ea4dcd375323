"""``nodes/{system_id}/interfaces/``: a machine's interfaces: read, bond, update, delete, link
and unlink subnets, disconnect. Edits need the machine New, Ready, Allocated or Broken, as in
MAAS (a Deployed machine may only rename an interface or change its MAC)."""

from __future__ import annotations

import ipaddress
from typing import Any

from metalflow.lab.maas import model
from metalflow.lab.maas.api.base import (
    Request,
    Resource,
    Response,
    bad_request,
    choice_error,
    conflict,
    multi,
    not_found,
    parse_bool,
    parse_int,
)
from metalflow.lab.maas.model import BOND_MODES, Interface, Link, Machine, normalize_mac, valid_mac
from metalflow.lab.maas.status import ACTIONS, NodeStatus

S = NodeStatus


class Interfaces(Resource):
    def _interface(self, system_id: str, iface_id: str) -> tuple[Machine, Interface]:
        m = self.state.machines.get(system_id)
        iid = int(iface_id) if iface_id.isdigit() else None
        iface = m.interfaces.get(iid) if m is not None and iid is not None else None
        if m is None or iface is None:
            # MAAS also accepts the interface name in place of its id.
            iface = next((i for i in m.interfaces.values() if i.name == iface_id), None) if m else None
            if m is None or iface is None:
                raise not_found("Interface")
        return m, iface

    def _ij(self, m: Machine, iface: Interface) -> dict[str, Any]:
        return model.interface_json(self.state, m, iface)

    def _check_editable(self, m: Machine, operation: str, extra: tuple[NodeStatus, ...] = ()) -> None:
        if m.status not in ACTIONS["edit_interfaces"] and m.status not in extra:
            raise conflict(f"Cannot {operation} interface because the machine is not New, Ready, Allocated, or Broken.")

    def interfaces_read(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id, "Node")
        return [self._ij(m, i) for i in m.interfaces.values()]

    def interfaces_create_bond(self, req: Request, system_id: str) -> Any:
        m = self._machine(system_id)
        self._check_editable(m, "create bond")
        d = req.body
        errors: dict[str, list[str]] = {}
        name = (d.get("name") or "").strip()
        if not name:
            errors["name"] = ["This field is required."]
        elif any(i.name == name for i in m.interfaces.values()):
            errors["name"] = [f"Interface with name '{name}' already exists on this machine."]
        parent_ids: list[int] = []
        for raw in d.getlist("parents"):
            iface = m.interfaces.get(int(raw)) if raw.strip().isdigit() else None
            if iface is None:
                errors.setdefault("parents", []).append(
                    f"Select a valid choice. {raw} is not one of the available choices."
                )
                continue
            if iface.type != "physical":
                errors.setdefault("parents", []).append(f"{iface.name} is not a physical interface.")
            elif any(iface.id in other.parents for other in m.interfaces.values()):
                errors.setdefault("parents", []).append(
                    f"Interface {iface.name} is already in use by another interface."
                )
            parent_ids.append(iface.id)
        if not d.getlist("parents"):
            errors["parents"] = ["A bond interface must have one or more parents."]
        mode = (d.get("bond_mode") or "active-backup").strip()
        if mode not in BOND_MODES:
            errors["bond_mode"] = choice_error(mode)
        mac = d.get("mac_address")
        if mac is not None and not valid_mac(mac):
            errors["mac_address"] = [f"'{mac}' is not a valid MAC address."]
        vlan_id = None
        if d.get("vlan"):
            vlan_id = parse_int(d.get("vlan"), "vlan")
            if vlan_id not in self.state.vlans:
                errors["vlan"] = ["Select a valid choice. That choice is not one of the available choices."]
        if errors:
            raise bad_request(errors)
        parents = [m.interfaces[p] for p in parent_ids]
        if vlan_id is None:
            vlan_id = parents[0].vlan_id
        params = {
            "bond_mode": mode,
            "bond_miimon": parse_int(d.get("bond_miimon"), "bond_miimon") or 100,
            "bond_downdelay": parse_int(d.get("bond_downdelay"), "bond_downdelay") or 0,
            "bond_updelay": parse_int(d.get("bond_updelay"), "bond_updelay") or 0,
            "bond_lacp_rate": d.get("bond_lacp_rate") or "slow",
            "bond_xmit_hash_policy": d.get("bond_xmit_hash_policy") or "layer2",
            "bond_num_grat_arp": parse_int(d.get("bond_num_grat_arp"), "bond_num_grat_arp") or 1,
        }
        for p in parents:
            p.links = []
            p.vlan_id = vlan_id
        iid = self.state.new_iface_id()
        bond = Interface(
            iid,
            name,
            "bond",
            normalize_mac(mac) if mac else parents[0].mac,
            vlan_id,
            parents=parent_ids,
            params=params,
            mtu=parse_int(d.get("mtu"), "mtu") or 1500,
        )
        bond.tags = sorted(multi(d.getlist("tags")))
        m.interfaces[iid] = bond
        return self._ij(m, bond)

    def interface_read(self, req: Request, system_id: str, id: str) -> Any:
        m, iface = self._interface(system_id, id)
        return self._ij(m, iface)

    def interface_update(self, req: Request, system_id: str, id: str) -> Any:
        m, iface = self._interface(system_id, id)
        self._check_editable(m, "update interface", extra=(S.DEPLOYED,))
        d = req.body
        errors: dict[str, list[str]] = {}
        name = d.get("name")
        if name is not None and any(i.name == name and i.id != iface.id for i in m.interfaces.values()):
            errors["name"] = [f"Interface with name '{name}' already exists on this machine."]
        mac = d.get("mac_address")
        if mac is not None:
            if not valid_mac(mac):
                errors["mac_address"] = [f"'{mac}' is not a valid MAC address."]
            elif self.state.by_mac.get(normalize_mac(mac), m.system_id) != m.system_id:
                errors["mac_address"] = [f"MAC address {mac} already in use."]
        deployed = m.status == S.DEPLOYED  # DeployedInterfaceForm: name and mac_address only
        vlan_id: int | None | str = "unchanged"
        if not deployed and "vlan" in d:
            raw = d.get("vlan") or ""
            if raw.strip() in ("", "null", "None"):
                vlan_id = None
            else:
                vlan_id = parse_int(raw, "vlan")
                if vlan_id not in self.state.vlans:
                    errors["vlan"] = ["Select a valid choice. That choice is not one of the available choices."]
        bond_mode = d.get("bond_mode")
        if not deployed and bond_mode is not None and iface.type == "bond" and bond_mode not in BOND_MODES:
            errors["bond_mode"] = choice_error(bond_mode)
        mtu = None if deployed else parse_int(d.get("mtu"), "mtu")
        link_connected = None
        if not deployed and d.get("link_connected") is not None:
            link_connected = parse_bool(d.get("link_connected"), "link_connected")
        if errors:
            raise bad_request(errors)
        if name is not None:
            iface.name = name
        if mac is not None:
            new_mac = normalize_mac(mac)
            if iface.type == "physical":
                self.state.by_mac.pop(iface.mac, None)
                self.state.by_mac[new_mac] = m.system_id
            iface.mac = new_mac
        if deployed:
            return self._ij(m, iface)
        if vlan_id != "unchanged" and vlan_id != iface.vlan_id:
            iface.vlan_id = vlan_id  # type: ignore[assignment]
            iface.links = [
                link
                for link in iface.links
                if link.subnet_id is not None and self.state.subnets[link.subnet_id].vlan_id == vlan_id
            ]
        if mtu is not None:
            iface.mtu = mtu
        if link_connected is not None:
            iface.link_connected = link_connected
        if d.get("tags") is not None:
            iface.tags = sorted(multi(d.getlist("tags")))
        if iface.type == "bond" and isinstance(iface.params, dict):
            for key in ("bond_mode", "bond_lacp_rate", "bond_xmit_hash_policy"):
                if d.get(key) is not None:
                    iface.params[key] = d.get(key)
            for key in ("bond_miimon", "bond_downdelay", "bond_updelay", "bond_num_grat_arp"):
                if d.get(key) is not None:
                    iface.params[key] = parse_int(d.get(key), key)
        return self._ij(m, iface)

    def interface_delete(self, req: Request, system_id: str, id: str) -> Any:
        m, iface = self._interface(system_id, id)
        self._check_editable(m, "delete interface")
        del m.interfaces[iface.id]
        if iface.type == "physical":
            self.state.by_mac.pop(iface.mac, None)
        for other in m.interfaces.values():
            if iface.id in other.parents:
                other.parents.remove(iface.id)
        if m.boot_interface_id == iface.id:
            m.boot_interface_id = next((i.id for i in m.physical()), None)
        return Response(204)

    def interface_link_subnet(self, req: Request, system_id: str, id: str) -> Any:
        m, iface = self._interface(system_id, id)
        self._check_editable(m, "link subnet")
        d = req.body
        errors: dict[str, list[str]] = {}
        force = parse_bool(d.get("force"), "force")
        raw_mode = d.get("mode")
        mode = (raw_mode or "").strip().lower()
        if not raw_mode:
            errors["mode"] = ["This field is required."]
        elif mode not in ("auto", "dhcp", "static", "link_up"):
            errors["mode"] = choice_error(raw_mode)
        subnet = None
        spec = d.get("subnet")
        if spec:
            subnet = self.state.subnet_from_spec(spec)
            if subnet is None:
                errors["subnet"] = ["Select a valid choice. That choice is not one of the available choices."]
        elif mode in ("auto", "static"):
            errors["subnet"] = ["This field is required."]
        if subnet is not None and not force and iface.vlan_id is not None and subnet.vlan_id != iface.vlan_id:
            errors["subnet"] = [f"Subnet {subnet.cidr} is not on the same VLAN as the interface."]
        if mode == "link_up" and iface.links and not force:
            errors["mode"] = [
                "Cannot configure interface to link up (with no IP address) while other "
                "links are already configured. Specify force=True to override this "
                "behavior and delete all links."
            ]
        if mode == "dhcp" and not force and any(link.mode == "dhcp" for link in iface.links):
            errors["mode"] = ["Interface already has a link to DHCP."]
        ip = d.get("ip_address")
        if ip and mode == "static" and subnet is not None:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                errors["ip_address"] = ["Enter a valid IPv4 or IPv6 address."]
            else:
                hosts = list(subnet.network.hosts())
                if addr not in subnet.network:
                    errors["ip_address"] = [f"IP address is not in the given subnet '{subnet.cidr}'."]
                elif addr in hosts[subnet.dynamic_from - 1 :]:
                    errors["ip_address"] = [
                        f"IP address is inside a dynamic range {hosts[subnet.dynamic_from - 1]} to {hosts[-1]}."
                    ]
                elif ip in self.state.used_ips(subnet) or ip == subnet.gateway_ip:
                    errors["ip_address"] = [f"IP address {ip} is already in use."]
        default_gw = parse_bool(d.get("default_gateway"), "default_gateway")
        if default_gw:
            if mode not in ("auto", "static"):
                errors["default_gateway"] = [f"Cannot use in mode '{mode}'."]
            elif subnet is not None and not subnet.gateway_ip:
                errors["default_gateway"] = ["Subnet has no gateway IP address."]
        if errors:
            raise bad_request(errors)
        if mode == "static" and subnet is not None and not ip:
            ip = self.state.allocate_ip(subnet)
            if ip is None:
                return Response.text(503, f"No more IPs available in subnet: {subnet.cidr}.")
        if force:
            iface.links = []
        if subnet is not None and (force or iface.vlan_id is None):
            iface.vlan_id = subnet.vlan_id
        if mode != "link_up":
            iface.links = [link for link in iface.links if link.mode != "link_up"]
        link = Link(
            self.state.new_link_id(),
            mode,
            subnet.id if subnet else None,
            ip if mode == "static" else None,
            default_gateway=default_gw,
        )
        if default_gw:
            for other in m.interfaces.values():
                for lk in other.links:
                    lk.default_gateway = False
        iface.links.append(link)
        return self._ij(m, iface)

    def interface_unlink_subnet(self, req: Request, system_id: str, id: str) -> Any:
        m, iface = self._interface(system_id, id)
        self._check_editable(m, "unlink subnet")
        raw = req.body.get("id")
        if not raw:
            raise bad_request({"id": ["This field is required."]})
        link = next((lk for lk in iface.links if str(lk.id) == raw.strip()), None)
        if link is None:
            raise bad_request({"id": choice_error(raw)})
        iface.links.remove(link)
        if not iface.links and iface.vlan_id is not None:
            iface.links.append(Link(self.state.new_link_id(), "link_up", None))  # ensure_link_up
        return self._ij(m, iface)

    def interface_disconnect(self, req: Request, system_id: str, id: str) -> Any:
        m, iface = self._interface(system_id, id)
        self._check_editable(m, "disconnect")
        iface.links = []
        iface.vlan_id = None
        return self._ij(m, iface)
