"""A shim for three concurrency bugs in pyghmi 1.6.19's client. Remove it once pyghmi ships fixes.

pyghmi keeps every session of a process in one I/O thread. A caller that waits for a reply
puts ``(deadline, event, address)`` on ``ioqueue`` and sleeps on the event; the I/O thread,
after each ``select()``, reads every datagram into its session's ``pktqueue`` and then sets
the events of the waiters whose address just sent something.

1. **Lost wake-up** (the one ``ipmi.md`` measured). Stock ``Session.awaitresponse`` sends the
   request, only *then* registers its waiter, and never looks at ``pktqueue`` before sleeping.
   On a fast network the reply often arrives in between: the I/O thread queues it, finds no
   waiter and goes back to ``select()``; the caller sleeps until its retransmit timer fires
   (0.5 to 1.5 s) although the answer is there. ``_poller`` (the login path, through
   ``Session.wait_for_rsp``) has the same gap between its ``sessionqueue`` check and its wait.
   Fix: register the waiter first, then look for an already-queued reply, sleep only if there
   is none. Either the I/O thread queued the reply before we looked (we see it), or it queues
   it after our waiter is on ``ioqueue``, and the same I/O-thread pass that queued it drains
   ``ioqueue`` afterwards, finds our waiter and wakes it. A waiter left registered when we did
   not sleep is harmless: its event is set later, or expires, and nobody waits on it.
   Measured (``bench/ipmi_race.py``, 2-core machine): 2,000 sequential reads 3.7 to 21 s stock
   (4 to 27 stalls of 0.5 to 1 s), 0.9 to 1.3 s patched (none over 100 ms).

2. **Lock-order deadlock.** ``send_payload`` holds ``KEEPALIVE_SESSIONS`` and then takes
   ``WAITING_SESSIONS`` (in ``_xmit_packet``); ``wait_for_rsp`` and ``awaitresponse`` hold
   ``WAITING_SESSIONS`` while they call ``_timedout``, which takes ``KEEPALIVE_SESSIONS``
   (through ``send_payload`` or ``_mark_broken``). A thread retransmitting and a thread timing
   out deadlock, and with them every pyghmi call of the process, for ever: seen within a
   minute in the bulk sweep with two silent BMCs. Fix: ``_timedout`` runs with
   ``WAITING_SESSIONS`` released (the callers only walk a list they already took from the
   table), so no thread ever waits for ``KEEPALIVE_SESSIONS`` while holding the other lock.
   (Merging the two locks into one also removes the deadlock, but made a cold sweep of 1,000
   logins three times slower; we did not dig into why.)

3. **I/O thread blocking in recvfrom.** The I/O thread makes a socket non-blocking and then
   reads it, but ``_io_sendto`` makes the same socket blocking for every send from a caller
   thread; a send between the two leaves the I/O thread blocked in ``recvfrom`` on a drained
   socket, and no waiter of the process is woken again. Fix: read with ``MSG_DONTWAIT``, which
   does not depend on the socket's mode.

``patch_pyghmi()`` applies the three fixes and nothing else. It is idempotent, and applies
only to pyghmi versions we checked *and* only when ``pyghmi/ipmi/private/session.py`` is
byte for byte the file we checked (its sha256, as ``sha256sum`` prints it); otherwise it logs
a warning and leaves pyghmi alone. Call it once when a process starts, before pyghmi is in
use: the power-poll engine's worker processes do, ``tasks``' process runtime does for the
clients of the runs, and tests, benchmarks and lab tools that use ``BmcClient`` directly do
themselves. ``BmcClient`` does not: a side effect of the first client hid when the process's
pyghmi changed.

A residual gap we leave alone: when several threads log in at once, one thread may process
another's last login packet (``wait_for_rsp`` serves any session); the owner then sleeps until
the next packet of the process or its retransmit timer. Under load packets keep coming; with
only one login left it can cost up to a second.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = frozenset({"1.6.19"})

#: sha256 of pyghmi/ipmi/private/session.py as shipped in each supported version.
SESSION_SHA256 = frozenset({"77a324e9b3cdfb6079ddd9bf010e1c564f7d9e810aaa519170625a99aad6cec4"})


def _session_module() -> Any:  # pyghmi ships no types
    from pyghmi.ipmi.private import session

    return session


def session_source_digest() -> str:
    return hashlib.sha256(inspect.getsource(_session_module()).encode()).hexdigest()


def _wait_registered(timeout: float, address: object, ready: Callable[[], object]) -> None:
    """pyghmi's ``_io_wait`` with the order fixed: register, check ``ready()``, then sleep."""
    s = _session_module()
    event = threading.Event()
    deadline = timeout + s._monotonic_time()
    s.ioqueue.append((deadline, event, address))
    if ready():
        return  # the answer came before we registered: do not sleep on it
    if deadline < s.selectdeadline:
        # The I/O thread sleeps past our deadline: nudge it so it re-arms its select timeout.
        wake = s.iosockets[0]
        wake = getattr(wake, "fd", wake)  # eventlet's green socket, as pyghmi does
        wake.sendto(b"\x01", (s.myself, s.iosockets[0].getsockname()[1]))
    event.wait()


def _awaitresponse(self: Any, retry: bool, netfn: int, command: int) -> None:
    """``Session.awaitresponse`` from pyghmi 1.6.19 with the wait replaced by
    ``_wait_registered``; ready = a packet is queued for this session or the awaited response
    has already been handled (another thread may process our queue inside ``wait_for_rsp``)."""
    s = _session_module()
    self.awaitingresponse = True
    try:
        alltimeout = s._monotonic_time() + (self._getmaxtimeout() * 2)
        while (
            retry
            and s.unmatched(self.lastresponse, netfn, command)
            and (self.logging or self.logged or self.onlogpayload)
        ):
            timeout = self.expiration - s._monotonic_time()
            _wait_registered(
                timeout,
                self.sockaddr,
                lambda: self.pktqueue or not s.unmatched(self.lastresponse, netfn, command),
            )
            while self.iterwaiters:
                waiter = self.iterwaiters.pop()
                waiter({"success": True})
            self.process_pktqueue()
            if s._monotonic_time() > alltimeout:
                self._mark_broken()
                raise s.exc.IpmiException("Session no longer connected")
            with s.util.protect(s.WAITING_SESSIONS):
                if self in self.waiting_sessions and self.expiration < s._monotonic_time():
                    self.waiting_sessions.pop(self, None)
                    if not self.lastpayload and not self.logging:
                        return
                    self._timedout()
    finally:
        self.awaitingresponse = False


def _poller(timeout: float = 0) -> object:
    """``session._poller`` with the waiter registered before ``sessionqueue`` is checked."""
    s = _session_module()
    if s.sessionqueue:
        return True
    _wait_registered(timeout, None, lambda: s.sessionqueue)
    return s.sessionqueue


def _io_recvfrom(mysocket: Any, size: int) -> tuple[bytes, Any] | None:
    """``session._io_recvfrom`` that never blocks, whatever mode a sender left the socket in."""
    try:
        got: tuple[bytes, Any] = mysocket.recvfrom(size, socket.MSG_DONTWAIT)
        return got
    except OSError:
        return None


def _make_timedout(original: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``Session._timedout`` that releases ``WAITING_SESSIONS`` (an RLock, held perhaps several
    levels deep by this thread) for the duration of the call, then takes it back as it was
    (``_release_save``/``_acquire_restore``: what ``threading.Condition`` does around a wait)."""

    @functools.wraps(original)
    def _timedout(self: Any) -> Any:
        lock = _session_module().WAITING_SESSIONS
        if not lock._is_owned():
            return original(self)
        saved = lock._release_save()
        try:
            return original(self)
        finally:
            lock._acquire_restore(saved)

    _timedout.metalflow_shim = True  # type: ignore[attr-defined]  # how shim_active() recognises it
    return _timedout


def shim_active() -> bool:
    """True when pyghmi currently runs with all three fixes in place."""
    s = _session_module()
    return (
        s.Session.awaitresponse is _awaitresponse
        and s._poller is _poller
        and s._io_recvfrom is _io_recvfrom
        and getattr(s.Session._timedout, "metalflow_shim", False)
    )


def patch_pyghmi() -> bool:
    """Apply the fixes in this process; True if they are (now) in place.

    Safe to call any number of times (a later call finds the patch and returns). Returns
    False, with a warning, when pyghmi is not a version or source we checked.
    """
    s = _session_module()
    if shim_active():
        return True
    try:
        version = importlib.metadata.version("pyghmi")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    if version not in SUPPORTED_VERSIONS:
        log.warning(
            "pyghmi %s is not a version the pyghmi shim was checked against (%s); left unpatched",
            version,
            ", ".join(sorted(SUPPORTED_VERSIONS)),
        )
        return False
    try:
        digest = session_source_digest()
    except (OSError, TypeError) as exc:
        log.warning("cannot read pyghmi's session module (%s); pyghmi shim not applied", exc)
        return False
    if digest not in SESSION_SHA256:
        log.warning(
            "pyghmi %s: session.py differs from the checked source (sha256 %s); pyghmi shim not applied",
            version,
            digest,
        )
        return False
    if not hasattr(socket, "MSG_DONTWAIT"):
        log.warning("this platform has no MSG_DONTWAIT; pyghmi shim not applied")
        return False
    if not getattr(s.Session._timedout, "metalflow_shim", False):
        s.Session._timedout = _make_timedout(s.Session._timedout)
    s._io_recvfrom = _io_recvfrom
    s._poller = _poller
    s.Session.awaitresponse = _awaitresponse
    log.info("pyghmi %s: shim applied (lost wake-up, lock order, non-blocking reads)", version)
    return True
