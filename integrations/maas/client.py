"""The MAAS client: the endpoints metalflow uses, hand-written, returning typed objects.

Every call returns the fresh object MAAS sent back (MAAS is the truth; nothing is cached).
Each call gives a 409 its meaning where it is known: on ``allocate`` it means "no such machine
available" (``MaasConflict``); on deploy, release, abort, power and interface changes it means
the machine's state does not allow the action (``MaasWrongState``).

Idempotence (what a connection error may retry, see ``wire``): reads, ``rename``,
``set_power_parameters``, ``release`` (a second release of a releasing or ready machine is a
no-op in MAAS), ``power_off`` and tag membership changes. ``create_machine``, ``allocate``,
``deploy``, ``commission``, ``link_subnet`` and ``create_bond`` are not: after an unanswered
call the caller reads the state back (``find_by_mac``, ``machine``) before trying again.
"""

from __future__ import annotations

import base64
import contextlib
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import requests
import yaml

from metalflow.integrations.common import Backoff, Clock, Deadline, DeadlineExceeded, Secret
from metalflow.integrations.common.values import BadValue, parse_maas_hostname, parse_mac, parse_tcp_port, show
from metalflow.integrations.maas.errors import (
    MaasConflict,
    MaasError,
    MaasNotFound,
    MaasTimeout,
    MaasUnavailable,
    MaasValidationError,
    MaasWrongState,
)
from metalflow.integrations.maas.models import (
    TAG_COMMENT,
    WAIT_FAILURE_STATES,
    BootResource,
    Fabric,
    Interface,
    Machine,
    NodeStatus,
    Subnet,
    Tag,
    split_image_name,
)
from metalflow.integrations.maas.watch import StatusWatch
from metalflow.integrations.maas.wire import DEFAULT_RETRIES, ApiKey, CallRecord, Form, MaasWire, resource_path

ERASE_MODES = ("none", "quick", "secure", "full")
LINK_MODES = ("auto", "dhcp", "static", "link_up")
BOND_MODES = ("balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb", "balance-alb")
STOP_MODES = ("soft", "hard")
IPMI_DEFAULT_PORT = 623

# Power parameter names whose values are credentials (power_pass, IPMI's k_g BMC key...).
_SECRET_WORDS = ("pass", "secret", "key", "k_g", "token")
# ASCII and matched whole: ``\w`` alone takes any Unicode letter, and ``$`` a trailing newline.
_TAG = re.compile(r"[A-Za-z0-9_-]{1,256}", re.ASCII)
_IFNAME = re.compile(r"[A-Za-z0-9_.:-]{1,15}", re.ASCII)


def format_power_address(address: str, port: int | None = None) -> str:
    """The ipmi ``power_address``: the BMC address, with ``:port`` appended for a BMC off the
    standard port 623 (bracketing an IPv6 address)."""
    if not isinstance(address, str) or not address:
        raise BadValue("power_address", "empty; give the BMC's address")
    if port is None:
        return address
    port = parse_tcp_port(port, "power_port")  # ASCII digits only: int("١٢") is 12
    if port == IPMI_DEFAULT_PORT:
        return address
    if address.startswith("[") or address.count(":") == 1:
        raise ValueError(f"power_address: {address!r} already has a port; do not also pass power_port")
    if ":" in address:  # IPv6
        return f"[{address}]:{int(port)}"
    return f"{address}:{int(port)}"


def _check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise BadValue("tag", f"{show(tag)} is not a MAAS tag name: use ASCII letters, digits, '_' and '-'")
    return tag


def _status_filter(value: Any) -> Any:
    if isinstance(value, NodeStatus):
        return value.name.lower()
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_status_filter(v) for v in value]
    return value


@dataclass
class _LastSeen:
    """What a status wait saw last, for the message when its deadline passes."""

    machine: Machine | None = None
    error: MaasUnavailable | None = None


class MaasClient:
    """A MAAS region, addressed by its URL and an API key (``ck:tk:ts``).

    ``timeout`` bounds every HTTP exchange; ``retries`` and ``retry_budget`` bound the retries
    of what is transient (see ``integrations.maas.wire``). ``clock`` is injectable for tests
    of waiting logic; ``on_call`` receives a ``CallRecord`` per HTTP exchange (for the run's
    artifact of MAAS calls; it carries no parameters or headers). ``watch_interval`` is the
    round of the shared status watch (``wait_for_status(..., shared=True)``).
    """

    def __init__(
        self,
        url: str,
        api_key: str | Secret | ApiKey,
        *,
        timeout: float = 30.0,
        retries: Backoff = DEFAULT_RETRIES,
        retry_budget: float = 120.0,
        session: requests.Session | None = None,
        clock: Clock | None = None,
        on_call: Callable[[CallRecord], None] | None = None,
        watch_interval: float = 1.0,
    ):
        self.watch_interval = watch_interval
        self._watch: StatusWatch | None = None
        self._watch_lock = threading.Lock()
        self.wire = MaasWire(
            url,
            api_key,
            timeout=timeout,
            retries=retries,
            retry_budget=retry_budget,
            session=session,
            clock=clock,
            on_call=on_call,
        )

    @classmethod
    def from_settings(cls, settings_string: str | Secret, **kwargs: Any) -> MaasClient:
        """A client from CloudStack's ``external.baremetal.system.url`` string
        (``MaasIP=...;MaasKey=...;MaasSecret=...;MaasConsumerKey=...``, plus ``MaasPort`` and
        scheme); parsing belongs to ``integrations.config``."""
        from metalflow.integrations.config import parse_settings  # lazy: only this constructor needs it

        raw = settings_string.reveal() if isinstance(settings_string, Secret) else settings_string
        s = parse_settings(raw)
        key = ApiKey(Secret(s.consumer_key), Secret(s.token_key), Secret(s.token_secret))
        return cls(s.url, key, **kwargs)

    def __repr__(self) -> str:
        return f"MaasClient({self.wire.root!r})"

    @property
    def url(self) -> str:
        return self.wire.root

    @property
    def clock(self) -> Clock:
        return self.wire.clock

    def status_watch(self) -> StatusWatch:
        """This client's one ``StatusWatch`` (made on first use), shared by every
        ``wait_for_status(..., shared=True)`` of every thread."""
        with self._watch_lock:
            if self._watch is None:
                self._watch = StatusWatch(self, interval=self.watch_interval)
            return self._watch

    def close(self) -> None:
        self.wire.close()

    def __enter__(self) -> MaasClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- machines ---------------------------------------------------------------------

    def machines(self, **filters: Any) -> tuple[Machine, ...]:
        """``GET machines/`` with MAAS's filters (``hostname``, ``mac_address``, ``status``
        (a NodeStatus or ``"ready"``), ``tags``, ``zone``, ``pool``...; lists repeat)."""
        params = {k: _status_filter(v) for k, v in filters.items()}
        data = self.wire.request("GET", "machines/", params=params)
        return tuple(Machine.from_api(d) for d in data or ())

    def machine(self, system_id: str) -> Machine:
        return Machine.from_api(self.wire.request("GET", resource_path("machines", system_id), system_id=system_id))

    def find_by_mac(self, mac: str) -> Machine | None:
        """The machine owning ``mac``, or ``None``. MAC addresses are unique in MAAS; two
        answers mean the region's data is inconsistent, which is an error, not a choice."""
        mac = parse_mac(mac)
        found = [m for m in self.machines(mac_address=mac) if not m.interfaces or m.interface_by_mac(mac) is not None]
        if len(found) > 1:
            raise MaasConflict(
                f"several machines have MAC {mac}: {', '.join(m.system_id for m in found)}",
                op="find_by_mac",
                target=mac,
            )
        return found[0] if found else None

    def create_machine(
        self,
        hostname: str,
        macs: Iterable[str],
        power_address: str,
        power_user: str,
        power_pass: Secret | str,
        *,
        architecture: str = "amd64/generic",
        commission: bool = True,
        power_port: int | None = None,
        domain: str | None = None,
        description: str | None = None,
    ) -> Machine:
        """Enlist a machine with IPMI power; with ``commission`` (MAAS's default) it starts
        COMMISSIONING, else it stays NEW. ``power_address`` may carry ``:port`` for a BMC
        off port 623 (or pass ``power_port``). Not idempotent: after an unanswered call,
        ``find_by_mac`` before creating again."""
        macs = [parse_mac(m, "macs") for m in macs]
        if not macs:
            raise ValueError("macs: at least one MAC address is needed")
        data: Form = {
            "hostname": parse_maas_hostname(hostname),
            "architecture": architecture,
            "mac_addresses": macs,
            "power_type": "ipmi",
            "power_parameters_power_address": format_power_address(power_address, power_port),
            "power_parameters_power_user": power_user,
            "power_parameters_power_pass": Secret(power_pass),
            "commission": commission,
            "domain": domain,
            "description": description,
        }
        return Machine.from_api(self.wire.request("POST", "machines/", data=data))

    def rename(self, system_id: str, hostname: str) -> Machine:
        path = resource_path("machines", system_id)
        data = {"hostname": parse_maas_hostname(hostname)}
        return Machine.from_api(self.wire.request("PUT", path, data=data, system_id=system_id, idempotent=True))

    def set_power_parameters(
        self,
        system_id: str,
        power_address: str,
        power_user: str,
        power_pass: Secret | str,
        *,
        power_port: int | None = None,
        power_type: str = "ipmi",
        skip_check: bool | None = None,
    ) -> Machine:
        data: Form = {
            "power_type": power_type,
            "power_parameters_power_address": format_power_address(power_address, power_port),
            "power_parameters_power_user": power_user,
            "power_parameters_power_pass": Secret(power_pass),
            "power_parameters_skip_check": skip_check,
        }
        path = resource_path("machines", system_id)
        return Machine.from_api(self.wire.request("PUT", path, data=data, system_id=system_id, idempotent=True))

    def power_parameters(self, system_id: str) -> dict[str, Any]:
        """The machine's power parameters (admin), for reading back ``set_power_parameters``;
        every value under a secret-looking key (``power_pass``...) comes wrapped in a Secret."""
        answer = self.wire.request(
            "GET", resource_path("machines", system_id), op="power_parameters", system_id=system_id
        )
        return {
            k: Secret(str(v)) if any(w in k.lower() for w in _SECRET_WORDS) and v not in (None, "") else v
            for k, v in (answer or {}).items()
        }

    def allocate(self, system_id: str, *, agent_name: str | None = None, comment: str | None = None) -> Machine:
        """Allocate this machine (by ``system_id``: MAAS has no MAC constraint). A 409 means it
        is not available (not Ready, or owned by someone else): ``MaasConflict``."""
        data = {"system_id": system_id, "agent_name": agent_name, "comment": comment}
        return Machine.from_api(
            self.wire.request(
                "POST",
                "machines/",
                op="allocate",
                data=data,
                system_id=system_id,
                on_conflict=MaasConflict,
                conflict_message="the machine is not available for allocation",
            )
        )

    def commission(
        self,
        system_id: str,
        *,
        enable_ssh: bool | None = None,
        skip_bmc_config: bool | None = None,
        skip_networking: bool | None = None,
        skip_storage: bool | None = None,
        commissioning_scripts: Iterable[str] | None = None,
        testing_scripts: Iterable[str] | None = None,
    ) -> Machine:
        """(Re)commission from NEW, READY, FAILED_COMMISSIONING or BROKEN. MAAS answers a bad
        state with a form-wide 400; that is raised as ``MaasWrongState``."""
        data = {
            "enable_ssh": enable_ssh,
            "skip_bmc_config": skip_bmc_config,
            "skip_networking": skip_networking,
            "skip_storage": skip_storage,
            "commissioning_scripts": ",".join(commissioning_scripts) if commissioning_scripts else None,
            "testing_scripts": ",".join(testing_scripts) if testing_scripts else None,
        }
        try:
            return self._machine_op(system_id, "commission", data)
        except MaasValidationError as exc:
            form_wide = " ".join(exc.fields.get("__all__", [])) or exc.excerpt
            if "state" in form_wide.lower():
                raise MaasWrongState(
                    f"cannot commission {system_id}: {form_wide[:200]}",
                    system_id=system_id,
                    op="commission",
                    status=exc.status,
                    excerpt=exc.excerpt,
                ) from None
            raise

    def deploy(
        self,
        system_id: str,
        distro_series: str,
        *,
        user_data: str | bytes | None = None,
        comment: str | None = None,
        hwe_kernel: str | None = None,
        agent_name: str | None = None,
    ) -> Machine:
        """Start deploying ``distro_series`` (send ``os/release``; MAAS ignores ``osystem``).
        ``user_data`` is cloud-init user data, sent base64-encoded (required before MAAS 3.0,
        accepted after). A bad series is a ``MaasValidationError`` naming ``distro_series``;
        a wrong state (or another owner) a ``MaasWrongState``. Returns the DEPLOYING machine.

        Like MAAS itself, a READY machine is allocated *before* the series is validated: a bad
        series leaves it ALLOCATED. Check ``image_exists`` first."""
        if user_data is not None:
            raw = user_data.encode() if isinstance(user_data, str) else user_data
            user_data = base64.b64encode(raw).decode("ascii")
        data = {
            "distro_series": distro_series,
            "user_data": user_data,
            "comment": comment,
            "hwe_kernel": hwe_kernel,
            "agent_name": agent_name,
        }
        return self._machine_op(system_id, "deploy", data)

    def release(
        self,
        system_id: str,
        erase: str = "none",
        comment: str | None = None,
        *,
        force: bool | None = None,
    ) -> Machine:
        """Release, erasing disks per ``erase``: ``none``, ``quick`` (wipe the start and end
        of each disk), ``secure`` (the drive's secure erase, MAAS falls back to a full wipe) or
        ``full`` (overwrite everything). Releasing a RELEASING or READY machine is a no-op."""
        if erase not in ERASE_MODES:
            raise ValueError(f"erase: {erase!r} is not one of {', '.join(ERASE_MODES)}")
        data: dict[str, Any] = {"comment": comment, "force": force}
        if erase != "none":
            data["erase"] = True
            data["quick_erase"] = True if erase == "quick" else None
            data["secure_erase"] = True if erase == "secure" else None
        return self._machine_op(system_id, "release", data, idempotent=True)

    def abort(self, system_id: str, comment: str | None = None) -> Machine:
        return self._machine_op(system_id, "abort", {"comment": comment})

    def mark_broken(self, system_id: str, comment: str) -> Machine:
        """BROKEN, with ``comment`` as the error description. MAAS requires the caller to own
        the machine (403 otherwise, see reference/maas-api.md §3)."""
        return self._machine_op(system_id, "mark_broken", {"comment": comment})

    def mark_fixed(self, system_id: str, comment: str | None = None) -> Machine:
        return self._machine_op(system_id, "mark_fixed", {"comment": comment})

    def power_on(self, system_id: str, *, comment: str | None = None) -> Machine:
        return self._machine_op(system_id, "power_on", {"comment": comment})

    def power_off(self, system_id: str, stop_mode: str = "hard", *, comment: str | None = None) -> Machine:
        if stop_mode not in STOP_MODES:
            raise ValueError(f"stop_mode: {stop_mode!r} is not one of {', '.join(STOP_MODES)}")
        path = resource_path("machines", system_id)
        data = {"stop_mode": stop_mode, "comment": comment}
        answer = self.wire.request(
            "POST",
            path,
            op="power_off",
            data=data,
            system_id=system_id,
            idempotent=True,
            on_conflict=MaasWrongState,
            conflict_message="power_off is not allowed in the machine's current state",
        )
        # MAAS may answer ``null``: read the machine back rather than return nothing.
        return Machine.from_api(answer) if isinstance(answer, dict) else self.machine(system_id)

    def query_power_state(self, system_id: str) -> str:
        """MAAS asks the BMC now (it may block up to 60 s): ``on``, ``off``, ``unknown``,
        ``error``."""
        path = resource_path("machines", system_id)
        answer = self.wire.request(
            "GET",
            path,
            op="query_power_state",
            system_id=system_id,
            timeout=max(self.wire.timeout, 75.0),
        )
        if not isinstance(answer, dict) or "state" not in answer:
            raise MaasError(
                "MAAS answered query_power_state without a state",
                system_id=system_id,
                op="query_power_state",
                excerpt=str(answer)[:100],
            )
        return str(answer["state"])

    def get_curtin_config(self, system_id: str) -> str:
        """The curtin config (YAML text) MAAS will use or used; MAAS answers only for a
        DEPLOYING, DEPLOYED or FAILED_DEPLOYMENT machine (400 otherwise)."""
        path = resource_path("machines", system_id)
        answer = self.wire.request("GET", path, op="get_curtin_config", system_id=system_id)
        if isinstance(answer, str):
            return answer
        text: str = yaml.safe_dump(answer, default_flow_style=False)
        return text

    def delete_machine(self, system_id: str) -> None:
        """Remove the machine from MAAS. No metalflow flow calls this: removing a host from
        metalflow (or from CloudStack) never deletes it from MAAS (DESIGN.md). It exists for
        operators and lab tooling."""
        self.wire.request("DELETE", resource_path("machines", system_id), system_id=system_id)

    def _machine_op(self, system_id: str, op: str, data: Form, *, idempotent: bool = False) -> Machine:
        return Machine.from_api(
            self.wire.request(
                "POST",
                resource_path("machines", system_id),
                op=op,
                data=data,
                system_id=system_id,
                idempotent=idempotent,
                on_conflict=MaasWrongState,
                conflict_message=f"{op} is not allowed in the machine's current state",
            )
        )

    # -- waiting ----------------------------------------------------------------------

    def wait_for_status(
        self,
        system_id: str,
        targets: NodeStatus | int | str | Iterable[NodeStatus | int | str],
        *,
        deadline: Deadline | float,
        interval: float = 5.0,
        max_interval: float = 30.0,
        shared: bool = False,
    ) -> Machine:
        """Poll until the machine reaches one of ``targets``; return it.

        A failure state (FAILED_*, BROKEN) that is not a target ends the wait at once with
        ``MaasWrongState`` carrying MAAS's status message. A poll that MAAS answers with a
        transient error (503, connection) is tolerated while the deadline holds. When the
        deadline passes: ``MaasTimeout`` naming the machine and the last status seen.

        ``shared=True`` waits through this client's ``status_watch()`` instead of polling
        alone: every machine this client waits on is read in one request per round, a round
        every ``watch_interval`` seconds (``interval`` and ``max_interval`` then do not apply).
        """
        if isinstance(targets, (NodeStatus, int, str)):
            targets = [targets]
        wanted = frozenset(NodeStatus.parse(t) for t in targets)
        if not wanted:
            raise ValueError("targets: at least one status to wait for")
        dl = deadline if isinstance(deadline, Deadline) else Deadline(float(deadline), clock=self.clock)
        names = " or ".join(sorted(s.label for s in wanted))
        seen = _LastSeen()

        watch = self.status_watch() if shared else None

        def probe() -> Machine | None:
            try:
                if watch is not None:
                    machine = watch.next(system_id, dl)
                    if machine is None:
                        return seen.machine  # no newer view (a failed round, or time is up)
                else:
                    machine = self._poll_machine(system_id, budget=dl.remaining())
            except MaasUnavailable as exc:
                seen.error = exc
                return None
            seen.machine = machine
            return machine

        def done(m: Machine | None) -> bool:
            return m is not None and m.status in wanted

        def failed(m: Machine | None) -> BaseException | None:
            if m is None or m.status not in WAIT_FAILURE_STATES:
                return None
            why = m.status_message or m.error_description or "MAAS gave no message"
            return MaasWrongState(
                f"{m.hostname} ({system_id}) went to {m.status_name or m.status.label} "
                f"while waiting for {names}: {why}",
                system_id=system_id,
                op="wait_for_status",
                machine_status=m.status_name or m.status.label,
                excerpt=str(why)[:200],
            )

        if watch is not None:  # each probe blocks until the watch's next round: no sleep between
            interval = max_interval = 0.0
        try:
            with watch.watching(system_id) if watch is not None else contextlib.nullcontext():
                found = dl.wait_for(
                    probe,
                    done,
                    what=f"wait for {system_id} to be {names}",
                    failed=failed,
                    interval=interval,
                    max_interval=max_interval,
                )
        except DeadlineExceeded:
            last = seen.machine
            last_status = (last.status_name or last.status.label) if last else "unknown"
            tail = f"; last error: {seen.error}" if seen.error is not None and last is None else ""
            raise MaasTimeout(
                f"{system_id} did not become {names} within {dl.seconds:.0f} s (last status: {last_status}){tail}",
                system_id=system_id,
                op="wait_for_status",
                last_status=last_status,
                excerpt=f"last status: {last_status}",
            ) from None
        assert found is not None  # done() holds only for a machine
        return found

    def _poll_machine(self, system_id: str, *, budget: float | None = None) -> Machine:
        """``machine()`` whose retries and timeout stay within ``budget`` seconds (for polls
        inside a wait's deadline)."""
        timeout = self.wire.timeout if budget is None else max(0.5, min(self.wire.timeout, budget))
        return Machine.from_api(
            self.wire.request(
                "GET",
                resource_path("machines", system_id),
                system_id=system_id,
                timeout=timeout,
                budget=budget,
            )
        )

    # -- tags -------------------------------------------------------------------------

    def add_tag(self, system_id: str, tag: str) -> Machine:
        """Tag the machine, creating the tag first if MAAS does not have it. Returns the
        machine read back; a tag that did not stick is an error."""
        tag = _check_tag(tag)
        for attempt in range(2):
            self._ensure_tag(tag)
            try:
                self.wire.request(
                    "POST",
                    resource_path("tags", tag),
                    op="update_nodes",
                    data={"add": system_id},
                    system_id=system_id,
                    idempotent=True,
                )
                break
            except MaasNotFound:
                # Deleted between our read and our add (the last machine carrying it was
                # untagged and the tag cleaned up): made again, once.
                if attempt:
                    raise
        machine = self.machine(system_id)
        if tag not in machine.tag_names:
            raise MaasError(
                f"tag {tag!r} is not on the machine after adding it",
                system_id=system_id,
                op="add_tag",
                excerpt=", ".join(machine.tag_names),
            )
        return machine

    def remove_tag(self, system_id: str, tag: str) -> Machine:
        """Untag the machine; a tag MAAS does not know is already absent."""
        tag = _check_tag(tag)
        try:
            self.wire.request(
                "POST",
                resource_path("tags", tag),
                op="update_nodes",
                data={"remove": system_id},
                system_id=system_id,
                idempotent=True,
            )
        except MaasNotFound:
            pass
        machine = self.machine(system_id)
        if tag in machine.tag_names:
            raise MaasError(
                f"tag {tag!r} is still on the machine after removing it", system_id=system_id, op="remove_tag"
            )
        return machine

    def tags(self) -> tuple[Tag, ...]:
        """Every tag MAAS holds."""
        return tuple(Tag.from_api(d) for d in self.wire.request("GET", "tags/") or ())

    def tag_machines(self, tag: str) -> tuple[str, ...]:
        """The system ids of the machines carrying ``tag``; () for a tag MAAS does not know."""
        try:
            data = self.wire.request("GET", resource_path("tags", _check_tag(tag)), op="machines")
        except MaasNotFound:
            return ()
        return tuple(str(m["system_id"]) for m in data or ())

    def delete_tag(self, tag: str) -> None:
        """Delete the tag (MAAS takes it off every machine); one already gone is deleted."""
        with contextlib.suppress(MaasNotFound):
            self.wire.request("DELETE", resource_path("tags", _check_tag(tag)), idempotent=True)

    def _ensure_tag(self, tag: str) -> None:
        try:
            self.wire.request("GET", resource_path("tags", tag))
            return
        except MaasNotFound:
            pass
        try:
            self.wire.request("POST", "tags/", data={"name": tag, "comment": TAG_COMMENT})
        except MaasValidationError as exc:
            # Someone created it between our read and our create: that is what we wanted.
            if "already exists" not in " ".join(" ".join(v) for v in exc.fields.values()).lower():
                raise

    # -- interfaces -------------------------------------------------------------------

    def interfaces(self, system_id: str) -> tuple[Interface, ...]:
        data = self.wire.request("GET", resource_path("nodes", system_id, "interfaces"), system_id=system_id)
        return tuple(Interface.from_api(d) for d in data or ())

    def create_bond(
        self,
        system_id: str,
        name: str,
        parent_ids: Iterable[int],
        *,
        mode: str = "active-backup",
        mac_address: str | None = None,
        miimon: int | None = None,
        lacp_rate: str | None = None,
        xmit_hash_policy: str | None = None,
    ) -> Interface:
        """A bond over ``parent_ids`` (interface ids). The machine must be NEW, READY,
        ALLOCATED, BROKEN or FAILED_TESTING (``MaasWrongState`` otherwise)."""
        parents = [int(p) for p in parent_ids]
        if not parents:
            raise ValueError("parent_ids: a bond needs at least one parent interface")
        if mode not in BOND_MODES:
            raise ValueError(f"mode: {mode!r} is not one of {', '.join(BOND_MODES)}")
        if not isinstance(name, str) or not _IFNAME.fullmatch(name):
            raise BadValue("name", f"{show(name)} is not an interface name: 1-15 ASCII letters, digits and _.:-")
        data = {
            "name": name,
            "parents": parents,
            "bond_mode": mode,
            "mac_address": parse_mac(mac_address, "mac_address") if mac_address else None,
            "bond_miimon": miimon,
            "bond_lacp_rate": lacp_rate,
            "bond_xmit_hash_policy": xmit_hash_policy,
        }
        return self._interface_call(system_id, None, "create_bond", data)

    def link_subnet(
        self,
        system_id: str,
        interface_id: int,
        subnet_id: int | str | None = None,
        mode: str = "dhcp",
        force: bool = False,
        *,
        ip_address: str | None = None,
        default_gateway: bool | None = None,
    ) -> Interface:
        """Link an interface to a subnet: ``dhcp``, ``auto``, ``static`` (with ``ip_address``)
        or ``link_up``. ``subnet_id`` (an id or a ``cidr:``/``vid:`` specifier) is required for
        auto and static. ``force`` clears existing links first."""
        mode = mode.lower()
        if mode not in LINK_MODES:
            raise ValueError(f"mode: {mode!r} is not one of {', '.join(LINK_MODES)}")
        if mode in ("auto", "static") and subnet_id is None:
            raise ValueError(f"subnet_id: required for mode {mode}")
        if ip_address is not None and mode != "static":
            raise ValueError("ip_address: only with mode static")
        data = {
            "mode": mode.upper(),
            "subnet": subnet_id,
            "ip_address": ip_address,
            "default_gateway": default_gateway,
            "force": True if force else None,
        }
        return self._interface_call(system_id, interface_id, "link_subnet", data)

    def unlink_subnet(self, system_id: str, interface_id: int, link_id: int) -> Interface:
        return self._interface_call(system_id, interface_id, "unlink_subnet", {"id": int(link_id)})

    def disconnect_interface(self, system_id: str, interface_id: int) -> Interface:
        """Drop every link of the interface and set its VLAN to none."""
        return self._interface_call(system_id, interface_id, "disconnect", {})

    def _interface_call(self, system_id: str, interface_id: int | None, op: str, data: Form) -> Interface:
        segs: tuple[Any, ...] = ("nodes", system_id, "interfaces")
        if interface_id is not None:
            segs += (int(interface_id),)
        return Interface.from_api(
            self.wire.request(
                "POST",
                resource_path(*segs),
                op=op,
                data=data,
                system_id=system_id,
                on_conflict=MaasWrongState,
                conflict_message=f"{op}: the machine's current state does not allow interface changes",
            )
        )

    # -- networks and images ----------------------------------------------------------

    def subnets(self) -> tuple[Subnet, ...]:
        return tuple(Subnet.from_api(d) for d in self.wire.request("GET", "subnets/") or ())

    def fabrics(self) -> tuple[Fabric, ...]:
        return tuple(Fabric.from_api(d) for d in self.wire.request("GET", "fabrics/") or ())

    def boot_resources(self, type: str | None = None) -> tuple[BootResource, ...]:
        """Images (and bootloaders) MAAS holds; ``type`` is ``synced`` or ``uploaded``."""
        data = self.wire.request("GET", "boot-resources/", params={"type": type})
        return tuple(BootResource.from_api(d) for d in data or ())

    def find_image(self, name: str, architecture: str | None = None) -> BootResource | None:
        """The image ``deploy(distro_series=name)`` would use, named as MAAS accepts it:
        ``os/release`` (``ubuntu/jammy``, ``centos/centos70``, ``custom/alma9``) or a bare
        release (``jammy``, ``alma9``). ``architecture`` (``amd64`` or ``amd64/generic``)
        narrows by architecture."""
        wanted_os, wanted_release = split_image_name(name.strip().lower())
        arch = architecture.split("/", 1)[0] if architecture else None
        for res in self.boot_resources():
            if res.is_bootloader:
                continue
            if arch and res.architecture.split("/", 1)[0] != arch:
                continue
            if res.release.lower() != wanted_release:
                continue
            if wanted_os is None or res.osystem.lower() == wanted_os:
                return res
        return None

    def image_exists(self, name: str, architecture: str | None = None) -> bool:
        return self.find_image(name, architecture) is not None
