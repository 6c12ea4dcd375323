"""Node phases: what MAAS does between an API call and the next status.

Commission, deploy and disk erasure all work the same way on real MAAS: power the machine on
through its BMC (next boot PXE), then wait until the machine PXE-boots and asks the region what
to run (``on_netboot``). If that does not happen within ``node_timeout`` the phase fails
(FAILED_COMMISSIONING / FAILED_DEPLOYMENT / FAILED_DISK_ERASING), which is how "deploy without
the PXE VLAN" fails in the lab: the switch never lets the DHCP request through.

Threads: API handlers and ``on_netboot`` change state under the simulator's lock and return
at once. Timers (phase durations, timeouts) run on one heap scheduler thread. Anything that
talks to the outside (the power driver, the machine hooks) runs on a worker pool, through a
per-machine queue so that one machine's power actions happen in the order MAAS asked for them
(a power-off at the end of commissioning can never overtake the power-on of the deploy that
follows). Every status change bumps ``Machine.gen``; a timer or power callback that belongs to
an older phase sees a different generation and does nothing.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from metalflow.lab.maas import preseed
from metalflow.lab.maas.model import (
    SCRIPT_FAILED,
    SCRIPT_PASSED,
    SCRIPT_RUNNING,
    USER,
    Interface,
    Link,
    Machine,
    State,
)
from metalflow.lab.maas.status import PHASES, NodeStatus, can_move
from metalflow.lab.maas.world import MachineHooks, PowerDriver
from metalflow.lab.scheduler import Scheduler
from metalflow.lab.spec import Timing

log = logging.getLogger(__name__)

S = NodeStatus
FAULT_PHASES = ("commission", "deploy", "erase", "release")
ERASE_MODES = ("erase", "quick_erase", "secure_erase")
NETBOOT_ANSWER = {"commission": "commissioning", "deploy": "deploying", "erase": "erasing"}


class IllegalTransition(RuntimeError):
    """A status change MAAS's transition table forbids: a bug in the simulator, never input."""


@dataclass
class Phase:
    kind: str  # commission, deploy, erase, release
    gen: int
    progressed: bool = False  # booted (or powered off, for release): the timeout no longer applies
    #: Which boot of the ephemeral environment the phase's completion belongs to: a power loss
    #: starts a new count, so the completion of the boot that died never fires.
    boot: int = 0
    done: bool = False  # the work finished; what follows (power off, reboot) is MAAS's own
    mac: str | None = None
    hardware: dict[str, Any] | None = None
    erase_mode: str = "erase"
    image: str = ""
    skip_networking: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class Lifecycle:
    def __init__(
        self,
        state: State,
        lock: threading.RLock,
        *,
        timing: Timing,
        power: PowerDriver,
        hooks: MachineHooks | None,
        preseed_dir: str,
        preseed_context: Callable[[Machine], dict],
        workers: int = 32,
    ):
        self.state = state
        self.lock = lock
        self.timing = timing
        self.power = power
        self.hooks = hooks
        self.preseed_dir = preseed_dir
        self.preseed_context = preseed_context
        self.fail_counts = {p: 0 for p in FAULT_PHASES}
        self._sched = Scheduler("maas-phases")
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="maas-power")
        self._queues: dict[str, deque[Callable[[], None]]] = {}
        self._busy: set[str] = set()
        self._stopped = False

    def stop(self) -> None:
        with self.lock:
            self._stopped = True
        self._sched.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- status -----------------------------------------------------------------------------
    def set_status(self, m: Machine, new: NodeStatus, message: str | None = None) -> None:
        """Change status (checked against MAAS's table); ends whatever phase was running."""
        if new != m.status and not can_move(m.status, new):
            raise IllegalTransition(f"{m.system_id}: {m.status.label} -> {new.label} is not a MAAS transition")
        m.status = new
        m.gen += 1
        m.phase = None
        if message is not None:
            m.status_message = message

    def place(self, m: Machine, status: NodeStatus, message: str | None = None) -> None:
        """Put a machine being created straight into ``status`` (MAAS's ``deployed=true`` on
        create, or a lab preload): a creation, not a transition."""
        m.status = status
        m.gen += 1
        m.phase = None
        m.status_message = message

    def _begin(self, m: Machine, status: NodeStatus, kind: str, message: str, **kw: Any) -> Phase:
        self.set_status(m, status, message)
        ph = Phase(kind, m.gen, **kw)
        m.phase = ph
        sid, gen = m.system_id, m.gen
        self._sched.call_later(self.timing.node_timeout, lambda: self._timeout(sid, gen))
        return ph

    def _current(self, sid: str, gen: int) -> Machine | None:
        m = self.state.machines.get(sid)
        return m if m is not None and m.gen == gen else None

    def _timeout(self, sid: str, gen: int) -> None:
        with self.lock:
            m = self._current(sid, gen)
            if m is None or m.phase is None or m.phase.progressed or m.status not in PHASES:
                return
            failed, operation = PHASES[m.status]
            why = f"Node operation '{operation}' timed out after {self.timing.node_timeout:g} seconds."
            if m.status == S.COMMISSIONING:
                m.commissioning_status = SCRIPT_FAILED
            self.set_status(m, failed, f"Marking node failed - {why}")
            m.error_description = why
            log.info("%s (%s): %s", m.hostname, sid, why)

    def _take_fault(self, phase: str) -> bool:
        if self.fail_counts[phase] > 0:
            self.fail_counts[phase] -= 1
            return True
        return False

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        self._sched.call_later(delay, fn)

    # --- the per-machine work queue -----------------------------------------------------------
    def enqueue(self, sid: str, work: Callable[[], None]) -> None:
        """Run ``work`` on the pool after the machine's earlier work."""
        with self.lock:
            if self._stopped:
                return
            self._queues.setdefault(sid, deque()).append(work)
            if sid not in self._busy:
                self._busy.add(sid)
                self._pool.submit(self._drain, sid)

    def _drain(self, sid: str) -> None:
        while True:
            with self.lock:
                q = self._queues.get(sid)
                if not q or self._stopped:
                    self._busy.discard(sid)
                    self._queues.pop(sid, None)
                    return
                work = q.popleft()
            try:
                work()
            except Exception:
                log.exception("machine %s: background work failed", sid)

    def power_action(
        self, m: Machine, action: str, *, soft: bool = False, then: Callable[[Machine, str | None], None] | None = None
    ) -> None:
        """Queue a BMC power action; ``then(machine, error)`` runs under the lock afterwards if
        the machine is still in the same phase. Manual power does nothing (MAAS's manual driver)."""
        sid, gen = m.system_id, m.gen
        params = dict(m.power_parameters)
        manual = m.power_type != "ipmi"

        def work() -> None:
            err: str | None = None
            if not manual:
                try:
                    if action == "on":
                        self.power.power_on(params)
                    else:
                        self.power.power_off(params, soft=soft)
                except Exception as exc:  # noqa: BLE001 - reported as data
                    err = str(exc) or type(exc).__name__
            with self.lock:
                m2 = self.state.machines.get(sid)
                if m2 is None:
                    return
                if manual:
                    m2.power_state = "unknown"
                elif err is None:
                    m2.power_state = "on" if action == "on" else "off"
                else:
                    m2.power_state = "error"
                if m2.gen != gen:
                    return
                if err is not None:
                    verb = "on" if action == "on" else "off"
                    m2.status_message = f"Failed to power {verb} node - Power {verb} for the node failed: {err}"
                if then is not None:
                    then(m2, err)

        self.enqueue(sid, work)

    def query_power(self, m: Machine) -> Future:
        """A live BMC query, queued behind the machine's pending power actions."""
        fut: Future = Future()
        sid = m.system_id
        params = dict(m.power_parameters)
        manual = m.power_type != "ipmi"

        def work() -> None:
            state = "unknown" if manual else self.power.query(params)
            with self.lock:
                m2 = self.state.machines.get(sid)
                if m2 is not None:
                    m2.power_state = state
            fut.set_result(state)

        self.enqueue(sid, work)
        return fut

    # --- commissioning --------------------------------------------------------------------------
    def start_commissioning(self, m: Machine, *, skip_networking: bool = False) -> None:
        self._begin(m, S.COMMISSIONING, "commission", "Commissioning", skip_networking=skip_networking)
        m.commissioning_status = SCRIPT_RUNNING
        self.power_action(m, "on")

    def _commission_done(self, sid: str, gen: int, boot: int) -> None:
        with self.lock:
            m = self._current(sid, gen)
            if m is None or m.status != S.COMMISSIONING or m.phase is None or m.phase.boot != boot:
                return  # another phase, or the boot it belonged to lost power
            m.phase.done = True
            if self._take_fault("commission"):
                m.commissioning_status = SCRIPT_FAILED
                why = "Commissioning failed, a commissioning script reported an error."
                self.set_status(m, S.FAILED_COMMISSIONING, f"Marking node failed - {why}")
                m.error_description = why
                return
            ph: Phase = m.phase
            self._record_hardware(m, ph.hardware or {})
            if not ph.skip_networking:
                self.reset_networking(m)
            m.commissioning_status = SCRIPT_PASSED
            m.status_message = "Powering off"

            def ready(m2: Machine, err: str | None) -> None:
                self.set_status(m2, S.READY, "Ready" if err is None else m2.status_message)

            self.power_action(m, "off", then=ready)

    def _record_hardware(self, m: Machine, hw: dict[str, Any]) -> None:
        if isinstance(hw.get("cpu_count"), int):
            m.cpu_count = hw["cpu_count"]
        if isinstance(hw.get("memory"), int):
            m.memory = hw["memory"]
        for mac in hw.get("macs", []) or []:
            mac = str(mac).lower()
            if mac in self.state.by_mac:
                continue
            iid = self.state.new_iface_id()
            m.interfaces[iid] = Interface(iid, self.next_iface_name(m), "physical", mac, self.state.pxe_vlan_id)
            self.state.by_mac[mac] = m.system_id

    def next_iface_name(self, m: Machine) -> str:
        used = {i.name for i in m.interfaces.values()}
        n = 0
        while f"eth{n}" in used:
            n += 1
        return f"eth{n}"

    def reset_networking(self, m: Machine) -> None:
        """What commissioning leaves: every NIC physical on the PXE VLAN, bonds gone, the boot
        NIC AUTO-linked to the PXE subnet (MAAS's initial networking configuration)."""
        for iid in [i.id for i in m.interfaces.values() if i.type != "physical"]:
            del m.interfaces[iid]
        for iface in m.interfaces.values():
            iface.vlan_id = self.state.pxe_vlan_id
            iface.links = []
            iface.parents = []
        boot = m.interfaces.get(m.boot_interface_id or -1)
        if boot is not None:
            boot.links = [Link(self.state.new_link_id(), "auto", self.state.pxe_subnet_id)]

    # --- deployment ------------------------------------------------------------------------------
    def start_deploying(self, m: Machine, image: str) -> None:
        self._begin(m, S.DEPLOYING, "deploy", "Deploying", image=image)
        self.power_action(m, "on")

    def _deploy_done(self, sid: str, gen: int, boot: int) -> None:
        with self.lock:
            m = self._current(sid, gen)
            if m is None or m.status != S.DEPLOYING or m.phase is None or m.phase.boot != boot:
                return  # another phase, or the boot it belonged to lost power
            m.phase.done = True
            if self._take_fault("deploy"):
                why = "Installation failed (refer to the installation log for more information)."
                self.set_status(m, S.FAILED_DEPLOYMENT, f"Marking node failed - {why}")
                m.error_description = why
                return
            ph: Phase = m.phase
            mac, image = ph.mac or m.boot_mac or "", ph.image
            hooks = self.hooks

        def work() -> None:
            if hooks is not None:
                try:
                    hooks.install(mac, image)
                except Exception as exc:  # noqa: BLE001 - reported as data
                    with self.lock:
                        m2 = self._current(sid, gen)
                        if m2 is not None:
                            self.set_status(
                                m2, S.FAILED_DEPLOYMENT, f"Marking node failed - Installation failed: {exc}"
                            )
                    return
            with self.lock:
                m2 = self._current(sid, gen)
                if m2 is None:
                    return
                self.set_status(m2, S.DEPLOYED, "Deployed")
                m2.netboot = False
                self.assign_ips(m2)
            if hooks is not None:
                hooks.reboot(mac)  # curtin's power_state: reboot

        self.enqueue(sid, work)

    def assign_ips(self, m: Machine) -> None:
        for iface in m.interfaces.values():
            for link in iface.links:
                if link.mode == "auto" and link.subnet_id is not None and not link.ip:
                    link.ip = self.state.allocate_ip(self.state.subnets[link.subnet_id])

    def render_preseed(self, m: Machine) -> preseed.RenderedPreseed:
        node = preseed.NodeView(
            system_id=m.system_id,
            hostname=m.hostname,
            fqdn=m.fqdn,
            architecture=m.architecture,
            osystem=m.osystem,
            distro_series=m.distro_series,
        )
        return preseed.render(self.preseed_dir, node, self.preseed_context(m))

    # --- release and disk erasure ---------------------------------------------------------------
    def start_release(self, m: Machine, *, erase_mode: str | None) -> None:
        m.osystem, m.distro_series, m.hwe_kernel = "", "", None
        m.netboot = True
        if erase_mode:
            self._begin(m, S.DISK_ERASING, "erase", "Erasing disk", erase_mode=erase_mode)
            self.power_action(m, "on")
            return
        ph = self._begin(m, S.RELEASING, "release", "Releasing")
        sid, gen = m.system_id, m.gen

        def powered_off(m2: Machine, err: str | None) -> None:
            if err is None:
                ph.progressed = True
                self._later(self.timing.release, lambda: self._release_done(sid, gen))

        self.power_action(m, "off", then=powered_off)

    def _release_done(self, sid: str, gen: int) -> None:
        with self.lock:
            m = self._current(sid, gen)
            if m is None or m.status != S.RELEASING:
                return
            if self._take_fault("release"):
                why = "Release failed, the node did not report back."
                self.set_status(m, S.FAILED_RELEASING, f"Marking node failed - {why}")
                m.error_description = why
                return
            self.finish_release(m)

    def finish_release(self, m: Machine) -> None:
        self.set_status(m, S.READY, "Released")
        m.owner = None
        m.agent_name = ""
        m.user_data = ""
        m.error_description = ""
        m.osystem, m.distro_series, m.hwe_kernel = "", "", None
        m.netboot = True
        self.release_ips(m)

    def release_ips(self, m: Machine) -> None:
        """AUTO links give their address back on release (STATIC ones keep it)."""
        for iface in m.interfaces.values():
            for link in iface.links:
                if link.mode == "auto":
                    link.ip = None

    def _erase_done(self, sid: str, gen: int, boot: int) -> None:
        with self.lock:
            m = self._current(sid, gen)
            if m is None or m.status != S.DISK_ERASING or m.phase is None or m.phase.boot != boot:
                return  # another phase, or the boot it belonged to lost power
            m.phase.done = True
            if self._take_fault("erase"):
                why = "Failed to erase disks."
                self.set_status(m, S.FAILED_DISK_ERASING, f"Marking node failed - {why}")
                m.error_description = why
                return
            ph: Phase = m.phase
            mac = ph.mac or m.boot_mac or ""
            hooks = self.hooks
            m.status_message = "Disk erased, powering off"

        def work() -> None:
            if hooks is not None:
                try:
                    hooks.wipe(mac)
                except Exception as exc:  # noqa: BLE001 - reported as data
                    with self.lock:
                        m2 = self._current(sid, gen)
                        if m2 is not None:
                            self.set_status(
                                m2, S.FAILED_DISK_ERASING, f"Marking node failed - Failed to erase disks: {exc}"
                            )
                    return
            with self.lock:
                m2 = self._current(sid, gen)
                if m2 is not None:
                    self.power_action(m2, "off", then=lambda m3, err: self.finish_release(m3))

        self.enqueue(sid, work)

    def erase_seconds(self, mode: str) -> float:
        return {
            "erase": self.timing.erase,
            "quick_erase": self.timing.quick_erase,
            "secure_erase": self.timing.secure_erase,
        }[mode]

    # --- the physical world reports in ------------------------------------------------------------
    def on_netboot(self, mac: str, hardware: dict[str, Any]) -> str | None:
        mac = (mac or "").strip().lower()
        with self.lock:
            sid = self.state.by_mac.get(mac)
            m = self.state.machines.get(sid) if sid else None
            if m is None:
                return None
            m.power_state = "on"
            if m.status == S.DEPLOYED or not m.netboot:
                return "local"
            ph: Phase | None = m.phase
            if ph is None or ph.gen != m.gen or ph.kind not in NETBOOT_ANSWER:
                return None
            if ph.progressed:
                return NETBOOT_ANSWER[ph.kind]
            sid, gen = m.system_id, m.gen
            ph.boot += 1
            boot = ph.boot
            if ph.kind == "deploy":
                try:
                    self.render_preseed(m)  # what curtin fetches now; MAAS re-renders it
                except preseed.PreseedError as exc:
                    why = f"Failed to render preseed: {exc}"
                    self.set_status(m, S.FAILED_DEPLOYMENT, f"Marking node failed - {why}")
                    m.error_description = why
                    return None
                m.status_message = "Installing OS"
                self._later(self.timing.deploy, lambda: self._deploy_done(sid, gen, boot))
            elif ph.kind == "commission":
                m.status_message = "Gathering information"
                ph.hardware = dict(hardware or {})
                self._later(self.timing.commission, lambda: self._commission_done(sid, gen, boot))
            else:
                m.status_message = "Erasing disk"
                self._later(self.erase_seconds(ph.erase_mode), lambda: self._erase_done(sid, gen, boot))
            ph.progressed = True
            ph.mac = mac
            return NETBOOT_ANSWER[ph.kind]

    def on_power_lost(self, mac: str) -> None:
        """The machine lost power (an IPMI power-off, a pulled cord) while MAAS's ephemeral
        environment ran a phase: that run is gone. Real MAAS hears nothing more from it and
        fails the phase when its status expires (``node_timeout`` after the last sign of life);
        so here: the pending completion is dropped, and unless the machine PXE-boots into the
        phase again in time, the timeout fails it (a deploy becomes Failed deployment)."""
        mac = (mac or "").strip().lower()
        with self.lock:
            sid = self.state.by_mac.get(mac)
            m = self.state.machines.get(sid) if sid else None
            if m is None:
                return
            ph: Phase | None = m.phase
            if ph is None or ph.gen != m.gen or ph.kind not in NETBOOT_ANSWER or not ph.progressed or ph.done:
                return
            ph.progressed = False
            ph.boot += 1
            m.status_message = f"{NETBOOT_ANSWER[ph.kind].capitalize()} interrupted: the machine lost power"
            sid, gen = m.system_id, m.gen
            self._sched.call_later(self.timing.node_timeout, lambda: self._timeout(sid, gen))
            log.info("%s (%s): power lost during %s", m.hostname, sid, ph.kind)

    # --- operator actions ------------------------------------------------------------------------
    def abort(self, m: Machine) -> None:
        if m.status == S.DEPLOYING:
            self.set_status(m, S.ALLOCATED, "Aborted deployment")
        elif m.status == S.COMMISSIONING:
            m.commissioning_status = SCRIPT_FAILED
            self.set_status(m, S.NEW, "Aborted commissioning")
        elif m.status == S.DISK_ERASING:
            self.set_status(m, S.FAILED_DISK_ERASING, "Aborted disk erasing")
        else:
            raise IllegalTransition(f"abort from {m.status.label}")
        self.power_action(m, "off")

    def mark_broken(self, m: Machine, comment: str) -> None:
        message = f"Marking node broken - {comment}" if comment else "Marking node broken"
        if m.status == S.DEPLOYED:
            m.previous_status = S.DEPLOYED
            self.set_status(m, S.BROKEN, message)
        else:
            releasable = m.status in (
                S.ALLOCATED,
                S.RESERVED,
                S.DEPLOYING,
                S.FAILED_DEPLOYMENT,
                S.FAILED_DISK_ERASING,
                S.FAILED_RELEASING,
            )
            m.previous_status = None
            self.set_status(m, S.BROKEN, message)
            if releasable:
                m.owner = None
                m.osystem, m.distro_series, m.hwe_kernel = "", "", None
                m.netboot = True
                self.release_ips(m)
                self.power_action(m, "off")
        m.error_description = comment

    def mark_fixed(self, m: Machine) -> None:
        if m.previous_status == S.DEPLOYED and m.owner is not None:
            self.set_status(m, S.DEPLOYED, "Marking node fixed")
        else:
            self.set_status(m, S.READY, "Marking node fixed")
            m.owner = None
        m.previous_status = None
        m.error_description = ""

    def allocate(self, m: Machine, *, agent_name: str = "") -> None:
        self.set_status(m, S.ALLOCATED, f"User acquiring node - ({USER})")
        m.owner = USER
        m.agent_name = agent_name
