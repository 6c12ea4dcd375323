"""A BMC serving process: ``python -m metalflow.lab.bmc.worker CMD_FD EVENT_FD``.

Started by ``BmcFleet`` as a plain subprocess (not multiprocessing's spawn or fork: the
parent may be a CLI whose ``__main__`` imports Prefect, and may run HTTP and SSH threads),
it serves a slice of the fleet's BMCs from one asyncio loop (epoll: only ready sockets are
read, sends never block). Two ``multiprocessing.connection`` channels link it to the parent:

- commands: the parent sends ``(n, op, args)``, the worker answers ``(n, "ok"|"error", value)``;
  the first message is the configuration, answered by ``(0, "ready", count)`` once every
  socket is bound, or ``(0, "bind_error", (host, address, port, reason))``;
- events: the worker sends ``("event", host, kind, bootdev, at)`` for every power transition.

The worker exits when told to stop or when the parent goes away (end of file on commands).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import signal
import socket
import sys
import time
from multiprocessing.connection import Connection

from metalflow.lab.bmc import wire
from metalflow.lab.bmc.model import Machine
from metalflow.lab.bmc.server import BmcServer
from metalflow.lab.spec import BmcSpec, Timing

log = logging.getLogger("lab.bmc.worker")

SWEEP_INTERVAL = 10.0


class Worker:
    def __init__(self, cmd: Connection, events: Connection, specs: list[BmcSpec], timing: Timing, suites: list[int]):
        self.cmd = cmd
        self.events = events
        self.specs = specs
        self.timing = timing
        self.suites = [wire.CIPHER_SUITES[s] for s in suites]
        self.servers: dict[str, BmcServer] = {}
        self.transports: list[asyncio.DatagramTransport] = []
        self.done: asyncio.Future | None = None

    def emit(self, host: str, kind: str, bootdev: str) -> None:
        try:
            self.events.send(("event", host, kind, bootdev, time.time()))
        except OSError:  # the parent is gone: nobody to serve
            self.finish()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.done = loop.create_future()
        for spec in self.specs:
            family = socket.AF_INET6 if ":" in spec.address else socket.AF_INET
            sock = None
            try:
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.bind((spec.address, spec.port))
            except OSError as exc:  # address in use or not local, or out of file descriptors
                if sock is not None:
                    sock.close()
                self.close()
                self.cmd.send((0, "bind_error", (spec.host, spec.address, spec.port, str(exc))))
                return
            sock.setblocking(False)
            machine = Machine(
                spec.host,
                soft_off_delay=self.timing.soft_off,
                emit=functools.partial(self.emit, spec.host),
                schedule=loop.call_later,
            )
            server = BmcServer(spec, machine, self.suites)
            transport, _ = await loop.create_datagram_endpoint(functools.partial(_same, server), sock=sock)
            self.transports.append(transport)
            self.servers[spec.host] = server
        self.cmd.send((0, "ready", len(self.servers)))
        loop.add_reader(self.cmd.fileno(), self.on_command)
        sweeper = loop.call_later(SWEEP_INTERVAL, self.sweep)
        try:
            await self.done
        finally:
            sweeper.cancel()
            loop.remove_reader(self.cmd.fileno())
            self.close()

    def sweep(self) -> None:
        now = time.monotonic()
        for server in self.servers.values():
            if server.sessions:
                server.sweep(now)
        asyncio.get_running_loop().call_later(SWEEP_INTERVAL, self.sweep)

    def finish(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        for transport in self.transports:
            transport.close()
        self.transports.clear()

    def on_command(self) -> None:
        try:
            n, op, args = self.cmd.recv()
        except (EOFError, OSError):
            self.finish()
            return
        try:
            value = self.execute(op, args)
            reply = (n, "ok", value)
        except Exception as exc:  # noqa: BLE001 - reported to the caller in the parent, with its type
            reply = (n, "error", (type(exc).__name__, str(exc)))
        try:
            self.cmd.send(reply)
        except OSError:
            self.finish()

    def execute(self, op: str, args: tuple):
        if op == "state":
            return self.servers[args[0]].machine.state()
        if op == "states":
            return {host: s.machine.state() for host, s in self.servers.items()}
        if op == "set_fault":
            host, mode, delay = args
            self.servers[host].machine.set_fault(mode, delay)
            return None
        if op == "set_power":
            host, on = args
            machine = self.servers[host].machine
            if on:
                machine.power_on(by_ipmi=False)
            else:
                machine.power_off(by_ipmi=False)
            return None
        if op == "stop":
            self.finish()
            return None
        raise ValueError(f"unknown worker operation {op!r}")


def _same(server: BmcServer) -> BmcServer:
    """The protocol factory's answer: each socket's one server (bound per loop iteration)."""
    return server


def raise_file_limit(sockets: int) -> None:
    """One socket per BMC: lift the soft open-files limit (often 1,024) toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = sockets + 64
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s bmc-worker %(levelname)s %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    cmd = Connection(int(argv[0]))
    events = Connection(int(argv[1]))
    try:
        config = cmd.recv()
    except EOFError:
        return 1
    raise_file_limit(len(config["specs"]))
    asyncio.run(Worker(cmd, events, config["specs"], config["timing"], config["suites"]).run())
    events.close()
    cmd.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
