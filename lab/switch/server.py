"""``SwitchSim``: one simulated ToR switch behind a real SSH server (paramiko, server side).

Each TCP connection gets its own thread (and paramiko's transport thread); each SSH channel
(an interactive shell, as netmiko opens, or an exec request) gets a thread running a
``CliSession`` over the switch's shared ``SwitchCore``. Password and keyboard-interactive
authentication are accepted with the spec's username and password.

The interactive loop echoes what is typed as it arrives, like a switch's tty, and answers
each line with its output and the next prompt in one write: netmiko reads until the echo and
then until the prompt, so it never falls back to its slow timing-based reads.
"""

from __future__ import annotations

import codecs
import hmac
import logging
import socket
import threading
from collections.abc import Mapping
from typing import Any

import paramiko

from .core import SwitchCore
from .dialect import dialect_for
from .model import PortVlans
from .session import CliSession, LineEditor

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0  # how long a new channel may take to ask for a shell or an exec
_POLL = 0.1  # how often idle connection threads look at the stop flag


class _HangupFilter(logging.Filter):
    """Drop paramiko's ERROR for a client that reset the connection: netmiko closes its socket
    right after sending "exit", with the switch's answer still unread, and a server does not
    treat a client hanging up as its own error."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Socket exception:") and "reset by peer" in msg)


def _ssh_logger(switch: str) -> str:
    name = f"{__name__}.ssh.{switch}"
    logger = logging.getLogger(name)
    if not any(isinstance(f, _HangupFilter) for f in logger.filters):
        logger.addFilter(_HangupFilter())
    return name


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class _SshServer(paramiko.ServerInterface):
    """The authentication and channel policy of one SSH connection."""

    def __init__(self, core: SwitchCore, username: str, password: str) -> None:
        self._core = core
        self._username = username
        self._password = password
        self._admitted: bool | None = None  # the reject_login fault is decided once per connection
        self._ki_username = ""
        self._lock = threading.Lock()
        self._requests: dict[int, tuple[str, str]] = {}
        self._events: dict[int, threading.Event] = {}

    # ---- authentication ------------------------------------------------------------------

    def get_allowed_auths(self, username: str) -> str:
        return "password,keyboard-interactive"

    def _verdict(self, username: str, password: str) -> int:
        if self._admitted is None:
            self._admitted = self._core.admit_login()
        ok = bool(self._admitted) and _same(username, self._username) and _same(password, self._password)
        self._core.note_login(ok)
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        return self._verdict(username, password)

    def check_auth_interactive(self, username: str, submethods: str) -> paramiko.InteractiveQuery:
        self._ki_username = username
        query = paramiko.InteractiveQuery("", "")
        query.add_prompt("Password: ", False)
        return query

    def check_auth_interactive_response(self, responses: list[str]) -> int:
        if len(responses) != 1:
            return paramiko.AUTH_FAILED
        return self._verdict(self._ki_username, responses[0])

    # ---- channels ------------------------------------------------------------------------

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind != "session":
            return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        with self._lock:
            self._events[chanid] = threading.Event()
        return paramiko.OPEN_SUCCEEDED

    def _record(self, channel: paramiko.Channel, kind: str, command: str = "") -> bool:
        with self._lock:
            event = self._events.get(channel.get_id())
            if event is None or event.is_set():
                return False
            self._requests[channel.get_id()] = (kind, command)
        event.set()
        return True

    def check_channel_pty_request(self, channel, term, width, height, pixelwidth, pixelheight, modes) -> bool:
        return True

    def check_channel_window_change_request(self, channel, width, height, pixelwidth, pixelheight) -> bool:
        return True

    def check_channel_shell_request(self, channel: paramiko.Channel) -> bool:
        return self._record(channel, "shell")

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        return self._record(channel, "exec", command.decode("utf-8", "replace"))

    def wait_request(self, channel: paramiko.Channel, timeout: float) -> tuple[str, str] | None:
        with self._lock:
            event = self._events.get(channel.get_id())
        if event is None or not event.wait(timeout):
            return None
        with self._lock:
            return self._requests.get(channel.get_id())


class SwitchSim:
    """A simulated switch: its CLI over SSH, its state, its fault knobs."""

    def __init__(
        self, spec: Any, *, host_key: paramiko.PKey | None = None, initial: Mapping[str, PortVlans] | None = None
    ) -> None:
        self.spec = spec
        self._core = SwitchCore(spec.name, tuple(spec.ports), dialect_for(spec.dialect), initial)
        # ECDSA P-256 takes about a millisecond to generate, so each switch gets its own key
        # without a process-wide cache.
        self._host_key = host_key or paramiko.ECDSAKey.generate()
        self._log_channel = _ssh_logger(spec.name)
        self._stop = threading.Event()
        self._guard = threading.RLock()
        self._listener: socket.socket | None = None
        self._bound: tuple[str, int] = (spec.address, spec.port)
        self._threads: set[threading.Thread] = set()
        self._transports: set[paramiko.Transport] = set()

    # ---- lifecycle -----------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self._bound

    @property
    def host_key(self) -> paramiko.PKey:
        return self._host_key

    def start(self) -> None:
        """Bind and listen; returns once connections are accepted."""
        with self._guard:
            if self._listener is not None:
                return
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.spec.address, self.spec.port))
                sock.listen(128)
            except OSError as e:
                sock.close()
                raise OSError(
                    e.errno,
                    f"switch {self.spec.name}: cannot listen on {self.spec.address}:{self.spec.port}: {e.strerror}",
                ) from e
            self._listener = sock
            self._bound = sock.getsockname()[:2]
            self._stop.clear()
            self._spawn(self._accept_loop, f"switch-{self.spec.name}-accept", sock)

    def stop(self) -> None:
        """Stop listening and close every session. Safe to call twice."""
        self._stop.set()
        with self._guard:
            listener, self._listener = self._listener, None
            transports = list(self._transports)
            threads = list(self._threads)
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for t in transports:
            self._abort(t)
        for th in threads:
            if th is not threading.current_thread():
                th.join(timeout=5)

    def __enter__(self) -> SwitchSim:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- state and faults ----------------------------------------------------------------

    def port_vlans(self, port: str) -> PortVlans:
        return self._core.port_vlans(port)

    def set_port_vlans(self, port: str, vlans: PortVlans) -> None:
        """Change a port behind the clients' back (drift), as someone on the console would."""
        self._core.set_port_vlans(port, vlans)

    def snapshot(self) -> dict:
        snap = self._core.snapshot()
        snap["address"] = list(self._bound)
        return snap

    def set_fault(self, mode: str = "none", *, after: int = 0, delay: float = 0.0, count: int = 1) -> None:
        """Arm a fault (replacing the current one); see ``core.FAULT_MODES``.

        A "configuration command" is any non-blank line typed in a configuration mode other
        than ``exit``, ``end`` and ``do ...``, counted over all sessions of the switch.

        drop_session: the transport is closed abruptly, with no reply, when a configuration
        command arrives after ``after`` more have gone through (the dropped one is not
        applied); this happens ``count`` times. reject_login: the next ``count`` connections
        fail authentication. slow: every non-blank line's answer waits ``delay`` seconds (the
        echo does not), until the fault is replaced. wrong_readback: the next ``count`` show
        commands report the running configuration as it was before the last change (the last
        command or ``set_port_vlans`` that changed it); ``port_vlans()`` always tells the
        truth. busy: the next ``count`` configuration commands fail with the dialect's
        transient "locked" error and change nothing.
        """
        self._core.set_fault(mode, after=after, delay=delay, count=count)

    # ---- connections ---------------------------------------------------------------------

    def _spawn(self, target: Any, name: str, *args: Any) -> None:
        def run() -> None:
            try:
                target(*args)
            except Exception:  # a thread must not die silently with an unexplained traceback
                log.exception("switch %s: %s failed", self.spec.name, name)
            finally:
                with self._guard:
                    self._threads.discard(threading.current_thread())

        th = threading.Thread(target=run, name=name, daemon=True)
        with self._guard:
            self._threads.add(th)
        th.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = listener.accept()
            except OSError:
                if self._stop.is_set():
                    return
                continue
            self._spawn(self._serve_connection, f"switch-{self.spec.name}-{peer[0]}:{peer[1]}", conn)

    def _serve_connection(self, conn: socket.socket) -> None:
        transport = paramiko.Transport(conn)
        transport.set_log_channel(self._log_channel)
        transport.add_server_key(self._host_key)
        server = _SshServer(self._core, self.spec.username, self.spec.password)
        with self._guard:
            if self._stop.is_set():
                conn.close()
                return
            self._transports.add(transport)
        try:
            transport.start_server(server=server)
            while transport.is_active() and not self._stop.is_set():
                chan = transport.accept(timeout=_POLL)
                if chan is not None:
                    self._spawn(self._serve_channel, f"switch-{self.spec.name}-chan", transport, server, chan)
        except (paramiko.SSHException, EOFError, OSError) as e:
            log.debug("switch %s: connection ended: %s", self.spec.name, e)
        finally:
            with self._guard:
                self._transports.discard(transport)
            transport.close()

    @staticmethod
    def _abort(transport: paramiko.Transport) -> None:
        """Close a connection abruptly: no reply, no SSH disconnect message."""
        sock = transport.sock
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        transport.close()

    def _serve_channel(self, transport: paramiko.Transport, server: _SshServer, chan: paramiko.Channel) -> None:
        request = server.wait_request(chan, REQUEST_TIMEOUT)
        if request is None:
            chan.close()
            return
        self._core.count("sessions")
        self._core.count("active_sessions")
        session = CliSession(self._core, hostname=self.spec.name, enable_secret=self.spec.enable_secret)
        try:
            if request[0] == "exec":
                self._run_exec(transport, chan, session, request[1])
            else:
                self._run_shell(transport, chan, session)
        except (OSError, EOFError, paramiko.SSHException) as e:
            log.debug("switch %s: session ended: %s", self.spec.name, e)
        finally:
            self._core.count("active_sessions", -1)
            try:
                chan.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass  # the client hung up first

    def _run_exec(
        self, transport: paramiko.Transport, chan: paramiko.Channel, session: CliSession, command: str
    ) -> None:
        reply = session.run_exec(command)
        if reply.delay:
            self._stop.wait(reply.delay)
        if reply.drop:
            self._abort(transport)
            return
        chan.sendall("".join(line + "\r\n" for line in reply.output).encode())
        chan.send_exit_status(1 if reply.failed else 0)
        chan.shutdown_write()

    def _run_shell(self, transport: paramiko.Transport, chan: paramiko.Channel, session: CliSession) -> None:
        chan.sendall(session.greeting().encode())
        editor = LineEditor()
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while not self._stop.is_set():
            data = chan.recv(4096)
            if not data:
                return
            out: list[str] = []
            for ch in decoder.decode(data):
                echo, line = editor.feed(ch, session.echo)
                if echo:
                    out.append(echo)
                if line is None:
                    continue
                reply = session.handle(line)
                if reply.delay or reply.drop:
                    self._flush(chan, out)  # the echo shows at once; the answer is what is late
                if reply.delay:
                    self._stop.wait(reply.delay)
                if reply.drop:
                    self._abort(transport)
                    return
                out.append("\r\n" + "".join(x + "\r\n" for x in reply.output) + reply.prompt)
                if reply.close:  # "exit": end the channel; the client then closes the connection
                    self._flush(chan, out)
                    chan.send_exit_status(0)
                    return
            self._flush(chan, out)

    @staticmethod
    def _flush(chan: paramiko.Channel, out: list[str]) -> None:
        if out:
            chan.sendall("".join(out).encode())
            out.clear()
