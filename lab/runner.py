"""A whole lab in one object: switches, BMCs, MAAS and the world model that joins them."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from typing import Any

from metalflow.lab.spec import LabSpec
from metalflow.lab.world import World

log = logging.getLogger(__name__)


def power_parameters(spec: LabSpec, host_name: str) -> dict[str, str]:
    """MAAS ipmi power parameters for a lab host (``addr:port`` only when not on 623)."""
    bmc = spec.host(host_name).bmc
    address = bmc.address if bmc.port == 623 else f"{bmc.address}:{bmc.port}"
    return {
        "power_address": address,
        "power_user": bmc.username,
        "power_pass": bmc.password,
        "power_driver": "LAN_2_0",
    }


class Lab:
    """Start with ``start()`` (or ``with Lab(spec) as lab:``); every part listens on return.

    ``enlist``: ``"none"`` leaves MAAS empty (hosts are registered and commissioned through the
    API, as on a new site); ``"ready"`` preloads every host into MAAS as Ready (benchmarks).
    """

    def __init__(self, spec: LabSpec, *, enlist: str = "none"):
        if enlist not in ("none", "ready"):
            raise ValueError("enlist must be 'none' or 'ready'")
        self.spec = spec
        self.enlist = enlist
        self.world = World(spec)
        self.switches: dict[str, Any] = {}
        self.bmcs: Any = None
        self.maas: Any = None
        self.control: Any = None
        self._started = False

    def start(self) -> Lab:
        from metalflow.lab.bmc import BmcFleet
        from metalflow.lab.control import ControlServer
        from metalflow.lab.maas import IpmiPowerDriver, MaasSim
        from metalflow.lab.switch import PortVlans, SwitchSim

        spec = self.spec
        t0 = time.monotonic()
        if spec.maas.preseed_dir:
            os.makedirs(spec.maas.preseed_dir, exist_ok=True)
        pxe = spec.maas.pxe_vlan
        try:
            for sw in spec.switches:
                cabled = [n.port for h in spec.hosts for n in h.nics if n.switch == sw.name]
                initial = {p: PortVlans(untagged=pxe, tagged=frozenset()) for p in cabled}
                self.switches[sw.name] = SwitchSim(sw, initial=initial)
                self.switches[sw.name].start()
            self.bmcs = BmcFleet(
                [h.bmc for h in spec.hosts],
                timing=spec.timing,
                processes=spec.bmc_processes,
                on_event=self.world.on_bmc_event,
            )
            self.bmcs.start()
            self.maas = MaasSim(spec.maas, timing=spec.timing, power=IpmiPowerDriver(), hooks=self.world)
            self.world.attach(maas=self.maas, bmcs=self.bmcs, switches=self.switches)
            self.maas.start()
            if self.enlist == "ready":
                for h in spec.hosts:
                    self.maas.add_machine(
                        h.name,
                        list(h.macs),
                        power_parameters(spec, h.name),
                        status=4,
                        cpu_count=h.cpu_count,
                        memory=h.memory_mb,
                    )
            self.control = ControlServer(self, spec.control_address, spec.control_port)
            self.control.start()
        except BaseException:
            self.stop()
            raise
        self._started = True
        log.info("lab up in %.1f s: %d hosts, %d switches", time.monotonic() - t0, len(spec.hosts), len(spec.switches))
        return self

    def stop(self) -> None:
        for part in (self.control, self.maas):
            if part is not None:
                try:
                    part.stop()
                except Exception:
                    log.exception("stopping %s", type(part).__name__)
        if self.bmcs is not None:
            try:
                self.bmcs.stop()
            except Exception:
                log.exception("stopping BMCs")
        for sw in self.switches.values():
            try:
                sw.stop()
            except Exception:
                log.exception("stopping switch")
        self.world.stop()
        self._started = False

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def manifest(self) -> dict:
        return self.spec.manifest()

    def write_manifest(self, path: str) -> None:
        """Atomically, owner-only (it holds the lab's credentials)."""
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".manifest-")
        with os.fdopen(fd, "w") as f:
            json.dump(self.manifest(), f, indent=2)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    # --- one place for every fault knob (the control API and tests use these) --------------
    def state(self) -> dict:
        return {
            "hosts": {name: self.world.host_state(name) for name in self.world.hosts},
            "switches": {name: sw.snapshot() for name, sw in self.switches.items()},
            "maas": self.maas.snapshot(),
        }
