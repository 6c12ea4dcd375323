"""A small stand-in for what a CloudStack 4.21/4.22 management server does with ONE Orchestrator
extension: which action it runs, when, with which payload and wait, and what it makes of the
answer. Written from the project's reference notes on CloudStack's Java sources
(/work/shared/reference/cloudstack-extension.md, sections 1 to 7), never from our own client.

State lives in ``<state_dir>/state.json`` (written atomically after every change, under an
exclusive ``flock`` on ``<state_dir>/lock`` for every operation that changes it), every call is
appended to ``<state_dir>/calls.jsonl``, payload files go to ``<state_dir>/extensions/<name>/``.

What CloudStack does and this class does too, in short:

- deploy: VM created Stopped with ``deployvm=true`` (template externaldetails copied in as
  ``External:`` details), then up to ``start_retry`` tries, each on a host from the planner
  (a pinned host, else a random Up host, the avoid list ignored): ``prepare`` (if the extension
  requires it; its stdout merged into the VM TO and only vncPassword, the details map and each
  NIC's mac/ip/ip6 persisted), networks implemented, ``create``; a cleanup ``stop`` (state
  Starting, NICs in it) after every failed try; Error after the last one.
- start: the same loop with ``start`` (no prepare), the NICs as they are now; Stopped after the
  last failed try.
- expunge: ``delete`` only for a VM that has a host or a last host; a VM that never started is
  expunged without any call.
- NIC hot-plug on a running VM: the unrouted agent command is sent (action = Java class name,
  payload ``{"action": ...}``, wait 5) and the operation fails whatever the script answers.
- custom actions: wait = the action's timeout or 3 s; typed parameters; the UI's rule for
  showing ``message``.
- ping: ``status`` per VM per host, sequentially; PowerOff of a Running VM is an out-of-band
  stop (``stop`` called), PowerOn of a Stopped VM marks it Running.

What it does not do (CloudStack does): run anything concurrently. Operations are serialised by
the state lock, so a ``status`` never runs alongside a ``create`` here.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import random
import secrets
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from metalflow.lab.cloudstack import process
from metalflow.lab.cloudstack.merge import merge_patch
from metalflow.lab.cloudstack.model import (
    ACTION_NAME,
    DESTROYED,
    ERROR,
    EXPUNGING,
    EXTERNAL,
    PARAMETER_TYPES,
    POWER_OFF,
    POWER_ON,
    POWER_UNKNOWN,
    RUNNING,
    STARTING,
    STOPPED,
    STOPPING,
    SYSTEM_CALLER,
    VERSIONS,
    VM,
    Config,
    CustomAction,
    Host,
    Network,
    Nic,
    Parameter,
    State,
    Template,
)
from metalflow.lab.cloudstack.process import Call

PLUG_NIC = "com.cloud.agent.api.PlugNicCommand"
UNPLUG_NIC = "com.cloud.agent.api.UnplugNicCommand"
UNROUTED_WAIT = 5  # seconds, for an agent command ExternalResource does not route
CUSTOM_ACTION_WAIT = 3  # seconds, when the action has no timeout (EMI addCustomAction)
WITH_NICS = ("prepare", "create", "start")  # and the cleanup stop after a failed try
DEPLOY_DETAIL = "deployvm"
SSH_KEY_DETAIL = "SSH.PublicKey"
EXPUNGE_DETAIL = "expunge.external.vm"
PREPARE_PARSE_ERROR = "Failed to parse VM"


class InputError(ValueError):
    """The request itself is wrong (an unknown VM, network or action, a bad value): CloudStack's
    API would refuse it before anything runs."""


@dataclass
class Result:
    """What one operation did.

    ``state`` is the VM's state afterwards (None once it is expunged); ``error`` what CloudStack
    would report when ``success`` is False; ``calls`` every run of the executable, in order.
    Custom actions also fill ``details`` (the answer's text: stdout on success, the wrapped
    failure otherwise) and ``ui_message`` (what the UI shows; None for nothing)."""

    success: bool
    vm: str | None
    state: str | None
    error: str | None = None
    calls: list[Call] = field(default_factory=list)
    details: str | None = None
    ui_message: Any = None


def ui_message(success: bool, text: str) -> Any:
    """What ``RunCustomAction.vue`` shows: ``message`` when the output is a JSON object whose
    ``printmessage`` is the STRING "true" and whose ``message`` is an array or object."""
    if not success:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("printmessage") != "true":
        return None
    message = doc.get("message")
    return message if isinstance(message, list | dict) else None


def power_state(call: Call) -> str:
    """EPP ``parsePowerStateFromResponse``: ``{"power_state": X}`` or a bare string, compared
    case-insensitively with PowerOn/PowerOff; anything else (or a failed call) is PowerUnknown."""
    if not call.success or not call.text.strip():
        return POWER_UNKNOWN
    value: Any = call.text
    if call.text.strip().startswith("{"):
        try:
            value = json.loads(call.text).get("power_state")
        except (ValueError, AttributeError):
            return POWER_UNKNOWN
    if isinstance(value, bool | int | float):  # getAsString on a JSON primitive
        value = json.dumps(value)
    if not isinstance(value, str):
        return POWER_UNKNOWN
    for known in (POWER_ON, POWER_OFF):
        if value.lower() == known.lower():
            return known
    return POWER_UNKNOWN


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _detail_string(value: Any) -> str:
    """A detail value as Gson reads it into a ``Map<String, String>``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | Decimal):
        return str(value)
    raise TypeError(f"not a string: {value!r}")


def typed_parameter(param: Parameter, raw: Any) -> Any:
    """A parameter value as ``ExtensionCustomAction.Parameter`` validates and types it."""
    text = str(raw).strip() if not isinstance(raw, bool) else ("true" if raw else "false")
    if param.type == "STRING":
        return str(raw)
    if param.type == "BOOLEAN":
        if text.lower() not in ("true", "false"):
            raise InputError(f"parameter {param.name}: not a boolean: {raw!r}")
        return text.lower() == "true"
    if param.type == "NUMBER":
        try:
            number = Decimal(text)
        except ArithmeticError:
            raise InputError(f"parameter {param.name}: not a number: {raw!r}") from None
        if not number.is_finite():
            raise InputError(f"parameter {param.name}: not a number: {raw!r}")
        if (param.validation or "").upper() == "DECIMAL":
            return float(number)
        if number != number.to_integral_value():
            raise InputError(f"parameter {param.name}: not a whole number: {raw!r}")
        return int(number)
    if param.type == "DATE":
        return _gson_date(param.name, text)
    raise InputError(f"parameter {param.name}: unknown type {param.type}")


def _gson_date(name: str, text: str) -> str:
    """A date parameter as Gson writes a ``java.util.Date`` with its default (US, Java 17) style."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"parameter {name}: not a date (YYYY-MM-DD[THH:MM:SS]): {text!r}") from None
    hour = when.hour % 12 or 12
    return f"{when:%b} {when.day}, {when.year}, {hour}:{when:%M:%S} {'AM' if when.hour < 12 else 'PM'}"


class CloudStack:
    """The management server, for one extension. ``CloudStack(state_dir)`` opens an existing lab;
    ``CloudStack(state_dir, config)`` creates one (``reset=True`` to replace an existing one).

    Every operation takes a VM by display name, uuid or internal name and returns a ``Result``;
    ``progress`` (optional) is told what runs next, e.g. ``"create web-1 (try 2/10)"``."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        config: Config | None = None,
        *,
        reset: bool = False,
        progress: Callable[[str], None] | None = None,
    ):
        self.state_dir = Path(state_dir)
        self.state_path = self.state_dir / "state.json"
        self.calls_path = self.state_dir / "calls.jsonl"
        self.lock_path = self.state_dir / "lock"
        self.progress = progress
        self._state: State | None = None
        if config is not None:
            if config.version not in VERSIONS:
                raise InputError(f"version must be one of {', '.join(VERSIONS)}, not {config.version!r}")
            if config.start_retry < 1:
                raise InputError("start_retry must be at least 1")
            if config.wait < 1:
                raise InputError("wait must be at least 1 second")
            self.state_dir.mkdir(parents=True, exist_ok=True)
            with self._locked(load=False):
                if self.state_path.exists() and not reset:
                    raise InputError(f"a CloudStack lab already exists in {self.state_dir} (reset it to start over)")
                self._state = State(config=config, next_vlan=config.vlan_on_implement)
                self.calls_path.unlink(missing_ok=True)
                self._save()
        elif not self.state_path.exists():
            raise InputError(f"no CloudStack lab in {self.state_dir} (create one first)")

    # --- state --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, load: bool = True) -> Iterator[State]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if load:
                    self._state = self._read()
                yield self._state  # type: ignore[misc]
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> State:
        try:
            return State.from_dict(json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            raise InputError(f"no CloudStack lab in {self.state_dir} (create one first)") from None

    @property
    def state(self) -> State:
        """A fresh read of the state file (no lock: it is always replaced whole)."""
        return self._read()

    @property
    def config(self) -> Config:
        return self.state.config

    def _save(self) -> None:
        assert self._state is not None
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=".state.", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self._state.to_dict(), f, indent=1)
                f.write("\n")
            os.replace(tmp, self.state_path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    @property
    def _s(self) -> State:
        assert self._state is not None
        return self._state

    # --- the lab's inventory ----------------------------------------------------------------

    def add_host(self, name: str, details: dict[str, str] | None = None) -> Host:
        """A host of the extension's cluster (``addHost ... externaldetails``), Up."""
        with self._locked() as s:
            if any(h.name == name for h in s.hosts):
                raise InputError(f"host {name} exists already")
            host = Host(id=s.next_host_id, name=name, uuid=str(uuid.uuid4()), details=dict(details or {}))
            s.next_host_id += 1
            s.hosts.append(host)
            self._save()
            return host

    def set_host_state(self, name: str, state: str) -> None:
        """E.g. ``Disconnected``: the planner and ping skip a host that is not Up."""
        with self._locked():
            self._host_named(name).state = state
            self._save()

    def add_network(self, name: str, vlan: int | None, cidr: str | None = None) -> Network:
        """A guest network; ``vlan=None``: not implemented yet (it gets a VLAN before its first
        create/start, after prepare)."""
        with self._locked() as s:
            if any(n.name == name for n in s.networks):
                raise InputError(f"network {name} exists already")
            if cidr is None:
                cidr = f"10.1.{len(s.networks) + 1}.0/24"
            try:
                net = ipaddress.ip_network(cidr)
            except ValueError as exc:
                raise InputError(f"network {name}: {exc}") from None
            network = Network(
                id=s.next_network_id,
                name=name,
                uuid=str(uuid.uuid4()),
                vlan=vlan,
                cidr=str(net),
                gateway=str(next(net.hosts())),
            )
            s.next_network_id += 1
            s.networks.append(network)
            self._save()
            return network

    def add_template(self, name: str, details: dict[str, str] | None = None) -> Template:
        """A template registered for the extension, with its externaldetails."""
        with self._locked() as s:
            if any(t.name == name for t in s.templates):
                raise InputError(f"template {name} exists already")
            template = Template(name=name, details=dict(details or {}))
            s.templates.append(template)
            self._save()
            return template

    def add_action(
        self,
        name: str,
        parameters: list[Parameter] | None = None,
        timeout: int | None = None,
        details: dict[str, str] | None = None,
    ) -> CustomAction:
        """``addCustomAction``: the name must match ``^[a-zA-Z0-9 _-]+$``."""
        if not ACTION_NAME.match(name):
            raise InputError(f"custom action name {name!r} must match {ACTION_NAME.pattern}")
        params = list(parameters or [])
        for p in params:
            p.type = p.type.upper()
            if p.type not in PARAMETER_TYPES:
                raise InputError(f"parameter {p.name}: type must be one of {', '.join(PARAMETER_TYPES)}")
        if timeout is not None and timeout < 1:
            raise InputError("a custom action's timeout is at least 1 second")
        with self._locked() as s:
            if any(a.name == name for a in s.actions):
                raise InputError(f"custom action {name} exists already")
            action = CustomAction(name=name, parameters=params, timeout=timeout, details=dict(details or {}))
            s.actions.append(action)
            self._save()
            return action

    def hosts(self) -> list[Host]:
        return self.state.hosts

    def networks(self) -> list[Network]:
        return self.state.networks

    def templates(self) -> list[Template]:
        return self.state.templates

    def actions(self) -> list[CustomAction]:
        return self.state.actions

    # --- lookups ------------------------------------------------------------------------------

    def vms(self) -> list[VM]:
        return self.state.vms

    def vm(self, ref: str) -> VM:
        return _find_vm(self.state, ref)

    def _vm(self, ref: str) -> VM:
        return _find_vm(self._s, ref)

    def _host_named(self, name: str) -> Host:
        for h in self._s.hosts:
            if h.name == name or h.uuid == name:
                return h
        raise InputError(f"no host {name}")

    def _host(self, host_id: int | None) -> Host | None:
        return next((h for h in self._s.hosts if h.id == host_id), None)

    def _network(self, ref: str) -> Network:
        for n in self._s.networks:
            if ref in (n.name, n.uuid):
                return n
        raise InputError(f"no network {ref}")

    def host_name(self, host_id: int | None) -> str | None:
        host = next((h for h in self.state.hosts if h.id == host_id), None)
        return host.name if host else None

    def calls(self, vm: str | None = None) -> list[Call]:
        """Every call made, oldest first; only those about ``vm`` (name or uuid) when given."""
        wanted: set[str] | None = None
        if vm is not None:
            state = self.state
            try:
                wanted = {_find_vm(state, vm).uuid}
            except InputError:
                wanted = {e["uuid"] for e in state.expunged if vm in (e["uuid"], e["name"])}
                if not wanted:
                    raise
        out = []
        try:
            lines = self.calls_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                call = Call.from_dict(json.loads(line))
            except (ValueError, TypeError):
                continue  # a line being written right now
            if wanted is None or call.vm in wanted:
                out.append(call)
        return out

    # --- running the executable ------------------------------------------------------------------

    def _tell(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    def _run(
        self,
        action: str,
        payload: dict[str, Any],
        *,
        wait: int,
        vm: VM | None,
        host: Host | None,
        try_number: int | None = None,
        note: str | None = None,
    ) -> Call:
        cfg = self._s.config
        label = f"{action} {vm.display_name}" if vm else action
        if try_number is not None:
            label += f" (try {try_number}/{cfg.start_retry})"
        if note:
            label += f" [{note}]"
        self._tell(label)
        call = process.run(
            cfg.extension.path,
            action,
            payload,
            wait=wait,
            global_wait=cfg.wait,
            data_dir=Path(cfg.data_dir) if cfg.data_dir else self.state_dir / "extensions",
            extension_name=cfg.extension.name,
            env=cfg.extension.env,
            workdir=cfg.extension.workdir or self.state_dir,
        )
        call.vm = vm.uuid if vm else None
        call.vm_name = vm.display_name if vm else None
        call.host = host.name if host else None
        call.try_number = try_number
        call.note = note
        fd = os.open(self.calls_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as log:
            log.write(json.dumps(call.to_dict()) + "\n")
        return call

    # --- payloads --------------------------------------------------------------------------------

    def _nic_to(self, nic: Nic) -> dict[str, Any]:
        network = self._network(nic.network)
        net = ipaddress.ip_network(network.cidr)
        to: dict[str, Any] = {
            "deviceId": nic.device_id,
            "defaultNic": nic.default,
            "uuid": network.uuid,  # NicTO.uuid is the NETWORK's uuid
            "nicUuid": nic.nic_uuid,
            "mac": nic.mac,
            "ip": nic.ip,
            "netmask": str(net.netmask),
            "gateway": network.gateway,
            "ip6Address": nic.ip6,
            "broadcastType": "Vlan",
            "type": "Guest",
            "broadcastUri": f"vlan://{network.vlan}" if network.vlan is not None else None,
            "networkId": network.id,
            "mtu": network.mtu,
            "pxeDisable": False,
        }
        return {k: v for k, v in to.items() if v is not None}

    def _vm_to(
        self, vm: VM, *, state: str | None = None, nics: bool = False, extra: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """``VirtualMachineTO`` as Gson writes it (camelCase, RAM in bytes, nulls left out)."""
        details = dict(vm.details)
        details.update(extra or {})
        return {
            "id": vm.id,
            "name": vm.name,
            "uuid": vm.uuid,
            "bootloader": "External",
            "type": "User",
            "state": state or vm.state,
            "cpus": vm.cpus,
            "minSpeed": vm.speed,
            "maxSpeed": vm.speed,
            "minRam": vm.ram,
            "maxRam": vm.ram,
            "arch": "x86_64",
            "vncPassword": vm.vnc_password,
            "details": details,
            "nics": [self._nic_to(n) for n in sorted(vm.nics, key=lambda n: n.device_id)] if nics else [],
            "disks": [],
            "enableDynamicallyScaleVm": False,
        }

    def _vlan_of_default_nic(self, vm: VM) -> str | None:
        default = next((n for n in vm.nics if n.default), None)
        if default is None:
            return None
        vlan = self._network(default.network).vlan
        return None if vlan is None else str(vlan)

    def _payload(
        self,
        vm: VM,
        *,
        host: Host | None,
        state: str | None = None,
        nics: bool = False,
        vlan: bool = False,
        caller: dict[str, str] | None = None,
        custom: CustomAction | None = None,
        parameters: dict[str, Any] | None = None,
        extra_details: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        cfg = self._s.config
        ext: dict[str, Any] = {}
        if cfg.extension.details:
            ext["extension"] = dict(cfg.extension.details)
        if cfg.resourcemap:
            ext["resourcemap"] = dict(cfg.resourcemap)
        if host is not None and host.details:
            ext["host"] = dict(host.details)
        if not (custom is not None and cfg.version == "4.21"):
            vm_ext = vm.external_details
            if vlan:
                default_vlan = self._vlan_of_default_nic(vm)
                if default_vlan is not None:
                    vm_ext["cloudstack.vlan"] = default_vlan
            ext["virtualmachine"] = vm_ext
        if custom is not None:
            ext["action"] = dict(custom.details)
        doc: dict[str, Any] = {}
        if ext:
            doc["externaldetails"] = ext
        doc["virtualmachineid"] = vm.uuid
        doc["virtualmachinename"] = vm.name
        if cfg.version == "4.22" and caller is not None:
            doc["caller"] = dict(caller)
        doc["cloudstack.vm.details"] = self._vm_to(vm, state=state, nics=nics, extra=extra_details)
        if custom is not None:
            doc["action"] = custom.name
            if parameters:
                doc["parameters"] = parameters
        return doc

    # --- helpers for VMs ---------------------------------------------------------------------------

    def _allocate_ip(self, network: Network) -> str:
        used = {n.ip for v in self._s.vms for n in v.nics if n.network == network.uuid}
        used.add(network.gateway)
        net = ipaddress.ip_network(network.cidr)
        for i, address in enumerate(net.hosts()):
            if i >= 9 and str(address) not in used:  # .10 and up
                return str(address)
        raise InputError(f"network {network.name} has no free address")

    def _new_nic(self, network: Network, device_id: int, default: bool) -> Nic:
        n = self._s.next_mac
        self._s.next_mac += 1
        mac = "02:00:" + ":".join(f"{(n >> shift) & 0xFF:02x}" for shift in (24, 16, 8, 0))
        return Nic(
            device_id=device_id,
            default=default,
            network=network.uuid,
            nic_uuid=str(uuid.uuid4()),
            mac=mac,
            ip=self._allocate_ip(network),
        )

    def _pick_host(self, pinned: Host | None) -> Host | None:
        """``ExternalServerPlanner``: a random Up host of the cluster, avoid list ignored."""
        if pinned is not None:
            return pinned if pinned.state == "Up" else None
        up = sorted((h for h in self._s.hosts if h.state == "Up"), key=lambda h: h.id)
        if not up:
            return None
        rng = random.Random(f"{self._s.config.planner_seed}:{self._s.planner_picks}")
        self._s.planner_picks += 1
        return rng.choice(up)

    def break_network(self, name: str, error: str | None) -> None:
        """A fault: implementing ``name`` fails with ``error`` (None: it works again)."""
        with self._locked():
            self._network(name).implement_error = error
            self._save()

    def _implement_networks(self, vm: VM) -> str | None:
        """Give networks not implemented yet their VLAN; the error text of a broken one."""
        for nic in vm.nics:
            network = self._network(nic.network)
            if network.implement_error:
                return f"Unable to implement network {network.name}: {network.implement_error}"
        for nic in vm.nics:
            network = self._network(nic.network)
            if network.vlan is None:
                if self._s.next_vlan is None:
                    self._s.next_vlan = self._s.config.vlan_on_implement
                network.vlan = self._s.next_vlan
                self._s.next_vlan += 1
        self._save()
        return None

    def _apply_prepare(self, vm: VM, sent: dict[str, Any], answer: str) -> bool:
        """Merge the prepare answer into the TO that was sent and persist what VMMI persists:
        vncPassword, the whole details map, and per NIC (matched by nicUuid) mac, ip, ip6.
        False: the answer does not read back as a VirtualMachineTO ("Failed to parse VM")."""
        try:
            patch = json.loads(answer, parse_float=Decimal)
        except ValueError:
            return False
        merged = merge_patch(sent, patch)
        if not isinstance(merged, dict):
            return False
        details = merged.get("details")
        nics = merged.get("nics")
        password = merged.get("vncPassword")
        try:
            if details is not None and not isinstance(details, dict):
                return False
            new_details = (
                {str(k): _detail_string(v) for k, v in details.items() if v is not None}
                if details is not None
                else None
            )
            if nics is not None and not (isinstance(nics, list) and all(isinstance(n, dict) for n in nics)):
                return False
            if password is not None:
                password = _detail_string(password)
            nic_updates = []
            for n in nics or []:
                update = {}
                for key, attr in (("mac", "mac"), ("ip", "ip"), ("ip6Address", "ip6"), ("ip6address", "ip6")):
                    if n.get(key) is not None:
                        update[attr] = _detail_string(n[key])
                nic_updates.append((n.get("nicUuid"), update))
        except TypeError:
            return False
        if password is not None:
            vm.vnc_password = password
        if new_details is not None:
            vm.details = new_details
        for nic_uuid, update in nic_updates:
            for nic in vm.nics:
                if nic.nic_uuid == nic_uuid:
                    for attr, value in update.items():
                        setattr(nic, attr, value)
        self._save()
        return True

    # --- operations --------------------------------------------------------------------------------

    def deploy(
        self,
        name: str,
        template: str,
        networks: list[str],
        *,
        cpus: int = 2,
        ram_mb: int = 2048,
        details: dict[str, str] | None = None,
        plain_details: dict[str, str] | None = None,
        ssh_public_key: str | None = None,
        host: str | None = None,
        start: bool = True,
        wait: int | None = None,
    ) -> Result:
        """``deployVirtualMachine``: ``details`` are its externaldetails (stored as ``External:``
        details, over the template's), ``plain_details`` plain VM details; ``host`` pins the
        planner; ``wait`` overrides the global wait for the create call; ``start=False`` is
        ``startvm=false`` (the VM stays Stopped, never started)."""
        with self._locked() as s:
            if not networks:
                raise InputError("a VM needs at least one network")
            if cpus < 1 or ram_mb < 1:
                raise InputError("cpus and ram must be positive")
            if any(v.display_name == name for v in s.vms):
                raise InputError(f"a VM named {name} exists already")
            tpl = next((t for t in s.templates if t.name == template), None)
            if tpl is None:
                raise InputError(f"no template {template}")
            nets = [self._network(n) for n in networks]
            if len({n.uuid for n in nets}) != len(nets):
                raise InputError("a network is given twice")
            pinned = self._host_named(host) if host else None
            vm_details = {f"{EXTERNAL}{k}": v for k, v in tpl.details.items()}
            vm_details.update({f"{EXTERNAL}{k}": v for k, v in (details or {}).items()})
            vm_details.update(plain_details or {})
            if ssh_public_key:
                vm_details[SSH_KEY_DETAIL] = ssh_public_key
            vm_details[DEPLOY_DETAIL] = "true"
            vm = VM(
                id=s.next_vm_id,
                uuid=str(uuid.uuid4()),
                name=f"i-2-{s.next_vm_id}-VM",
                display_name=name,
                state=STOPPED,
                template=tpl.name,
                cpus=cpus,
                ram=ram_mb * 1024 * 1024,
                speed=1000,
                vnc_password=secrets.token_urlsafe(12),
                details=vm_details,
                created_at=_now(),
            )
            s.next_vm_id += 1
            s.vms.append(vm)
            for i, net in enumerate(nets):
                vm.nics.append(self._new_nic(net, i, i == 0))
            self._save()
            if not start:
                return Result(True, vm.uuid, vm.state)
            return self._start_loop(vm, pinned=pinned, wait=wait, failed_state=ERROR)

    def start(self, vm: str, *, host: str | None = None, wait: int | None = None) -> Result:
        """``startVirtualMachine`` of a Stopped VM: ``start`` on its last host (or the planner's),
        or ``prepare`` + ``create`` if it never started."""
        with self._locked():
            record = self._vm(vm)
            if record.state != STOPPED:
                return Result(
                    False, record.uuid, record.state, f"VM {record.display_name} is {record.state}, not Stopped"
                )
            pinned = self._host_named(host) if host else None
            return self._start_loop(record, pinned=pinned, wait=wait, failed_state=STOPPED)

    def _start_loop(self, vm: VM, *, pinned: Host | None, wait: int | None, failed_state: str) -> Result:
        cfg = self._s.config
        deploying = vm.details.get(DEPLOY_DETAIL) == "true"
        action = "create" if deploying else "start"
        calls: list[Call] = []
        vm.state = STARTING
        self._save()
        error = "no try was made"
        tries = 0
        for attempt in range(1, cfg.start_retry + 1):
            if pinned is not None:
                host = self._pick_host(pinned)
            else:
                last = None if deploying else self._host(vm.last_host_id)
                host = last if last is not None and last.state == "Up" else self._pick_host(None)
            if host is None:
                error = "Insufficient capacity: no Up host in the extension's cluster"
                break
            tries = attempt
            vm.host_id = host.id
            self._save()
            ok = True
            if deploying and cfg.extension.requires_prepare:
                payload = self._payload(vm, host=host, state=STARTING, nics=True, caller=cfg.caller)
                call = self._run("prepare", payload, wait=0, vm=vm, host=host, try_number=attempt)
                calls.append(call)
                if not call.success:
                    ok, error = False, f"prepare failed: {call.text}"
                elif call.text and not self._apply_prepare(vm, payload["cloudstack.vm.details"], call.text):
                    ok, error = False, f"prepare failed: {PREPARE_PARSE_ERROR}"
            if ok:
                broken = self._implement_networks(vm)
                if broken:
                    ok, error = False, broken
            if ok:
                payload = self._payload(vm, host=host, state=STARTING, nics=True, vlan=True, caller=cfg.caller)
                call = self._run(action, payload, wait=wait or 0, vm=vm, host=host, try_number=attempt)
                calls.append(call)
                if call.success:
                    vm.state = RUNNING
                    vm.host_id = vm.last_host_id = host.id
                    vm.details.pop(DEPLOY_DETAIL, None)
                    self._save()
                    return Result(True, vm.uuid, vm.state, calls=calls)
                error = f"{action} failed: {call.text}"
            # VMMI cleanup: stop, state still Starting, NICs in the payload; a failure is only logged
            payload = self._payload(vm, host=host, state=STARTING, nics=True, caller=cfg.caller)
            calls.append(self._run("stop", payload, wait=0, vm=vm, host=host, try_number=attempt, note="cleanup"))
        vm.state = failed_state
        vm.host_id = None
        self._save()
        return Result(
            False,
            vm.uuid,
            vm.state,
            f"Unable to start VM {vm.display_name} ({vm.uuid}) after {tries} tries; last error: {error}",
            calls,
        )

    def stop(self, vm: str) -> Result:
        """``stopVirtualMachine``: ``stop`` with the state Stopping and no NICs."""
        with self._locked():
            record = self._vm(vm)
            return self._stop(record)

    def _stop(self, vm: VM) -> Result:
        if vm.state != RUNNING:
            return Result(False, vm.uuid, vm.state, f"VM {vm.display_name} is {vm.state}, not Running")
        cfg = self._s.config
        host = self._host(vm.host_id)
        vm.state = STOPPING
        self._save()
        payload = self._payload(vm, host=host, caller=cfg.caller)
        call = self._run("stop", payload, wait=0, vm=vm, host=host)
        if call.success:
            vm.state = STOPPED
            vm.host_id = None
            self._save()
            return Result(True, vm.uuid, vm.state, calls=[call])
        vm.state = RUNNING
        self._save()
        return Result(False, vm.uuid, vm.state, f"Unable to stop VM {vm.display_name}: {call.text}", [call])

    def reboot(self, vm: str) -> Result:
        """``rebootVirtualMachine`` of a Running VM."""
        with self._locked():
            record = self._vm(vm)
            if record.state != RUNNING:
                return Result(
                    False, record.uuid, record.state, f"VM {record.display_name} is {record.state}, not Running"
                )
            host = self._host(record.host_id)
            payload = self._payload(record, host=host, caller=self._s.config.caller)
            call = self._run("reboot", payload, wait=0, vm=record, host=host)
            if call.success:
                return Result(True, record.uuid, record.state, calls=[call])
            return Result(
                False, record.uuid, record.state, f"Unable to reboot VM {record.display_name}: {call.text}", [call]
            )

    def destroy(self, vm: str, *, expunge: bool = True) -> Result:
        """``destroyVirtualMachine``: a Running VM is stopped first; with ``expunge``, ``delete``
        is called only if the VM has a host or a last host (one that never started is expunged
        with no call at all); a failed delete leaves it Destroyed."""
        with self._locked() as s:
            record = self._vm(vm)
            calls: list[Call] = []
            if record.state in (STARTING, STOPPING, EXPUNGING):
                return Result(False, record.uuid, record.state, f"VM {record.display_name} is {record.state}")
            if record.state == RUNNING:
                stopped = self._stop(record)
                calls += stopped.calls
                if not stopped.success:
                    return Result(False, record.uuid, record.state, stopped.error, calls)
            record.state = DESTROYED
            self._save()
            if not expunge:
                return Result(True, record.uuid, record.state, calls=calls)
            host = self._host(record.host_id if record.host_id is not None else record.last_host_id)
            if record.host_id is not None or record.last_host_id is not None:
                payload = self._payload(
                    record,
                    host=host,
                    state=EXPUNGING,
                    caller=s.config.caller,
                    extra_details={EXPUNGE_DETAIL: "true"},
                )
                call = self._run("delete", payload, wait=0, vm=record, host=host)
                calls.append(call)
                if not call.success:
                    return Result(
                        False,
                        record.uuid,
                        record.state,
                        f"Unable to expunge VM {record.display_name}: {call.text}",
                        calls,
                    )
            s.vms.remove(record)
            s.expunged.append({"uuid": record.uuid, "name": record.display_name})
            self._save()
            return Result(True, record.uuid, None, calls=calls)

    def add_nic(self, vm: str, network: str) -> Result:
        """``addNicToVirtualMachine``: works on a Stopped VM only (no call); on a Running one
        CloudStack sends PlugNicCommand, which the extension cannot answer right."""
        with self._locked():
            record = self._vm(vm)
            net = self._network(network)
            if any(n.network == net.uuid for n in record.nics):
                return Result(
                    False, record.uuid, record.state, f"VM {record.display_name} has a NIC in {net.name} already"
                )
            if record.state == RUNNING:
                return self._unrouted(record, PLUG_NIC, f"Unable to plug a NIC in {net.name} into a running VM")
            if record.state != STOPPED:
                return Result(False, record.uuid, record.state, f"VM {record.display_name} is {record.state}")
            device = max((n.device_id for n in record.nics), default=-1) + 1
            record.nics.append(self._new_nic(net, device, default=not record.nics))
            self._save()
            return Result(True, record.uuid, record.state)

    def remove_nic(self, vm: str, network: str) -> Result:
        """``removeNicFromVirtualMachine``: Stopped VM only; never the default NIC."""
        with self._locked():
            record = self._vm(vm)
            net = self._network(network)
            nic = next((n for n in record.nics if n.network == net.uuid), None)
            if nic is None:
                return Result(False, record.uuid, record.state, f"VM {record.display_name} has no NIC in {net.name}")
            if nic.default:
                return Result(False, record.uuid, record.state, "The default NIC cannot be removed")
            if record.state == RUNNING:
                return self._unrouted(record, UNPLUG_NIC, f"Unable to unplug the NIC in {net.name} from a running VM")
            if record.state != STOPPED:
                return Result(False, record.uuid, record.state, f"VM {record.display_name} is {record.state}")
            record.nics.remove(nic)
            self._save()
            return Result(True, record.uuid, record.state)

    def _unrouted(self, vm: VM, command: str, error: str) -> Result:
        host = self._host(vm.host_id)
        call = self._run(command, {"action": command}, wait=UNROUTED_WAIT, vm=vm, host=host)
        reason = f"the answer to {command.rsplit('.', 1)[-1]} is a plain Answer, not the one CloudStack expects"
        return Result(False, vm.uuid, vm.state, f"{error}: {reason} (the script said: {call.text!r})", [call])

    def run_action(self, vm: str, name: str, parameters: dict[str, Any] | None = None) -> Result:
        """``runCustomAction``: required parameters checked and typed first (a missing or bad one
        raises InputError before anything runs); wait = the action's timeout or 3 s."""
        with self._locked() as s:
            record = self._vm(vm)
            action = next((a for a in s.actions if a.name == name), None)
            if action is None:
                raise InputError(f"no custom action {name}")
            given = dict(parameters or {})
            typed: dict[str, Any] = {}
            for p in action.parameters:
                if p.name not in given or given[p.name] is None or given[p.name] == "":
                    if p.required:
                        raise InputError(f"custom action {name}: parameter {p.name} is required")
                    continue
                typed[p.name] = typed_parameter(p, given[p.name])
            if record.state in (DESTROYED, EXPUNGING):
                return Result(False, record.uuid, record.state, f"VM {record.display_name} is {record.state}")
            host = self._host(record.host_id if record.host_id is not None else record.last_host_id)
            if host is None:
                host = next((h for h in sorted(s.hosts, key=lambda h: h.id) if h.state == "Up"), None)
            payload = self._payload(record, host=host, caller=s.config.caller, custom=action, parameters=typed)
            call = self._run(action.name, payload, wait=action.timeout or CUSTOM_ACTION_WAIT, vm=record, host=host)
            return Result(
                call.success,
                record.uuid,
                record.state,
                None if call.success else f"Custom action {name} failed: {call.text}",
                [call],
                details=call.text,
                ui_message=ui_message(call.success, call.text),
            )

    def ping(self) -> dict[str, str]:
        """One ping of every Up host: ``status`` for its VMs (host_id = host, any state; then
        Stopped VMs whose last host it is), one at a time, then the power-state sync.
        Returns {vm uuid: PowerOn | PowerOff | PowerUnknown}."""
        with self._locked() as s:
            report: dict[str, str] = {}
            for host in sorted(s.hosts, key=lambda h: h.id):
                if host.state != "Up":
                    continue
                on_host = [v for v in sorted(s.vms, key=lambda v: v.id) if v.host_id == host.id]
                on_host += [
                    v
                    for v in sorted(s.vms, key=lambda v: v.id)
                    if v.state == STOPPED and v.last_host_id == host.id and v.host_id != host.id
                ]
                found: list[tuple[VM, str]] = []
                for i, vm in enumerate(on_host):
                    # the system account's caller sits in the shared details map until the first
                    # VM's payload takes it out (EPP loadAccessDetails)
                    payload = self._payload(vm, host=host, caller=SYSTEM_CALLER if i == 0 else None)
                    call = self._run("status", payload, wait=0, vm=vm, host=host)
                    found.append((vm, power_state(call)))
                for vm, power in found:
                    report[vm.uuid] = power
                    self._sync(vm, host, power)
            return report

    def _sync(self, vm: VM, host: Host, power: str) -> None:
        """VMMI's power-state report handling (skipped for VMs with a job in progress)."""
        if power == POWER_OFF and vm.state == RUNNING:
            payload = self._payload(vm, host=host, caller=SYSTEM_CALLER)
            call = self._run("stop", payload, wait=0, vm=vm, host=host, note="out-of-band power off")
            if call.success:
                vm.state = STOPPED
                vm.host_id = None
                self._save()
        elif power == POWER_ON and vm.state == STOPPED:
            vm.state = RUNNING
            vm.host_id = vm.last_host_id = host.id
            self._save()


def _find_vm(state: State, ref: str) -> VM:
    for vm in state.vms:
        if ref in (vm.uuid, vm.display_name, vm.name):
            return vm
    raise InputError(f"no VM {ref}")
