"""Independent clients for the assembled lab: what a stranger to our code would use.

MAAS through ``requests`` + ``requests_oauthlib.OAuth1`` (PLAINTEXT, form bodies, trailing
slashes, ``?op=``), BMCs through stock pyghmi, switches through stock netmiko. Nothing here
imports ``integrations`` or the simulators: the lab is seen only through its manifest, its
protocols and its control API (``LabHandle`` from ``tests.conftest``).

pyghmi runs in a helper process that is killed when our own deadline passes: a pyghmi call
to a silent BMC can block for a long time, and a thread cannot be killed (a hung one would
also leave a half-open session in pyghmi's process-wide session table).
"""

from __future__ import annotations

import multiprocessing
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import requests
from netmiko import ConnectHandler
from requests_oauthlib import OAuth1

# MAAS node statuses (MAAS's own numbers; duplicated on purpose).
COMMISSIONING, FAILED_COMMISSIONING, READY = 1, 2, 4
DEPLOYED, DEPLOYING, ALLOCATED, FAILED_DEPLOYMENT = 6, 9, 10, 11
RELEASING, DISK_ERASING, FAILED_DISK_ERASING = 12, 14, 15

# What the world model shows a powered server doing (the lab's console view).
NO_DHCP = "pxe: no DHCP offer"
PXE_IDLE = "pxe: nothing to boot"

GUEST_VLAN = 200
IPMI_DEADLINE = 10.0


def wait_for(
    what: str, probe: Callable[[], Any], ok: Callable[[Any], bool], timeout: float, interval: float = 0.05
) -> Any:
    """Poll ``probe`` until ``ok(value)``; fail naming ``what`` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if ok(value):
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; last seen: {value!r}")
        time.sleep(interval)


# --- MAAS -------------------------------------------------------------------------------------


class Maas:
    """MAAS API 2.0 over HTTP with OAuth 1.0 PLAINTEXT (as MAAS's documentation shows)."""

    def __init__(self, manifest: dict, *, api_key: str | None = None):
        self.base = manifest["maas"]["url"] + "api/2.0/"
        ck, tk, ts = (api_key or manifest["maas"]["api_key"]).split(":")
        self.session = requests.Session()
        self.session.auth = OAuth1(
            ck, client_secret="", resource_owner_key=tk, resource_owner_secret=ts, signature_method="PLAINTEXT"
        )

    def get(self, path: str, op: str | None = None, **params: Any) -> requests.Response:
        if op:
            params["op"] = op
        return self.session.get(self.base + path, params=params, timeout=15)

    def post(self, path: str, op: str | None = None, data: Any = None) -> requests.Response:
        return self.session.post(self.base + path, params={"op": op} if op else None, data=data, timeout=15)

    def delete(self, path: str) -> requests.Response:
        return self.session.delete(self.base + path, timeout=15)

    def machine(self, system_id: str) -> dict:
        r = self.get(f"machines/{system_id}/")
        assert r.status_code == 200, f"GET machines/{system_id}/: {r.status_code} {r.text[:200]}"
        return r.json()

    def by_mac(self, mac: str) -> list[dict]:
        r = self.get("machines/", mac_address=mac)
        assert r.status_code == 200, f"GET machines/?mac_address={mac}: {r.status_code} {r.text[:200]}"
        return r.json()

    def wait_status(self, system_id: str, target: int, *, failure: Iterable[int] = (), timeout: float = 20.0) -> dict:
        """Poll until ``status == target``; a ``failure`` status ends the wait at once."""
        failure = set(failure)
        deadline = time.monotonic() + timeout
        while True:
            m = self.machine(system_id)
            if m["status"] == target:
                return m
            if m["status"] in failure:
                raise AssertionError(
                    f"{m['hostname']} ({system_id}) went to {m['status_name']} "
                    f"({m['status']}) while waiting for status {target}: {m.get('status_message')!r}"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{m['hostname']} ({system_id}) still {m['status_name']} ({m['status']}) "
                    f"after {timeout:g} s waiting for status {target}: {m.get('status_message')!r}"
                )
            time.sleep(0.1)


def power_address(host: dict) -> str:
    """MAAS's ipmi ``power_address``: the address, with ``:port`` only when not 623."""
    ipmi = host["ipmi"]
    return ipmi["address"] if ipmi["port"] == 623 else f"{ipmi['address']}:{ipmi['port']}"


def create_form(host: dict) -> list[tuple[str, str]]:
    """The machines/ create form for a manifest host (every cabled MAC, ipmi power)."""
    form = [
        ("architecture", host["arch"]),
        ("hostname", host["name"]),
        ("power_type", "ipmi"),
        ("power_parameters_power_address", power_address(host)),
        ("power_parameters_power_user", host["ipmi"]["username"]),
        ("power_parameters_power_pass", host["ipmi"]["password"]),
        ("power_parameters_power_driver", "LAN_2_0"),
    ]
    form += [("mac_addresses", mac) for mac in host["macs"]]
    return form


def commission(maas: Maas, host: dict, *, timeout: float = 20.0) -> dict:
    """Create the machine (MAAS commissions it) and wait until Ready."""
    r = maas.post("machines/", data=create_form(host))
    assert r.status_code == 200, f"create {host['name']}: {r.status_code} {r.text[:300]}"
    created = r.json()
    assert created["status"] == COMMISSIONING, created["status_name"]
    return maas.wait_status(created["system_id"], READY, failure=(FAILED_COMMISSIONING,), timeout=timeout)


def forget(maas: Maas, host: dict) -> None:
    """Delete the host's machine from MAAS if it is there (test clean-up)."""
    for m in maas.by_mac(host["macs"][0]):
        r = maas.delete(f"machines/{m['system_id']}/")
        assert r.status_code == 204, f"delete {m['system_id']}: {r.status_code} {r.text[:200]}"


# --- BMCs (pyghmi in a killable helper process) ----------------------------------------------


class IpmiError(Exception):
    """pyghmi raised; the text is pyghmi's own message."""


class IpmiDeadline(Exception):
    """pyghmi did not answer within our deadline; its process was killed."""


def _ipmi_op(cmd: Any, op: str, args: tuple) -> Any:
    if op == "get_power":
        return cmd.get_power()["powerstate"]
    if op == "set_power":
        return cmd.set_power(args[0], wait=False)
    if op == "set_bootdev":
        return cmd.set_bootdev(args[0], persist=args[1])
    if op == "get_bootdev":
        return cmd.get_bootdev()
    raise ValueError(f"unknown op {op}")


def _ipmi_main(conn: Any) -> None:
    from pyghmi.ipmi.command import Command

    while True:
        try:
            address, port, user, password, op, args = conn.recv()
        except EOFError:
            return
        try:
            cmd = Command(bmc=address, port=port, userid=user, password=password)
            result = _ipmi_op(cmd, op, args)
            try:
                cmd.ipmi_session.logout()
            except Exception:  # noqa: BLE001 - reported as data
                pass
            conn.send(("ok", result))
        except Exception as exc:  # noqa: BLE001 - pyghmi raises IpmiException and plain errors alike
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class Ipmi:
    """One pyghmi helper process; ``call`` returns within its deadline or raises."""

    def __init__(self) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._start()

    def _start(self) -> None:
        self._conn, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_ipmi_main, args=(child,), daemon=True)
        self._proc.start()
        child.close()

    def call(self, host: dict, op: str, *args: Any, timeout: float = IPMI_DEADLINE, password: str | None = None) -> Any:
        ipmi = host["ipmi"]
        pw = ipmi["password"] if password is None else password
        self._conn.send((ipmi["address"], ipmi["port"], ipmi["username"].encode(), pw.encode(), op, args))
        if not self._conn.poll(timeout):
            self._proc.kill()
            self._proc.join()
            self._start()
            raise IpmiDeadline(f"pyghmi {op} on {host['name']} ({ipmi['address']}) gave no answer within {timeout:g} s")
        status, value = self._conn.recv()
        if status == "error":
            raise IpmiError(value)
        return value

    def power(self, host: dict, **kw: Any) -> str:
        return self.call(host, "get_power", **kw)

    def close(self) -> None:
        self._conn.close()
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


# --- switches (netmiko) -------------------------------------------------------------------------


def switch_of(manifest: dict, name: str) -> dict:
    return next(s for s in manifest["switches"] if s["name"] == name)


def connect_switch(sw: dict, **kw: Any):
    params = dict(
        device_type=sw["netmiko_device_type"],
        host=sw["address"],
        port=sw["port"],
        username=sw["username"],
        password=sw["password"],
        secret=sw["enable_secret"],
        conn_timeout=10,
        auth_timeout=10,
        banner_timeout=10,
    )
    params.update(kw)
    conn = ConnectHandler(**params)
    conn.enable()
    return conn


ERROR_LINE = re.compile(r"^(% (?!Access VLAN does not exist)|Command rejected)", re.M)


def configure(sw: dict, commands: list[str]) -> str:
    """Send ``commands`` in one session; any CLI error line fails the test."""
    conn = connect_switch(sw)
    try:
        out = conn.send_config_set(commands)
    finally:
        conn.disconnect()
    assert not ERROR_LINE.search(out), f"{sw['name']} refused a command:\n{out}"
    return out


@dataclass(frozen=True)
class PortView:
    """A port's VLANs as ``show`` reports them over SSH (``untagged`` None: the default VLAN)."""

    untagged: int | None
    tagged: frozenset[int]


def _vlan_list(text: str) -> set[int]:
    out: set[int] = set()
    for item in text.replace(" ", "").split(","):
        if not item or item.upper() in ("ALL", "NONE"):
            continue
        a, _, b = item.partition("-")
        out.update(range(int(a), int(b or a) + 1))
    return out


def show_port(sw: dict, port: str, conn: Any = None) -> PortView:
    """Read one port back with the dialect's ``show`` command."""
    own = conn is None
    conn = conn or connect_switch(sw)
    try:
        if sw["type"] == "Force10":
            out = conn.send_command(f"show interfaces switchport TenGigabitEthernet {port}")
            untagged: set[int] = set()
            tagged: set[int] = set()
            for q, vlans in re.findall(r"^([UT])\s+([\d,\- ]+)$", out, re.M):
                (untagged if q == "U" else tagged).update(_vlan_list(vlans))
            assert len(untagged) <= 1, out
            u = next(iter(untagged), 1)
            return PortView(None if u == 1 else u, frozenset(tagged))
        out = conn.send_command(f"show interfaces {port} switchport")
        mode = re.search(r"^Operational Mode: (.+)$", out, re.M)
        assert mode, f"no operational mode in:\n{out}"
        if "trunk" in mode.group(1):
            native = int(re.search(r"^Trunking Native Mode VLAN: (\d+)", out, re.M).group(1))
            allowed = _vlan_list(re.search(r"^Trunking VLANs Enabled: (.+)$", out, re.M).group(1))
            return PortView(None if native == 1 else native, frozenset(allowed - {native}))
        access = int(re.search(r"^Access Mode VLAN: (\d+)", out, re.M).group(1))
        return PortView(None if access == 1 else access, frozenset())
    finally:
        if own:
            conn.disconnect()


def set_untagged(sw: dict, ports: list[str], *, remove: int | None, add: int | None) -> None:
    """Move ports' untagged VLAN from ``remove`` to ``add`` (None: the default VLAN), in the
    dialect's own words."""
    if sw["type"] == "Force10":
        commands: list[str] = []
        if remove is not None:
            commands.append(f"interface vlan {remove}")
            commands += [f"no untagged TenGigabitEthernet {p}" for p in ports]
            commands.append("exit")
        if add is not None:
            commands.append(f"interface vlan {add}")
            commands += [f"untagged TenGigabitEthernet {p}" for p in ports]
            commands.append("exit")
    else:
        commands = []
        for p in ports:
            commands += [f"interface {p}", f"switchport access vlan {add or 1}", "exit"]
    configure(sw, commands)


def host_ports(host: dict) -> dict[str, list[str]]:
    """switch name -> the host's cabled ports on it."""
    out: dict[str, list[str]] = {}
    for nic in host["nics"]:
        out.setdefault(nic["switch"], []).append(nic["port"])
    return out


def move_host_untagged(manifest: dict, host: dict, *, remove: int | None, add: int | None) -> None:
    """Change the untagged VLAN of every cabled port of ``host`` over SSH and read it back."""
    for sw_name, ports in host_ports(host).items():
        sw = switch_of(manifest, sw_name)
        set_untagged(sw, ports, remove=remove, add=add)
        conn = connect_switch(sw)
        try:
            for p in ports:
                got = show_port(sw, p, conn)
                assert got.untagged == add, f"{sw_name} {p}: show reports {got} after moving it to VLAN {add}"
        finally:
            conn.disconnect()
