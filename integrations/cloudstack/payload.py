"""The payload file CloudStack 4.21/4.22 hands an Orchestrator extension, parsed once.

CloudStack writes ``<dataDir>/<extension>/<uuid>.json`` with Gson and calls
``<exe> <action> <payload.json> <wait_seconds>``. The shape (see
docs/cloudstack.md and the reference notes it cites):

- ``externaldetails``: ``extension``, ``resourcemap``, ``host`` (each left out when empty),
  ``virtualmachine`` (the VM's ``External:*`` details with the prefix stripped, from the
  template, the deploy call and the offering; 4.21 custom actions lack it) and, for custom
  actions, ``action``. ``virtualmachine["cloudstack.vlan"]`` is the default NIC's VLAN, sent
  only with create/start.
- ``virtualmachineid``, ``virtualmachinename`` (the internal ``i-2-100-VM`` name).
- ``cloudstack.vm.details``: Gson of VirtualMachineTO (camelCase, RAM in bytes); NICs only
  for prepare/create/start (``[]`` otherwise); a NIC's ``uuid`` is its *network* and
  ``nicUuid`` the NIC; the VLAN is ``broadcastUri`` (``vlan://100``, ``vlan://untagged``).
- ``caller`` (4.22 only), and for custom actions ``action`` and ``parameters``.

Everything becomes frozen dataclasses here; bad input fails with the field named. Gson's
``\\u003d``-style escapes are plain JSON escapes: we read the file with a JSON parser only.

Values are parsed with the one vocabulary (:mod:`metalflow.integrations.common.values`) and
nothing is stripped: a detail ``"web-01\\n"`` or ``" ubuntu/jammy"`` is refused here, naming its
payload path, rather than becoming another name downstream. A tenant sets VM details, so
every limit (NICs, SSH keys, distinct VLANs) is enforced here, before anything changes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from metalflow.integrations.common import MetalflowError
from metalflow.integrations.common import values as v

T = TypeVar("T")
_VM = "externaldetails.virtualmachine"
_NICS = "cloudstack.vm.details.nics"
#: The VM detail where CloudStack keeps the deploy keypair's public key.
SSH_PUBLIC_KEY = "SSH.PublicKey"


class PayloadError(MetalflowError):
    """The payload (or a value in it) is not what the action needs; ``field`` names it."""

    def __init__(self, message: str, *, field: str = ""):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.message, self.field))


def _rebuild(message: str, field_: str) -> PayloadError:
    err = PayloadError.__new__(PayloadError)
    err.field = field_
    MetalflowError.__init__(err, message)
    return err


def _parse(parse: Callable[[Any, str], T], value: Any, field: str) -> T:
    """``parse(value)`` with its ``BadValue`` as a ``PayloadError`` naming the payload path."""
    try:
        return parse(value, field)
    except v.BadValue as exc:
        raise PayloadError(exc.reason, field=field) from None


@dataclass(frozen=True)
class Nic:
    """One NicTO. ``raw`` is kept as CloudStack sent it: ``prepare`` must echo it unchanged
    except for ``mac``."""

    index: int
    default: bool
    network_uuid: str | None
    nic_uuid: str | None
    mac: str | None
    broadcast_uri: str | None
    raw: Mapping[str, Any] = field(repr=False)

    def vlan(self, fallback: str | None = None) -> int | None:
        """The 802.1Q VLAN of the NIC's network: ``vlan://100`` gives 100; ``vlan://untagged``
        or no URI gives ``fallback`` parsed the same way (``cloudstack.vlan``), else None."""
        for source, where in (
            (self.broadcast_uri, f"{_NICS}[{self.index}].broadcastUri"),
            (fallback, f"{_VM}.cloudstack.vlan"),
        ):
            vlan = parse_vlan(source, where)
            if vlan is not None:
                return vlan
        return None


@dataclass(frozen=True)
class Payload:
    action: str
    vm_uuid: str | None
    vm_internal_name: str | None
    state: str | None
    cpus: int | None
    min_ram_bytes: int | None
    nics: tuple[Nic, ...]
    vm_details: Mapping[str, str]  # cloudstack.vm.details.details (plain and External: keys)
    extension: Mapping[str, Any]
    resourcemap: Mapping[str, Any]
    host: Mapping[str, Any]  # the CloudStack host's External: details, prefix stripped
    virtualmachine: Mapping[str, Any]  # the VM's External: details, prefix stripped
    action_details: Mapping[str, Any]
    caller: Mapping[str, Any] | None
    parameters: Mapping[str, Any]
    template_urls: tuple[str, ...] = ()  # disks[*].data.origUrl/url, when sent (4.22 sends none)

    # --- lookups ----------------------------------------------------------------------------
    def detail(self, *names: str) -> str | None:
        """The first of ``names`` found in the VM's External: details, then in its plain
        details (``External:name`` or ``name``). Empty strings count as absent. The value is
        as CloudStack sent it (nothing stripped): the caller parses it."""
        return self.detail_at(*names)[0]

    def detail_at(self, *names: str) -> tuple[str | None, str]:
        """``detail`` and the payload path it was found at (for the error), or ``(None, path
        of the first name)``."""
        for name in names:
            for source, key, path in (
                (self.virtualmachine, name, f"{_VM}.{name}"),
                (self.vm_details, f"External:{name}", f"cloudstack.vm.details.details.External:{name}"),
                (self.vm_details, name, f"cloudstack.vm.details.details.{name}"),
            ):
                value = source.get(key)
                if value in (None, ""):
                    continue
                if not isinstance(value, str):
                    # CloudStack's details are a Map<String, String>: anything else was not
                    # written by CloudStack, and str(True) must not become an image "True".
                    raise PayloadError(f"expected text, got {type(value).__name__}", field=path)
                return value, path
        return None, f"{_VM}.{names[0]}"

    def require_vm(self) -> str:
        if not self.vm_uuid:
            raise PayloadError("missing: the payload names no VM (virtualmachineid)", field="virtualmachineid")
        return self.vm_uuid

    @property
    def default_nic(self) -> Nic | None:
        return next((n for n in self.nics if n.default), None)

    @property
    def min_memory_mb(self) -> int:
        return -(-(self.min_ram_bytes or 0) // (1024 * 1024))

    # --- what the flows need ---------------------------------------------------------------
    def vm_name(self) -> str:
        """The user-facing name (details ``vm_name`` or ``hostname``, since CloudStack does not
        send it to External hypervisors), else the internal name; lower-cased, a valid
        hostname, because it names the machine in MAAS."""
        given, where = self.detail_at("vm_name", "hostname")
        name = given or self.vm_internal_name
        if not given:
            where = "virtualmachinename"
        if not name:
            raise PayloadError("missing: no VM name in the payload", field="virtualmachinename")
        return _parse(v.parse_vm_name, name, where)

    def image(self) -> str:
        """The MAAS image: template detail ``image`` (``ubuntu/jammy``), or ``os`` plus
        ``distro_series`` as the 4.22 MaaS extension's templates carry them, or a
        ``distro_series`` that is already ``os/series``, or the seed's template URL = MAAS
        image name (only when it is a bare name, not an http URL)."""
        image, field_ = self.detail_at("image")
        if image is None:
            (series, series_at), (osname, os_at) = self.detail_at("distro_series"), self.detail_at("os")
            if series and "/" in series:
                image, field_ = series, series_at
            elif series and osname:
                # Each part on its own, so the error names the detail that is wrong.
                _parse(v.parse_ident, osname, os_at)
                _parse(v.parse_ident, series, series_at)
                image, field_ = f"{osname}/{series}", os_at
            elif series:
                raise PayloadError(
                    f"distro_series {v.show(series)} needs the template detail os (e.g. ubuntu)",
                    field=f"{_VM}.os",
                )
        if image is None:
            image = self.template_url()
            field_ = "template url"
        if image is None:
            raise PayloadError(
                "missing: register the template with externaldetails[0].image=ubuntu/jammy (or os and distro_series)",
                field="externaldetails.virtualmachine.image",
            )
        return _parse(v.parse_image, image, field_)

    def template_url(self) -> str | None:
        """The seed's convention (template URL = MAAS image name), if CloudStack sent a
        template with the VM's disks: a bare name only; an http URL is a dummy."""
        for url in self.template_urls:
            try:
                return v.parse_image(url, "template url")
            except v.BadValue:
                continue  # an http URL (a dummy) or anything else that names no MAAS image
        return None

    def erase_mode(self, default: str) -> str:
        """The disk erase on release: the custom action's parameter ``erase``, else the VM's
        detail ``erase`` (from the template, offering or deploy call), else ``default``."""
        given: Any = self.parameters.get("erase")
        field_ = "parameters.erase"
        if given in (None, ""):
            given, field_ = self.detail_at("erase", "erase_mode")
        if given is None:
            given, field_ = default, "erase_default (setting)"
        if isinstance(given, str) and given.isascii():
            # Operators wrote "Secure" in templates before; an ASCII-only case fold changes
            # nothing else (str.lower maps some non-ASCII letters, the Kelvin sign, to ASCII).
            given = given.lower()
        return _parse(v.parse_erase_mode, given, field_).value

    def owner(self) -> dict[str, str]:
        """Ownership tags: the details ``account_id``/``domain_id``/``project_id`` where given,
        else the VM's uuid (``vm``). Never the 4.22 ``caller``: that is whoever made the API
        call (an admin deploying for a user, the system account), not the VM's owner, and the
        owner's account is not in the payload (reference notes, section 7)."""
        out = {
            "account": self.detail("account_id", "accountid") or "",
            "domain": self.detail("domain_id", "domainid") or "",
            "project": self.detail("project_id", "projectid") or "",
        }
        given = {k: v for k, v in out.items() if v}
        return given or {"vm": self.require_vm()}

    def architecture(self) -> str | None:
        """The MAAS architecture the template (or the VM's details) asks for, ``amd64/generic``
        (the detail ``architecture``, as the 4.22 MaaS extension's templates carry it)."""
        arch, where = self.detail_at("architecture")
        return None if arch is None else _parse(v.parse_architecture, arch, where)

    def flow_nics(self, *, pending_ok: bool = False) -> list[dict[str, Any]]:
        """``[{vlan, default}]`` for provision: the default NIC is the guest VLAN (untagged on
        the ports), the others are tagged. Every NIC needs a VLAN (create/start); with
        ``pending_ok`` (prepare, which CloudStack may call before it implements a new network)
        a NIC without one has ``vlan`` None."""
        if not self.nics:
            raise PayloadError(
                "missing: the VM has no NIC (CloudStack sends NICs only with prepare, create and start)",
                field=_NICS,
            )
        if sum(1 for n in self.nics if n.default) != 1:
            raise PayloadError("exactly one NIC must be the default (defaultNic)", field=_NICS)
        fallback = self.virtualmachine.get("cloudstack.vlan")
        out: list[dict[str, Any]] = []
        seen: dict[int, int] = {}
        for nic in self.nics:
            vlan = nic.vlan(str(fallback) if nic.default and fallback not in (None, "") else None)
            if vlan is None and pending_ok and not nic.broadcast_uri:
                out.append({"vlan": None, "default": nic.default})
                continue
            if vlan is None:
                raise PayloadError(
                    f"the NIC on network {nic.network_uuid or '?'} has no VLAN "
                    f"({nic.broadcast_uri or 'no broadcastUri'}); "
                    "metalflow puts each network on the ToR ports as an 802.1Q VLAN: use a network with "
                    "broadcastUri vlan://<id>",
                    field=f"{_NICS}[{nic.index}].broadcastUri",
                )
            if vlan in seen:
                raise PayloadError(
                    f"VLAN {vlan} is also nics[{seen[vlan]}]'s: each NIC of a VM needs a network "
                    "of its own VLAN (the ToR ports carry each VLAN once)",
                    field=f"{_NICS}[{nic.index}].broadcastUri",
                )
            seen[vlan] = nic.index
            out.append({"vlan": vlan, "default": nic.default})
        return out

    def ssh_keys(self) -> list[str]:
        """The detail ``ssh_keys`` (or ``ssh_key``): one ``authorized_keys`` line per line,
        each parsed as a key (no options, no blank lines, no trailing newline), then the VM's
        deploy keypair as CloudStack stores it (the plain detail ``SSH.PublicKey``), at most
        ``MAX_SSH_KEYS`` different keys in all."""
        keys, where = self.detail_at("ssh_keys", "ssh_key")
        lines = [] if keys is None else keys.split("\n")
        if len(lines) > v.MAX_SSH_KEYS:
            raise PayloadError(f"{len(lines)} lines: at most {v.MAX_SSH_KEYS} SSH keys, one per line", field=where)
        out = [_parse(v.parse_ssh_key, line, f"{where}[{i}]") for i, line in enumerate(lines)]
        keypair = self.vm_details.get(SSH_PUBLIC_KEY)
        if keypair:
            key = _parse(v.parse_ssh_key, keypair, f"cloudstack.vm.details.details.{SSH_PUBLIC_KEY}")
            if key not in out:
                out.append(key)
        if len(out) > v.MAX_SSH_KEYS:
            raise PayloadError(f"{len(out)} keys with the VM's keypair: at most {v.MAX_SSH_KEYS}", field=where)
        return out

    def root_password_ref(self) -> str | None:
        """The detail ``root_password_ref`` parsed as a reference (``block:NAME``, ``env:NAME``);
        the error never contains the value, which may be a password pasted by mistake."""
        ref, where = self.detail_at("root_password_ref")
        return None if ref is None else str(_parse(v.parse_secret_ref, ref, where))

    def flag(self, name: str, default: bool) -> bool:
        value, where = self.detail_at(name)
        return default if value is None else _parse(v.parse_flag, value, where)


def parse_vlan(value: Any, field: str) -> int | None:
    """``vlan://100``, ``100`` or 100 → 100; ``vlan://untagged``, empty or None → None; any other
    scheme (vxlan://, lswitch://) is an error: the ToR switches only speak 802.1Q. The id itself
    is :func:`values.parse_vlan`'s (2-4094, ASCII digits, the whole string): ``vlan://1``,
    ``vlan://١٠٠`` and ``"100\\n"`` are refused."""
    if value is None or value == "":
        return None
    if isinstance(value, float) and value.is_integer():
        # A custom-action parameter registered as NUMBER with DECIMAL validation arrives as a
        # float (200.0; reference notes, section 7); a fraction is still refused.
        value = int(value)
    if isinstance(value, str):
        scheme, sep, rest = value.partition("://")
        if sep:
            if scheme.lower() != "vlan":  # URI schemes are case-insensitive (RFC 3986)
                raise PayloadError(f"{v.show(value)} is not a VLAN network: only vlan://<id> is supported", field=field)
            value = rest
        if value == "untagged":
            return None
    return _parse(v.parse_vlan, value, field)


# ---------------------------------------------------------------------------- parsing


def _mapping(value: Any, field: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PayloadError(f"expected an object, got {type(value).__name__}", field=field)
    return value


def _int(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise PayloadError(f"{value!r} is not a non-negative number", field=field)
    return int(value)


def _str(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise PayloadError(f"expected a string, got {type(value).__name__}", field=field)
    return str(value)


def parse_payload(doc: Any, action: str) -> Payload:
    if not isinstance(doc, Mapping):
        raise PayloadError(f"expected a JSON object, got {type(doc).__name__}", field="$")
    ext = _mapping(doc.get("externaldetails"), "externaldetails")
    vm = _mapping(doc.get("cloudstack.vm.details"), "cloudstack.vm.details")
    nics_raw = vm.get("nics")
    if nics_raw is None:
        nics_raw = []
    elif not isinstance(nics_raw, list):
        raise PayloadError("expected a list", field="cloudstack.vm.details.nics")
    if len(nics_raw) > v.MAX_NICS:
        raise PayloadError(
            f"{len(nics_raw)} NICs: a VM may have at most {v.MAX_NICS} (one network per VLAN on the "
            "host's cabled ports); remove networks from the VM",
            field="cloudstack.vm.details.nics",
        )
    nics = []
    for i, n in enumerate(nics_raw):
        path = f"cloudstack.vm.details.nics[{i}]"
        n = _mapping(n, path)
        nics.append(
            Nic(
                index=i,
                default=n.get("defaultNic") is True,
                network_uuid=_str(n.get("uuid"), f"{path}.uuid"),
                nic_uuid=_str(n.get("nicUuid"), f"{path}.nicUuid"),
                mac=_str(n.get("mac"), f"{path}.mac"),
                broadcast_uri=_str(n.get("broadcastUri"), f"{path}.broadcastUri"),
                raw=dict(n),
            )
        )
    details = _mapping(vm.get("details"), "cloudstack.vm.details.details")
    caller = doc.get("caller")
    vm_uuid = _str(doc.get("virtualmachineid"), "virtualmachineid") or _str(
        vm.get("uuid"), "cloudstack.vm.details.uuid"
    )
    if vm_uuid is not None:
        _parse(lambda value, where: v.parse_ident(value, where, "a VM uuid"), vm_uuid, "virtualmachineid")
    return Payload(
        action=action,
        vm_uuid=vm_uuid,
        vm_internal_name=_str(doc.get("virtualmachinename"), "virtualmachinename")
        or _str(vm.get("name"), "cloudstack.vm.details.name"),
        state=_str(vm.get("state"), "cloudstack.vm.details.state"),
        cpus=_int(vm.get("cpus"), "cloudstack.vm.details.cpus"),
        min_ram_bytes=_int(vm.get("minRam"), "cloudstack.vm.details.minRam"),
        nics=tuple(nics),
        vm_details={str(k): str(v) for k, v in details.items() if v is not None},
        extension=_mapping(ext.get("extension"), "externaldetails.extension"),
        resourcemap=_mapping(ext.get("resourcemap"), "externaldetails.resourcemap"),
        host=_mapping(ext.get("host"), "externaldetails.host"),
        virtualmachine=_mapping(ext.get("virtualmachine"), "externaldetails.virtualmachine"),
        action_details=_mapping(ext.get("action"), "externaldetails.action"),
        caller=_mapping(caller, "caller") if caller is not None else None,
        parameters=_mapping(doc.get("parameters"), "parameters"),
        template_urls=_template_urls(vm.get("disks")),
    )


def _template_urls(disks: Any) -> tuple[str, ...]:
    out = []
    for disk in disks if isinstance(disks, list) else []:
        data = disk.get("data") if isinstance(disk, Mapping) else None
        if isinstance(data, Mapping):
            for key in ("origUrl", "url"):
                if isinstance(data.get(key), str) and data[key]:
                    out.append(data[key])
    return tuple(out)


def load_payload(path: str | Path, action: str) -> Payload:
    """Read and parse the payload file. The error names only the position of bad JSON: the
    file holds secrets (host API keys, the VNC password)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise PayloadError(
            f"cannot read the payload file {str(path)!r}: {exc.strerror or exc}", field="payload"
        ) from None
    except UnicodeDecodeError:
        raise PayloadError(f"the payload file {str(path)!r} is not UTF-8 text", field="payload") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PayloadError(
            f"the payload file {str(path)!r} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            field="payload",
        ) from None
    return parse_payload(doc, action)
