"""End-to-end: the assembled lab is one coherent world, seen only through independent clients.

The session's ``lab`` (``tests.conftest``: 6 hosts, tor-1 Force10 and tor-2 Cisco IOS, block
20, deploy 1 s, commission 0.5 s, erase 0.5 s, node_timeout 6 s) is driven the way an
operator's tools would drive real hardware: MAAS over OAuth-signed HTTP (requests), BMCs over
RMCP+ (pyghmi), switches over SSH (netmiko). The control API is used only to *read* what the
hardware is doing (``/hosts/<name>``: power, boot device, what runs, port VLANs), never to
make the scenario happen.

Hosts this module uses (each handed back off, unknown to MAAS, ports untagged in the PXE VLAN,
boot device PXE):

- host-001 (tor-1 1/1/1): commissioning;
- host-002 (tor-2 Gi1/0/1): deploy without the PXE VLAN;
- host-003 (tor-1 1/1/2 and 1/1/3, two NICs): deploy, boot from disk on the guest VLAN,
  PXE without DHCP, disk erase without and with the PXE VLAN.
"""

from __future__ import annotations

import ast
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO
from tests.lab.independent import (
    ALLOCATED,
    COMMISSIONING,
    DEPLOYED,
    DEPLOYING,
    DISK_ERASING,
    FAILED_COMMISSIONING,
    FAILED_DEPLOYMENT,
    FAILED_DISK_ERASING,
    GUEST_VLAN,
    NO_DHCP,
    READY,
    Ipmi,
    Maas,
    commission,
    configure,
    connect_switch,
    create_form,
    forget,
    move_host_untagged,
    power_address,
    show_port,
    switch_of,
    wait_for,
)

IMAGE = "ubuntu/jammy"


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def maas(lab) -> Maas:
    return Maas(lab.manifest)


@pytest.fixture(scope="module")
def ipmi():
    client = Ipmi()
    yield client
    client.close()


def manifest_host(lab, name: str) -> dict:
    return next(h for h in lab.manifest["hosts"] if h["name"] == name)


def hand_back(lab, maas: Maas, ipmi: Ipmi, host: dict) -> None:
    """Put a host back as the lab started it: unknown to MAAS, off, boot device PXE, every
    cabled port untagged in the PXE VLAN only. Uses the control API (drift) for the ports so
    that it works even when SSH is what broke."""
    pxe = lab.manifest["maas"]["pxe_vlan"]
    lab.reset_faults()
    forget(maas, host)
    lab.control("POST", f"/power/{host['name']}", {"on": False})
    for nic in host["nics"]:
        lab.control("POST", f"/ports/{nic['switch']}", {"port": nic["port"], "untagged": pxe, "tagged": []})
    ipmi.call(host, "set_bootdev", "network", True)
    state = wait_for(
        f"{host['name']} to be off",
        lambda: lab.host(host["name"]),
        lambda s: s["power"] == "off" and s["running"] == "off",
        timeout=10,
    )
    assert state["bootdev"] == "pxe" and state["persistent"], state


@pytest.fixture
def use_host(lab, maas, ipmi):
    """``use_host(name)`` -> the manifest host, handed over and back in the lab's initial state."""
    used: list[dict] = []

    def take(name: str) -> dict:
        host = manifest_host(lab, name)
        used.append(host)
        hand_back(lab, maas, ipmi, host)
        return host

    yield take
    for host in used:
        hand_back(lab, maas, ipmi, host)


def since(lab, name: str, t0: float) -> list[str]:
    """What the host's console showed since ``t0`` (wall clock, same machine)."""
    return [e["running"] for e in lab.host(name)["history"] if e["at"] >= t0]


def allocate_and_deploy(maas: Maas, system_id: str) -> dict:
    r = maas.post("machines/", op="allocate", data={"system_id": system_id})
    assert r.status_code == 200, f"allocate: {r.status_code} {r.text[:200]}"
    assert r.json()["status"] == ALLOCATED
    r = maas.post(f"machines/{system_id}/", op="deploy", data={"distro_series": IMAGE})
    assert r.status_code == 200, f"deploy: {r.status_code} {r.text[:200]}"
    assert r.json()["status"] == DEPLOYING
    return r.json()


def reset_and_wait_boot(lab, ipmi: Ipmi, host: dict) -> dict:
    """IPMI reset, then wait until the world counted one more boot."""
    boots = lab.host(host["name"])["boots"]
    ipmi.call(host, "set_power", "reset")
    return wait_for(
        f"{host['name']} to boot again", lambda: lab.host(host["name"]), lambda s: s["boots"] > boots, timeout=10
    )


# --- 1. the manifest ---------------------------------------------------------------------------------


def _manifest_path(lab) -> Path:
    args = list(lab.proc.args)
    return Path(args[args.index("--manifest") + 1])


def test_manifest_is_owner_only_and_matches_what_answers(lab, maas, ipmi):
    m = lab.manifest
    path = _manifest_path(lab)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600

    # MAAS: URL, API key and the seed's settings string all describe the same region.
    url = m["maas"]["url"]
    assert url.startswith("http://") and url.endswith("/MAAS/")
    settings = dict(part.split("=", 1) for part in m["maas"]["settings"].split(";"))
    assert set(settings) == {"MaasIP", "MaasPort", "MaasKey", "MaasSecret", "MaasConsumerKey"}
    assert url == f"http://{settings['MaasIP']}:{settings['MaasPort']}/MAAS/"
    assert m["maas"]["api_key"] == f"{settings['MaasConsumerKey']}:{settings['MaasKey']}:{settings['MaasSecret']}"
    assert maas.get("machines/").status_code == 200
    wrong = Maas(m, api_key=f"{settings['MaasConsumerKey']}:{settings['MaasKey']}:not-the-secret")
    assert wrong.get("machines/").status_code == 401
    assert requests.get(url + "api/2.0/version/", timeout=10).status_code == 200

    # Rack config in the seed's format, consistent with the hosts' NICs and the switches.
    racks = m["rack_config"]["racks"]
    assert len(racks) == len(m["switches"]) == 2
    nics = {(n["mac"], n["switch"], n["port"]) for h in m["hosts"] for n in h["nics"]}
    assert {mac for h in m["hosts"] for mac in h["macs"]} == {mac for mac, _, _ in nics}
    assert all(h["macs"] == [n["mac"] for n in h["nics"]] for h in m["hosts"])
    cabled = set()
    for rack, sw in zip(racks, m["switches"]):
        l2 = rack["l2Switch"]
        assert {k: l2[k] for k in ("ip", "username", "password", "type")} == {
            "ip": sw["address"],
            "username": sw["username"],
            "password": sw["password"],
            "type": sw["type"],
        }
        cabled |= {(h["mac"], sw["name"], h["port"]) for h in rack["hosts"]}
    assert cabled == nics
    assert [sw["type"] for sw in m["switches"]] == ["Force10", "CiscoIOS"]

    # Every BMC answers with its manifest credentials; every switch logs in and knows the
    # ports the rack config says are cabled to it.
    for h in m["hosts"]:
        assert set(h["ipmi"]) >= {"address", "port", "username", "password"}
        assert ipmi.power(h) in ("on", "off"), h["name"]
    for sw in m["switches"]:
        conn = connect_switch(sw)
        try:
            for _mac, name, port in sorted(nics):
                if name == sw["name"]:
                    show_port(sw, port, conn)  # a port the switch does not have fails to parse
        finally:
            conn.disconnect()

    # And the lab's own view agrees on the cabling.
    state = lab.state()
    seen = {(p["mac"], p["switch"], p["port"]) for h in state["hosts"].values() for p in h["ports"]}
    assert seen == nics


# --- 2. commissioning --------------------------------------------------------------------------------


def test_commissioning_powers_the_host_over_ipmi_pxe_boots_it_and_leaves_it_ready_and_off(lab, maas, ipmi, use_host):
    host = use_host("host-001")
    assert ipmi.power(host) == "off"
    t0 = time.time()
    r = maas.post("machines/", data=create_form(host))
    assert r.status_code == 200, r.text[:300]
    created = r.json()
    assert created["status"] == COMMISSIONING and created["power_type"] == "ipmi"
    sid = created["system_id"]
    params = maas.get(f"machines/{sid}/", op="power_parameters").json()
    assert params["power_address"] == power_address(host) and params["power_user"] == host["ipmi"]["username"]

    ready = maas.wait_status(sid, READY, failure=(FAILED_COMMISSIONING,))
    # The BMC powered the host on, it PXE-booted into MAAS's commissioning environment, and
    # MAAS powered it off at the end (READY only comes after the power-off succeeded).
    assert since(lab, host["name"], t0) == ["ephemeral:commissioning", "off"]
    assert ipmi.power(host) == "off"
    assert ready["power_state"] == "off"
    state = lab.host(host["name"])
    assert state["power"] == "off" and state["bootdev"] == "pxe"  # MAAS's next-boot override was used up
    # What commissioning found is the host's hardware.
    assert {i["mac_address"] for i in ready["interface_set"]} == set(host["macs"])
    assert (ready["cpu_count"], ready["memory"]) == (host["cpu_count"], host["memory_mb"])
    assert ready["boot_interface"]["mac_address"] == host["macs"][0]


# --- 3. deploy without the PXE VLAN -------------------------------------------------------------------


@pytest.mark.slow  # waits out MAAS's node_timeout (6 s in the session lab)
def test_deploy_without_the_pxe_vlan_fails_by_node_timeout(lab, maas, ipmi, use_host):
    host = use_host("host-002")  # tor-2, Cisco IOS
    pxe = lab.manifest["maas"]["pxe_vlan"]
    sid = commission(maas, host)["system_id"]

    move_host_untagged(lab.manifest, host, remove=pxe, add=None)
    assert [p["untagged"] for p in lab.host(host["name"])["ports"]] == [None]
    allocate_and_deploy(maas, sid)

    # The BMC powers it on, the PXE ROM gets no DHCP offer and the server sits there...
    state = wait_for(
        "the PXE ROM to give up", lambda: lab.host(host["name"]), lambda s: s["running"] == NO_DHCP, timeout=10
    )
    assert state["power"] == "on"
    # ...until MAAS's node_timeout fails the deployment.
    failed = maas.wait_status(
        sid, FAILED_DEPLOYMENT, failure=(DEPLOYED,), timeout=lab.manifest["timing"]["node_timeout"] + 10
    )
    assert "timed out" in failed["status_message"]
    state = lab.host(host["name"])
    assert state["running"] == NO_DHCP and state["disk_image"] is None
    assert ipmi.power(host) == "on"

    # Put the port back and release: MAAS powers the host off and it is Ready again.
    move_host_untagged(lab.manifest, host, remove=None, add=pxe)
    r = maas.post(f"machines/{sid}/", op="release")
    assert r.status_code == 200, r.text[:200]
    maas.wait_status(sid, READY, failure=(FAILED_DISK_ERASING,))
    assert ipmi.power(host) == "off"


# --- 4. deploy, boot from disk, PXE without DHCP, erase -------------------------------------------------


@pytest.mark.slow  # waits out MAAS's node_timeout once (the erase without PXE)
def test_deploy_then_disk_boot_on_the_guest_vlan_then_erase_needs_the_pxe_vlan(lab, maas, ipmi, use_host):
    host = use_host("host-003")  # tor-1, Force10, two NICs
    name = host["name"]
    pxe = lab.manifest["maas"]["pxe_vlan"]
    sid = commission(maas, host)["system_id"]

    # Deploy with the PXE VLAN: the installer runs from PXE, then the installed OS boots.
    t0 = time.time()
    allocate_and_deploy(maas, sid)
    deployed = maas.wait_status(sid, DEPLOYED, failure=(FAILED_DEPLOYMENT,))
    assert (deployed["osystem"], deployed["distro_series"]) == tuple(IMAGE.split("/"))
    state = wait_for(
        f"{name} to run its OS", lambda: lab.host(name), lambda s: s["running"] == f"os:{IMAGE}", timeout=10
    )
    assert state["disk_image"] == IMAGE and state["power"] == "on"
    assert since(lab, name, t0) == ["ephemeral:deploying", f"os:{IMAGE}"]

    # What provisioning does next: boot device disk, PXE VLAN off, guest VLAN on, reboot.
    ipmi.call(host, "set_bootdev", "hd", True)
    state = lab.host(name)
    assert (state["bootdev"], state["persistent"]) == ("disk", True)
    move_host_untagged(lab.manifest, host, remove=pxe, add=GUEST_VLAN)
    assert [p["untagged"] for p in lab.host(name)["ports"]] == [GUEST_VLAN, GUEST_VLAN]
    state = reset_and_wait_boot(lab, ipmi, host)
    assert state["running"] == f"os:{IMAGE}"
    assert maas.machine(sid)["status"] == DEPLOYED

    # No fallback from PXE to disk: with boot device PXE and no PXE VLAN it hangs at PXE.
    ipmi.call(host, "set_bootdev", "network", True)
    state = reset_and_wait_boot(lab, ipmi, host)
    assert state["running"] == NO_DHCP and state["disk_image"] == IMAGE

    # Releasing with erase PXE-boots the eraser: without the PXE VLAN it fails by timeout
    # and the disk keeps its image.
    r = maas.post(f"machines/{sid}/", op="release", data={"erase": "true"})
    assert r.status_code == 200, r.text[:200]
    assert r.json()["status"] == DISK_ERASING
    failed = maas.wait_status(
        sid, FAILED_DISK_ERASING, failure=(READY,), timeout=lab.manifest["timing"]["node_timeout"] + 10
    )
    assert "timed out" in failed["status_message"]
    state = lab.host(name)
    assert state["disk_image"] == IMAGE and state["running"] == NO_DHCP

    # With the PXE VLAN back, the erase runs: Ready, disk wiped, powered off.
    move_host_untagged(lab.manifest, host, remove=GUEST_VLAN, add=pxe)
    t1 = time.time()
    r = maas.post(f"machines/{sid}/", op="release", data={"erase": "true"})
    assert r.status_code == 200 and r.json()["status"] == DISK_ERASING, r.text[:200]
    ready = maas.wait_status(sid, READY, failure=(FAILED_DISK_ERASING,))
    assert (ready["osystem"], ready["distro_series"]) == ("", "")
    state = lab.host(name)
    assert state["disk_image"] is None and state["power"] == "off"
    assert since(lab, name, t1) == ["ephemeral:erasing", "off"]
    assert ipmi.power(host) == "off"
    configure(switch_of(lab.manifest, "tor-1"), [f"no interface vlan {GUEST_VLAN}"])


# --- 7. the layout wall ---------------------------------------------------------------------------------


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__")
        ):
            names.append(node.args[0].value)
    return names


def test_lab_never_imports_integrations():
    files = sorted((REPO / "lab").rglob("*.py"))
    assert len(files) > 20
    offenders = {
        str(f.relative_to(REPO)): n
        for f in files
        for n in _imports(f)
        if n == "metalflow.integrations" or n.startswith("metalflow.integrations.")
    }
    assert offenders == {}
    # And at run time: loading every lab module pulls in nothing from integrations.
    modules = sorted(
        {"metalflow." + ".".join(f.relative_to(REPO).with_suffix("").parts) for f in files} - {"metalflow.lab.__main__"}
    )
    code = (
        "import importlib, sys\n"
        f"for m in {[m.removesuffix('.__init__') for m in modules]!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.startswith('metalflow.integrations')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
