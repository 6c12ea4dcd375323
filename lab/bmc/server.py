"""One simulated BMC: its UDP endpoint, its own RMCP+ session table and the RAKP handshake.

Written from the IPMI 2.0 specification (13.17 to 13.31) rather than on pyghmi's
``ServerSession``, whose sessions are keyed by client address (they collide across BMCs),
which forces cipher suite 3 on a client that offered 17, and which drops bad logins
silently instead of answering them. Here every BMC keys its sessions by the managed-system
session id it hands out, negotiates suite 3 (SHA-1) or 17 (SHA-256) as offered, and refuses
anything else with status "no cipher suite match".

Wrong credentials fail as on a real BMC: an unknown user gets RAKP 2 with "unauthorized
name"; a wrong password gets a RAKP 2 whose HMAC the client cannot verify (the BMC cannot
know the password is wrong before that); the fault ``reject_auth`` does the latter for
every login.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import struct
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from metalflow.lab.bmc import commands, wire
from metalflow.lab.bmc.commands import PRIV_ADMIN, PRIV_USER, BootParameters, Identity
from metalflow.lab.bmc.model import Machine
from metalflow.lab.spec import BmcSpec

log = logging.getLogger(__name__)

# RMCP+ status codes (table 13-15).
ST_OK = 0x00
ST_NO_RESOURCES = 0x01
ST_INVALID_SESSION_ID = 0x02
ST_INVALID_ROLE = 0x09
ST_UNAUTHORIZED_ROLE = 0x0A
ST_INVALID_NAME_LENGTH = 0x0C
ST_UNAUTHORIZED_NAME = 0x0D
ST_INVALID_ICV = 0x0F
ST_NO_CIPHER_SUITE_MATCH = 0x11
ST_ILLEGAL_PARAMETER = 0x12

CC_NOT_AVAILABLE_FOR_USER = 0x80  # Set Session Privilege Level
CC_EXCEEDS_LIMIT = 0x81
CC_INVALID_SESSION_ID = 0x87  # Close Session

MAX_SESSIONS = 32
IDLE_TIMEOUT = 60.0  # active sessions, as real BMCs (pyghmi keeps alive every ~25 s)
PENDING_TIMEOUT = 10.0  # half-open handshakes


@dataclass
class Session:
    """One RMCP+ session (mutable: the handshake fills it in step by step)."""

    managed_id: int
    remote_id: int
    suite: wire.CipherSuite
    max_priv: int
    last_seen: float
    active: bool = False
    rm: bytes = b""
    rc: bytes = b""
    role: int = 0
    username: bytes = b""
    kuid: bytes = b""
    sik: bytes = b""
    k1: bytes = b""
    aes_key: bytes = b""
    priv: int = PRIV_USER
    out_seq: int = 0
    last_request: tuple | None = None
    last_response: bytes = b""

    @property
    def remote(self) -> bytes:
        return struct.pack("<I", self.remote_id)

    @property
    def managed(self) -> bytes:
        return struct.pack("<I", self.managed_id)

    def user_tail(self) -> bytes:
        return bytes([self.role, len(self.username)]) + self.username


def bmc_guid(host: str) -> bytes:
    """A stable per-host system GUID (it takes part in the RAKP HMACs)."""
    return uuid.uuid5(uuid.NAMESPACE_DNS, f"{host}.bmc.metalflow-lab").bytes


class BmcServer(asyncio.DatagramProtocol):
    """The BMC of one simulated server, bound to its own address and port."""

    def __init__(
        self,
        spec: BmcSpec,
        machine: Machine,
        suites: list[wire.CipherSuite],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec
        self.machine = machine
        self.suites = suites
        self.clock = clock
        self.username = spec.username.encode()
        self.password = spec.password.encode()
        self.identity = Identity(guid=bmc_guid(spec.host))
        self.params = BootParameters()
        self.sessions: dict[int, Session] = {}
        self.transport: asyncio.DatagramTransport | None = None

    # -- asyncio ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if self.machine.fault == "silent":
            return
        try:
            reply = self.handle_datagram(data)
        except Exception:  # a malformed packet must never take the BMC (or its process) down
            log.exception("BMC %s: failed to handle a %d-byte datagram from %s", self.spec.host, len(data), addr)
            return
        if reply is None or self.transport is None:
            return
        if self.machine.fault == "slow" and self.machine.fault_delay > 0:
            asyncio.get_running_loop().call_later(self.machine.fault_delay, self._send, reply, addr)
        else:
            self._send(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("BMC %s: socket error %s", self.spec.host, exc)

    def _send(self, packet: bytes, addr: tuple) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(packet, addr)

    # -- dispatch -----------------------------------------------------------------------------
    def handle_datagram(self, data: bytes) -> bytes | None:
        """The reply to one datagram, or None to stay silent (as BMCs do on bad input)."""
        if data[:4] == b"\x06\x00\xff\x06":
            return wire.asf_pong(data)
        pkt = wire.parse_packet(data)
        if pkt is None:
            return None
        if pkt.authtype == wire.AUTHTYPE_NONE:
            return self._sessionless(pkt, ipmi15=True)
        if pkt.payload_type == wire.PT_OPEN_REQUEST:
            return self._open_session(pkt.payload)
        if pkt.payload_type == wire.PT_RAKP1:
            return self._rakp1(pkt.payload)
        if pkt.payload_type == wire.PT_RAKP3:
            return self._rakp3(pkt.payload)
        if pkt.payload_type == wire.PT_IPMI:
            if pkt.session_id == 0:
                return None if pkt.authenticated else self._sessionless(pkt, ipmi15=False)
            return self._in_session(pkt)
        return None

    def _sessionless(self, pkt: wire.Packet, *, ipmi15: bool) -> bytes | None:
        """Outside a session only discovery commands are answered; the rest is dropped."""
        req = wire.parse_request(pkt.payload)
        if req is None or req.netfn != commands.NETFN_APP:
            return None
        if req.cmd == 0x38:
            code, data = commands.channel_auth_capabilities(req)
        elif req.cmd == 0x54:
            code, data = commands.channel_cipher_suites(req, self.suites)
        elif req.cmd == 0x37:
            code, data = commands.CC_OK, self.identity.guid
        else:
            return None
        message = wire.build_response(req, code, data)
        if ipmi15:
            return wire.ipmi15_packet(message)
        return wire.rmcpp_packet(wire.PT_IPMI, 0, 0, message)

    # -- handshake ----------------------------------------------------------------------------
    def _open_session(self, p: bytes) -> bytes | None:
        if len(p) < 32:
            return None
        tag, remote = p[0], p[4:8]
        remote_id = struct.unpack("<I", remote)[0]

        def refuse(status: int) -> bytes:
            return wire.rmcpp_packet(wire.PT_OPEN_RESPONSE, 0, 0, bytes([tag, status, 0, 0]) + remote)

        if p[8] != 0 or p[16] != 1 or p[24] != 2:
            return refuse(ST_ILLEGAL_PARAMETER)
        if remote_id == 0:
            return refuse(ST_INVALID_SESSION_ID)
        requested = p[1] & 0x0F
        if requested > PRIV_ADMIN:
            return refuse(ST_INVALID_ROLE)
        offered = (p[12] & 0x3F, p[20] & 0x3F, p[28] & 0x3F)
        suite = next((s for s in self.suites if (s.auth, s.integrity, s.confidentiality) == offered), None)
        if suite is None:
            return refuse(ST_NO_CIPHER_SUITE_MATCH)
        if not self._make_room():
            return refuse(ST_NO_RESOURCES)
        managed_id = 0
        while managed_id == 0 or managed_id in self.sessions:
            managed_id = struct.unpack("<I", os.urandom(4))[0]
        max_priv = requested or PRIV_ADMIN
        self.sessions[managed_id] = Session(managed_id, remote_id, suite, max_priv, self.clock())
        body = bytes([tag, ST_OK, max_priv, 0]) + remote + struct.pack("<I", managed_id)
        body += bytes([0, 0, 0, 8, suite.auth, 0, 0, 0])
        body += bytes([1, 0, 0, 8, suite.integrity, 0, 0, 0])
        body += bytes([2, 0, 0, 8, suite.confidentiality, 0, 0, 0])
        return wire.rmcpp_packet(wire.PT_OPEN_RESPONSE, 0, 0, body)

    def _make_room(self) -> bool:
        if len(self.sessions) < MAX_SESSIONS:
            return True
        self.sweep()
        if len(self.sessions) < MAX_SESSIONS:
            return True
        pending = [s for s in self.sessions.values() if not s.active]
        if not pending:
            return False
        oldest = min(pending, key=lambda s: s.last_seen)
        del self.sessions[oldest.managed_id]
        return True

    def _rakp1(self, p: bytes) -> bytes | None:
        if len(p) < 28:
            return None
        tag = p[0]
        session = self.sessions.get(struct.unpack_from("<I", p, 4)[0])

        def refuse(status: int) -> bytes:
            remote = session.remote if session else b"\x00" * 4
            if session is not None and status != ST_INVALID_SESSION_ID:
                self.sessions.pop(session.managed_id, None)
            return wire.rmcpp_packet(wire.PT_RAKP2, 0, 0, bytes([tag, status, 0, 0]) + remote)

        if session is None or session.active:
            return refuse(ST_INVALID_SESSION_ID)
        role, ulen = p[24], p[27]
        username = p[28 : 28 + ulen]
        if ulen > 16 or len(username) != ulen:
            return refuse(ST_INVALID_NAME_LENGTH)
        priv = role & 0x0F
        if not 1 <= priv <= PRIV_ADMIN:
            return refuse(ST_INVALID_ROLE)
        if priv > session.max_priv:
            return refuse(ST_UNAUTHORIZED_ROLE)
        if username != self.username:
            return refuse(ST_UNAUTHORIZED_NAME)
        h = session.suite.hash
        session.rm, session.rc, session.role, session.username = p[8:24], os.urandom(16), role, username
        # reject_auth: sign with a key no client can know, exactly what a wrong password looks like.
        session.kuid = os.urandom(20) if self.machine.fault == "reject_auth" else self.password
        session.max_priv = min(session.max_priv, priv)
        session.last_seen = self.clock()
        guid = self.identity.guid
        signed = session.remote + session.managed + session.rm + session.rc + guid + session.user_tail()
        authcode = hmac.new(session.kuid, signed, h).digest()
        # Kg is not set on simulated BMCs, so Kuid stands in for it (13.31).
        session.sik = hmac.new(session.kuid, session.rm + session.rc + session.user_tail(), h).digest()
        session.k1 = hmac.new(session.sik, b"\x01" * 20, h).digest()
        session.aes_key = hmac.new(session.sik, b"\x02" * 20, h).digest()[:16]
        body = bytes([tag, ST_OK, 0, 0]) + session.remote + session.rc + guid + authcode
        return wire.rmcpp_packet(wire.PT_RAKP2, 0, 0, body)

    def _rakp3(self, p: bytes) -> bytes | None:
        if len(p) < 8:
            return None
        tag, status = p[0], p[1]
        session = self.sessions.get(struct.unpack_from("<I", p, 4)[0])

        def refuse(code: int) -> bytes:
            remote = session.remote if session else b"\x00" * 4
            if session is not None:
                self.sessions.pop(session.managed_id, None)
            return wire.rmcpp_packet(wire.PT_RAKP4, 0, 0, bytes([tag, code, 0, 0]) + remote)

        if session is None or not session.rc:
            return refuse(ST_INVALID_SESSION_ID)
        if status != ST_OK:  # the console rejected our RAKP 2: forget the session, say nothing
            self.sessions.pop(session.managed_id, None)
            return None
        h = session.suite.hash
        expected = hmac.new(session.kuid, session.rc + session.remote + session.user_tail(), h).digest()
        if not hmac.compare_digest(expected, p[8 : 8 + len(expected)]):
            return refuse(ST_INVALID_ICV)
        if not session.active:
            session.active = True
            session.priv = min(PRIV_USER, session.max_priv)
        session.last_seen = self.clock()
        icv = hmac.new(session.sik, session.rm + session.managed + self.identity.guid, h).digest()
        body = bytes([tag, ST_OK, 0, 0]) + session.remote + icv[: session.suite.icv_len]
        return wire.rmcpp_packet(wire.PT_RAKP4, 0, 0, body)

    # -- active sessions ----------------------------------------------------------------------
    def _in_session(self, pkt: wire.Packet) -> bytes | None:
        session = self.sessions.get(pkt.session_id)
        if session is None or not session.active or not pkt.authenticated or not pkt.encrypted:
            return None
        if not wire.verify_integrity(pkt, session.k1, session.suite):
            return None
        payload = wire.decrypt(pkt.payload, session.aes_key)
        req = None if payload is None else wire.parse_request(payload)
        if req is None:
            return None
        session.last_seen = self.clock()
        key = (req.netfn, req.cmd, req.rq_seq, req.rq_lun, req.data)
        if key == session.last_request:
            # A retransmission (the reply was lost or late): answer again, do not act again.
            return self._seal(session, session.last_response)
        closing = None
        if (req.netfn, req.cmd) == (commands.NETFN_APP, 0x3B):
            code, data = self._set_privilege(session, req)
        elif (req.netfn, req.cmd) == (commands.NETFN_APP, 0x3C):
            code, data, closing = self._close_session(session, req)
        else:
            code, data = commands.handle(req, session.priv, self.machine, self.params, self.identity, self.suites)
        message = wire.build_response(req, code, data)
        session.last_request, session.last_response = key, message
        reply = self._seal(session, message)
        if closing is not None:
            self.sessions.pop(closing, None)
        return reply

    def _seal(self, session: Session, message: bytes) -> bytes:
        session.out_seq = (session.out_seq + 1) & 0xFFFFFFFF or 1
        return wire.rmcpp_packet(
            wire.PT_IPMI,
            session.remote_id,
            session.out_seq,
            message,
            k1=session.k1,
            aes_key=session.aes_key,
            suite=session.suite,
        )

    @staticmethod
    def _set_privilege(session: Session, req: wire.Request) -> tuple[int, bytes]:
        if len(req.data) < 1:
            return commands.CC_BAD_LENGTH, b""
        wanted = req.data[0] & 0x0F
        if wanted == 0:
            return commands.CC_OK, bytes([session.priv])
        if wanted == 1 or wanted > PRIV_ADMIN:
            return CC_NOT_AVAILABLE_FOR_USER, b""
        if wanted > session.max_priv:
            return CC_EXCEEDS_LIMIT, b""
        session.priv = wanted
        return commands.CC_OK, bytes([wanted])

    def _close_session(self, session: Session, req: wire.Request) -> tuple[int, bytes, int | None]:
        if len(req.data) < 4:
            return commands.CC_BAD_LENGTH, b"", None
        target = struct.unpack_from("<I", req.data)[0]
        if target not in self.sessions:
            return CC_INVALID_SESSION_ID, b"", None
        if target != session.managed_id and session.priv < PRIV_ADMIN:
            return commands.CC_INSUFFICIENT_PRIVILEGE, b"", None
        return commands.CC_OK, b"", target

    def sweep(self, now: float | None = None) -> None:
        """Forget idle sessions (60 s, as real BMCs) and abandoned handshakes (10 s)."""
        now = self.clock() if now is None else now
        for sid, s in list(self.sessions.items()):
            if now - s.last_seen > (IDLE_TIMEOUT if s.active else PENDING_TIMEOUT):
                del self.sessions[sid]
