"""The lab's control API: read the whole world, inject faults, change things behind the
back of the system under test. JSON over HTTP on the manifest's ``lab.control_url``.

    GET  /state                         every host (power, boot device, what runs, its ports), switches, MAAS
    GET  /hosts/<name>                  one host
    POST /faults/maas                   {"mode": "503"|"409", "count": N, "retry_after": S}
                                        | {"fail_next": "deploy"|"commission"|"erase"|"release", "count": N}
                                        | {"delay": S}
    POST /faults/bmc/<host>             {"mode": "none"|"silent"|"slow"|"ignore_soft_off"|"reject_auth", "delay": S}
    POST /faults/switch/<name>          {"mode": "none"|"drop_session"|"reject_login"|"slow"|"wrong_readback"|"busy",
                                         "after": N, "count": N, "delay": S}
    POST /power/<host>                  {"on": true|false}     (someone pressed the power button)
    POST /ports/<switch>                {"port": "1/1/1", "untagged": 10|null, "tagged": [100]}   (drift)
    POST /reset                         clear every fault (MAAS errors, delay and fail_next too)
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from metalflow.lab.maas.lifecycle import FAULT_PHASES

log = logging.getLogger(__name__)


class ControlError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ControlServer:
    def __init__(self, lab: Any, address: str, port: int):
        self.lab = lab
        handler = type("Handler", (_Handler,), {"lab": lab})
        self.httpd = ThreadingHTTPServer((address, port), handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="lab-control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _host(lab: Any, name: str) -> str:
    try:
        lab.spec.host(name)
    except KeyError:
        names = [h.name for h in lab.spec.hosts]
        raise ControlError(404, f"no host {name!r} in this lab (hosts {names[0]} to {names[-1]})") from None
    return name


def _switch(lab: Any, name: str) -> Any:
    sw = lab.switches.get(name)
    if sw is None:
        raise ControlError(404, f"no switch {name!r} in this lab (switches: {', '.join(sorted(lab.switches))})")
    return sw


def _need(body: dict, key: str, kind: type) -> Any:
    if key not in body:
        raise ControlError(400, f"missing field {key!r}")
    value = body[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ControlError(400, f"field {key!r} must be {kind.__name__}")
    return value


class _Handler(BaseHTTPRequestHandler):
    lab: Any = None
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:  # keep the console quiet
        log.debug("control: " + fmt, *args)

    def _reply(self, status: int, payload: Any) -> None:
        data = json.dumps(payload, default=str).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        if not n:
            return {}
        try:
            body = json.loads(self.rfile.read(n))
        except ValueError as exc:
            raise ControlError(400, f"body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ControlError(400, "body must be a JSON object")
        return body

    def _route(self, method: str) -> None:
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        try:
            body = self._body() if method == "POST" else {}
            self._reply(200, self._dispatch(method, parts, body))
        except ControlError as exc:
            self._reply(exc.status, {"error": str(exc)})
        except KeyError as exc:  # e.g. a port the switch does not have
            self._reply(404, {"error": str(exc.args[0]) if exc.args else "not found"})
        except (TypeError, ValueError) as exc:
            self._reply(400, {"error": str(exc)})
        except Exception as exc:  # e.g. a BMC process gone: still a JSON answer, never a hang-up
            log.exception("control: %s %s failed", method, self.path)
            self._reply(500, {"error": f"{type(exc).__name__}: {exc}"})

    def _dispatch(self, method: str, parts: list[str], body: dict) -> Any:
        lab = self.lab
        if method == "GET" and parts == ["state"]:
            return lab.state()
        if method == "GET" and parts == ["manifest"]:
            return lab.manifest()
        if method == "GET" and len(parts) == 2 and parts[0] == "hosts":
            return lab.world.host_state(_host(lab, parts[1]))
        if method != "POST":
            raise ControlError(404, f"no such endpoint: {method} /{'/'.join(parts)}")
        if parts == ["faults", "maas"]:
            if "fail_next" in body:
                lab.maas.fail_next(_need(body, "fail_next", str), int(body.get("count", 1)))
            elif "delay" in body and "mode" not in body:
                lab.maas.set_delay(float(body["delay"]))
            else:
                mode = _need(body, "mode", str)
                if mode not in ("503", "409", "none"):
                    raise ControlError(400, "mode must be '503', '409' or 'none'")
                lab.maas.set_fault(mode, int(body.get("count", 1)), int(body.get("retry_after", 1)))
            return {"ok": True}
        if len(parts) == 3 and parts[:2] == ["faults", "bmc"]:
            lab.bmcs.set_fault(_host(lab, parts[2]), _need(body, "mode", str), float(body.get("delay", 0.0)))
            return {"ok": True}
        if len(parts) == 3 and parts[:2] == ["faults", "switch"]:
            sw = _switch(lab, parts[2])
            sw.set_fault(
                _need(body, "mode", str),
                after=int(body.get("after", 0)),
                delay=float(body.get("delay", 0.0)),
                count=int(body.get("count", 1)),
            )
            return {"ok": True}
        if len(parts) == 2 and parts[0] == "power":
            lab.bmcs.set_power(_host(lab, parts[1]), bool(_need(body, "on", bool)))
            return {"ok": True}
        if len(parts) == 2 and parts[0] == "ports":
            from metalflow.lab.switch import PortVlans

            sw = _switch(lab, parts[1])
            untagged = body.get("untagged")
            tagged_list = body.get("tagged", [])
            if not isinstance(tagged_list, list) or not all(type(v) is int for v in tagged_list):
                raise ControlError(400, "field 'tagged' must be a list of VLAN ids")
            tagged = frozenset(tagged_list)
            sw.set_port_vlans(_need(body, "port", str), PortVlans(untagged=untagged, tagged=tagged))
            return {"ok": True}
        if parts == ["reset"]:
            lab.maas.set_fault("none", 0, 0)
            lab.maas.set_delay(0.0)
            for phase in FAULT_PHASES:
                lab.maas.fail_next(phase, 0)
            for h in lab.spec.hosts:
                lab.bmcs.set_fault(h.name, "none", 0.0)
            for sw in lab.switches.values():
                sw.set_fault("none")
            return {"ok": True}
        raise ControlError(404, f"no such endpoint: POST /{'/'.join(parts)}")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_DELETE(self) -> None:
        self._route("DELETE")
