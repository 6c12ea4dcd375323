"""``MaasSim``: a MAAS region controller over HTTP, for the lab and the tests."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from typing import Any

from metalflow.lab.maas import model
from metalflow.lab.maas.api.machines import create_machine
from metalflow.lab.maas.api.routes import Api
from metalflow.lab.maas.lifecycle import FAULT_PHASES, Lifecycle
from metalflow.lab.maas.model import Machine, State, normalize_mac, valid_mac
from metalflow.lab.maas.oauth import OAuthVerifier
from metalflow.lab.maas.preseed import iter_existing
from metalflow.lab.maas.server import Faults, MaasHttpServer, serve_forever_in_thread
from metalflow.lab.maas.status import NodeStatus
from metalflow.lab.maas.world import MachineHooks, PowerDriver
from metalflow.lab.spec import MaasSpec, Timing

log = logging.getLogger(__name__)


class MaasSim:
    """The MAAS region: REST API 2.0 with OAuth, node phases driven by the physical world.

    ``start()`` binds ``spec.address:spec.port`` (port 0: any free port; ``url`` tells which).
    The physical world calls ``on_netboot`` when a machine PXE-boots into MAAS; MAAS acts on it
    through ``power`` (its ipmi driver) and reports what the machine does on its own through
    ``hooks``. Faults (``set_fault``, ``fail_next``, ``set_delay``) are the lab's knobs.
    """

    def __init__(
        self,
        spec: MaasSpec,
        *,
        timing: Timing,
        power: PowerDriver,
        hooks: MachineHooks | None = None,
        seed: int | None = None,
    ):
        self.spec = spec
        self.timing = timing
        self.power = power
        self.hooks = hooks
        self._own_preseed_dir = not spec.preseed_dir
        self.preseed_dir = spec.preseed_dir or tempfile.mkdtemp(prefix="maas-preseeds-")
        os.makedirs(self.preseed_dir, exist_ok=True)
        self._lock = threading.RLock()
        self._faults = Faults()
        self._faults_lock = threading.Lock()
        self.state = State(pxe_vid=spec.pxe_vlan, images=spec.images, seed=seed)
        self._life = Lifecycle(
            self.state,
            self._lock,
            timing=timing,
            power=power,
            hooks=hooks,
            preseed_dir=self.preseed_dir,
            preseed_context=self._preseed_context,
        )
        self._api = Api(self.state, self._lock, self._life, base_url=lambda: self.url)
        self._verifier = OAuthVerifier(spec.consumer_key, spec.token_key, spec.token_secret)
        self._server: MaasHttpServer | None = None
        self._thread: threading.Thread | None = None
        self._port = spec.port

    # --- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://addr:port/MAAS/`` (what a client's ``MaasURL`` setting holds)."""
        return f"http://{self.spec.address}:{self._port}/MAAS/"

    @property
    def api_url(self) -> str:
        return f"{self.url}api/2.0/"

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = MaasHttpServer(
            (self.spec.address, self.spec.port), self._api, self._verifier, self._faults, self._faults_lock
        )
        self._port = self._server.server_address[1]
        self._thread = serve_forever_in_thread(self._server, f"maas-http-{self._port}")
        log.info("MAAS simulator listening on %s", self.url)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._life.stop()
        close = getattr(self.power, "close", None)
        if callable(close):
            close()
        if self._own_preseed_dir:
            shutil.rmtree(self.preseed_dir, ignore_errors=True)

    def __enter__(self) -> MaasSim:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the physical world --------------------------------------------------------------------
    def on_netboot(self, mac: str, hardware: dict) -> str | None:
        """A machine PXE-booted and reached MAAS. Returns what MAAS tells it to run:
        ``'commissioning'``, ``'deploying'``, ``'erasing'``, ``'local'`` (boot the disk), or
        ``None`` (unknown MAC or nothing to do: the machine sits at PXE)."""
        return self._life.on_netboot(mac, hardware)

    def on_power_lost(self, macs: list[str]) -> None:
        """A machine lost power: a phase its ephemeral environment was running is interrupted
        (and fails by ``node_timeout`` unless it PXE-boots back into it)."""
        for mac in macs:
            self._life.on_power_lost(mac)

    # --- lab preload ----------------------------------------------------------------------------
    def add_machine(
        self,
        hostname: str,
        macs: list[str],
        power_parameters: dict,
        *,
        status: int = NodeStatus.READY,
        cpu_count: int = 16,
        memory: int = 65536,
        architecture: str = "amd64/generic",
        power_type: str = "ipmi",
        distro_series: str = "ubuntu/jammy",
    ) -> str:
        """Preload a machine as if it had been enlisted and commissioned; returns its system_id.
        Owned statuses (Allocated, Deployed...) get the API user as owner; Deployed gets
        ``distro_series`` as its OS."""
        status = NodeStatus(status)
        bad = [m for m in macs if not valid_mac(m)]
        if not macs or bad:
            raise ValueError(f"add_machine {hostname}: bad or missing MAC addresses {bad or macs}")
        with self._lock:
            if self.state.hostname_taken(hostname):
                raise ValueError(f"add_machine: hostname {hostname!r} already exists")
            taken = [m for m in macs if normalize_mac(m) in self.state.by_mac]
            if taken:
                raise ValueError(f"add_machine {hostname}: MAC(s) already in use: {', '.join(taken)}")
            m = create_machine(
                self.state,
                self._life,
                hostname=hostname,
                macs=list(macs),
                architecture=architecture,
                power_type=power_type,
                power_parameters={k: str(v) for k, v in power_parameters.items()},
                cpu_count=cpu_count,
                memory=memory,
            )
            self._life.place(m, status, status.label)
            m.power_state = "off"
            if status != NodeStatus.NEW:
                m.commissioning_status = model.SCRIPT_PASSED
            if status in (
                NodeStatus.ALLOCATED,
                NodeStatus.DEPLOYING,
                NodeStatus.DEPLOYED,
                NodeStatus.FAILED_DEPLOYMENT,
            ):
                m.owner = model.USER
            if status == NodeStatus.DEPLOYED:
                image = self.state.find_image(distro_series)
                if image is not None:
                    m.osystem, m.distro_series = image.osystem, image.release
                m.netboot = False
                m.power_state = "on"
                self._life.assign_ips(m)
            return m.system_id

    # --- faults -------------------------------------------------------------------------------
    def set_fault(self, mode: str, count: int, retry_after: int = 1) -> None:
        """The next ``count`` authenticated API calls answer ``503`` (text) or ``409`` (HTML),
        both with ``Retry-After: retry_after``, and change nothing. ``"none"`` clears it."""
        if mode not in ("503", "409", "none"):
            raise ValueError("fault mode must be '503', '409' or 'none'")
        if count < 0 or retry_after < 0:
            raise ValueError("count and retry_after must not be negative")
        with self._faults_lock:
            self._faults.mode = mode if count > 0 else "none"
            self._faults.count = count if mode != "none" else 0
            self._faults.retry_after = retry_after

    def fail_next(self, phase: str, count: int = 1) -> None:
        """The next ``count`` phases of this kind end in their FAILED_* state."""
        if phase not in FAULT_PHASES:
            raise ValueError(f"phase must be one of {', '.join(FAULT_PHASES)}")
        with self._lock:
            self._life.fail_counts[phase] = max(0, int(count))

    def set_delay(self, seconds: float) -> None:
        """Delay every HTTP answer by ``seconds``."""
        if seconds < 0:
            raise ValueError("delay must not be negative")
        with self._faults_lock:
            self._faults.delay = float(seconds)

    # --- reading it all ------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            machines = [self._machine_summary(m) for m in sorted(self.state.machines.values(), key=lambda m: m.id)]
            fail_next = dict(self._life.fail_counts)
            tags = sorted(self.state.tags)
        with self._faults_lock:
            faults = {
                "mode": self._faults.mode,
                "count": self._faults.count,
                "retry_after": self._faults.retry_after,
                "delay": self._faults.delay,
            }
        return {
            "url": self.url,
            "machines": machines,
            "tags": tags,
            "faults": faults,
            "fail_next": fail_next,
            "preseed_dir": self.preseed_dir,
            "preseeds": list(iter_existing(self.preseed_dir)),
        }

    def _machine_summary(self, m: Machine) -> dict[str, Any]:
        st = self.state
        ifaces = []
        for i in m.interfaces.values():
            vlan = st.vlans.get(i.vlan_id) if i.vlan_id is not None else None
            ifaces.append(
                {
                    "id": i.id,
                    "name": i.name,
                    "type": i.type,
                    "mac": i.mac,
                    "vlan": vlan.vid if vlan else None,
                    "parents": [m.interfaces[p].name for p in i.parents if p in m.interfaces],
                    "params": dict(i.params) if isinstance(i.params, dict) else {},
                    "links": [
                        {
                            "id": lk.id,
                            "mode": lk.mode,
                            "subnet": st.subnets[lk.subnet_id].cidr if lk.subnet_id else None,
                            "ip": lk.ip,
                        }
                        for lk in i.links
                    ],
                }
            )
        return {
            "system_id": m.system_id,
            "hostname": m.hostname,
            "status": int(m.status),
            "status_name": m.status.label,
            "status_message": m.status_message,
            "owner": m.owner,
            "tags": sorted(m.tags),
            "osystem": m.osystem,
            "distro_series": m.distro_series,
            "power_state": m.power_state,
            "power_type": m.power_type,
            "netboot": m.netboot,
            "boot_mac": m.boot_mac,
            "interfaces": ifaces,
        }

    # --- preseed context ------------------------------------------------------------------------
    def _preseed_context(self, m: Machine) -> dict[str, Any]:
        """The variables MAAS gives a curtin template (``get_preseed_context`` +
        ``get_node_preseed_context`` + ``curtin_preseed``)."""
        base = self.url.rstrip("/")
        metadata = f"{base}/metadata/"
        return {
            "osystem": m.osystem,
            "release": m.distro_series,
            "server_host": self.spec.address,
            "server_url": f"{base}/api/2.0/machines/",
            "syslog_host_port": f"{self.spec.address}:5247",
            "http_proxy": f"http://{self.spec.address}:8000/",
            "third_party_drivers": True,
            "driver": {},
            "driver_package": "",
            "preseed_data": "",
            "node_disable_pxe_url": f"{metadata}latest/by-id/{m.system_id}/",
            "node_disable_pxe_data": "op=netboot_off",
            "license_key": "",
            "curtin_preseed": (
                "datasource:\n"
                "  MAAS:\n"
                f"    consumer_key: node-{m.system_id}\n"
                f"    metadata_url: {metadata}\n"
                f"    token_key: node-token-{m.system_id}\n"
                f"    token_secret: node-secret-{m.system_id}\n"
                "reporting:\n"
                "  maas:\n"
                f"    endpoint: {metadata}status/{m.system_id}\n"
                "    type: webhook\n"
            ),
        }
