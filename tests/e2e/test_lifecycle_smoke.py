"""The whole life of one two-NIC host over the REST API, checked on the lab's hardware."""

VM = {
    "name": "smoke-01",
    "uuid": "vm-smoke-0001",
    "image": "ubuntu/jammy",
    "nics": [{"vlan": 100, "default": True}],
    "owner": {"account": "a1", "domain": "d1"},
}


def test_register_provision_destroy(e2e):
    host = "host-008"
    assert e2e.run("register-host", host=host).ok
    run = e2e.run("provision", host=host, vm=VM)
    assert run.ok, run.message
    assert run.name == f"provision {host} → smoke-01"
    hw = e2e.lab.host(host)
    assert hw["power"] == "on" and hw["running"] == "os:ubuntu/jammy"
    assert hw["bootdev"] == "disk" and hw["persistent"]
    assert all(p["untagged"] == 100 and p["tagged"] == [] for p in hw["ports"])
    m = e2e.maas().find_by_mac(hw["ports"][0]["mac"])
    assert m.hostname == "smoke-01" and m.status.name == "DEPLOYED"
    assert any(i.type == "bond" and i.params.get("bond_mode") == "active-backup" for i in m.interfaces)
    assert e2e.run("destroy", host=host).ok
    hw = e2e.lab.host(host)
    assert hw["power"] == "off" and all(p["untagged"] == 10 and p["tagged"] == [] for p in hw["ports"])
    m = e2e.maas().machine(m.system_id)
    assert m.status.name == "READY" and m.hostname.startswith("HOST-")
