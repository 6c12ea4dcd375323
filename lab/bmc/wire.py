"""IPMI over LAN framing, written from the IPMI 2.0 specification (sections 13.6 to 13.33).

A UDP datagram is an RMCP header, then either an IPMI 1.5 session (only the sessionless,
unauthenticated form is served: Get Channel Authentication Capabilities and friends) or an
RMCP+ (IPMI 2.0) session header, payload and, when authenticated, a trailer with an integrity
check value. Payloads of an active session are AES-CBC-128 encrypted.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

RMCP_HEADER = b"\x06\x00\xff\x07"  # version 6, reserved, no RMCP ACK, class IPMI
RMCP_CLASS_ASF = 0x06
ASF_IANA = 4542

AUTHTYPE_NONE = 0x00
AUTHTYPE_RMCPP = 0x06

PT_IPMI = 0x00
PT_OPEN_REQUEST = 0x10
PT_OPEN_RESPONSE = 0x11
PT_RAKP1 = 0x12
PT_RAKP2 = 0x13
PT_RAKP3 = 0x14
PT_RAKP4 = 0x15
PT_ENCRYPTED = 0x80
PT_AUTHENTICATED = 0x40

NEXT_HEADER = 0x07

BMC_SLAVE_ADDRESS = 0x20


@dataclass(frozen=True)
class CipherSuite:
    """An RMCP+ cipher suite (IPMI 2.0 table 22-20): algorithm numbers and their hash."""

    id: int
    auth: int  # 1 RAKP-HMAC-SHA1, 3 RAKP-HMAC-SHA256
    integrity: int  # 1 HMAC-SHA1-96, 4 HMAC-SHA256-128
    confidentiality: int  # 1 AES-CBC-128
    hash: Callable[..., hashlib._Hash]
    icv_len: int  # bytes of the truncated integrity check value (RAKP4 and session trailer)


CIPHER_SUITES: dict[int, CipherSuite] = {
    3: CipherSuite(3, 1, 1, 1, hashlib.sha1, 12),
    17: CipherSuite(17, 3, 4, 1, hashlib.sha256, 16),
}


@dataclass(frozen=True)
class Packet:
    """One parsed datagram (RMCP class IPMI). ``payload`` is still encrypted when
    ``encrypted``; ``signed`` is the part an integrity check value covers and ``icv_zone``
    the rest (pad, pad length, next header, check value)."""

    authtype: int
    payload_type: int  # without the encrypted/authenticated bits
    encrypted: bool
    authenticated: bool
    session_id: int
    sequence: int
    payload: bytes
    trailer: bytes
    raw: bytes


def parse_packet(data: bytes) -> Packet | None:
    """Parse an RMCP/IPMI datagram; None for anything malformed or unsupported."""
    if len(data) < 14 or data[:4] != RMCP_HEADER:
        return None
    authtype = data[4]
    if authtype == AUTHTYPE_NONE:
        # IPMI 1.5: authtype, sequence, session id, (no auth code), length, message.
        seq, sid = struct.unpack_from("<II", data, 5)
        length = data[13]
        message = data[14 : 14 + length]
        if len(message) != length:
            return None
        return Packet(authtype, PT_IPMI, False, False, sid, seq, bytes(message), b"", data)
    if authtype != AUTHTYPE_RMCPP or len(data) < 16:
        return None
    ptype = data[5]
    base = ptype & 0x3F
    if base == 0x02:  # OEM explicit payloads carry extra header fields: not served
        return None
    sid, seq, length = struct.unpack_from("<IIH", data, 6)
    payload = data[16 : 16 + length]
    if len(payload) != length:
        return None
    return Packet(
        authtype,
        base,
        bool(ptype & PT_ENCRYPTED),
        bool(ptype & PT_AUTHENTICATED),
        sid,
        seq,
        bytes(payload),
        bytes(data[16 + length :]),
        data,
    )


def verify_integrity(packet: Packet, k1: bytes, suite: CipherSuite) -> bool:
    """Check an authenticated packet's trailer: pad, pad length, next header and the
    truncated HMAC over everything from the auth type to the next header."""
    trailer = packet.trailer
    n = suite.icv_len
    if len(trailer) < n + 2:
        return False
    pad_len = trailer[-n - 2]
    if trailer[-n - 1] != NEXT_HEADER or pad_len + n + 2 != len(trailer):
        return False
    signed = packet.raw[4 : len(packet.raw) - n]
    expected = hmac.new(k1, signed, suite.hash).digest()[:n]
    return hmac.compare_digest(expected, packet.raw[-n:])


def _cipher(key: bytes, iv: bytes) -> Cipher:
    return Cipher(algorithms.AES(key), modes.CBC(iv))


def decrypt(payload: bytes, key: bytes) -> bytes | None:
    """AES-CBC-128 payload: 16-byte IV, then data + pad 1..n + pad length (table 13-20)."""
    if len(payload) < 32 or (len(payload) - 16) % 16:
        return None
    dec = _cipher(key, payload[:16]).decryptor()
    plain = dec.update(payload[16:]) + dec.finalize()
    pad_len = plain[-1]
    if pad_len > 15 or pad_len + 1 > len(plain):
        return None
    return plain[: len(plain) - pad_len - 1]


def encrypt(payload: bytes, key: bytes) -> bytes:
    pad_len = (16 - (len(payload) + 1) % 16) % 16
    plain = payload + bytes(range(1, pad_len + 1)) + bytes([pad_len])
    iv = os.urandom(16)
    enc = _cipher(key, iv).encryptor()
    return iv + enc.update(plain) + enc.finalize()


def rmcpp_packet(
    payload_type: int,
    session_id: int,
    sequence: int,
    payload: bytes,
    *,
    k1: bytes | None = None,
    aes_key: bytes | None = None,
    suite: CipherSuite | None = None,
) -> bytes:
    """An RMCP+ datagram; with keys, encrypted and followed by the integrity trailer."""
    ptype = payload_type
    if aes_key is not None:
        payload = encrypt(payload, aes_key)
        ptype |= PT_ENCRYPTED
    if k1 is not None:
        ptype |= PT_AUTHENTICATED
    msg = bytearray(RMCP_HEADER)
    msg += struct.pack("<BBIIH", AUTHTYPE_RMCPP, ptype, session_id, sequence, len(payload))
    msg += payload
    if k1 is not None and suite is not None:
        # Pad so that auth type .. next header is a multiple of 4 bytes (table 13-8).
        pad = (-(len(msg) - 4 + 2)) % 4
        msg += b"\xff" * pad + bytes([pad, NEXT_HEADER])
        msg += hmac.new(k1, bytes(msg[4:]), suite.hash).digest()[: suite.icv_len]
    return bytes(msg)


def ipmi15_packet(message: bytes) -> bytes:
    """A sessionless IPMI 1.5 datagram (auth type none, sequence and session id 0)."""
    return RMCP_HEADER + struct.pack("<BIIB", AUTHTYPE_NONE, 0, 0, len(message)) + message


def asf_pong(data: bytes) -> bytes | None:
    """Answer an ASF presence ping (RMCP class 6) with a pong that announces IPMI support."""
    if len(data) < 12 or data[:4] != b"\x06\x00\xff\x06":
        return None
    iana, mtype, tag = struct.unpack_from(">IBB", data, 4)
    if iana != ASF_IANA or mtype != 0x80:
        return None
    body = struct.pack(">IIBB6x", ASF_IANA, 0, 0x81, 0x00)
    return b"\x06\x00\xff\x06" + struct.pack(">IBBBB", ASF_IANA, 0x40, tag, 0, len(body)) + body


# -- IPMI messages (section 13.8) -------------------------------------------------------------


def checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


@dataclass(frozen=True)
class Request:
    rs_addr: int
    netfn: int
    rs_lun: int
    rq_addr: int
    rq_seq: int
    rq_lun: int
    cmd: int
    data: bytes


def parse_request(msg: bytes) -> Request | None:
    """A LAN IPMI request message; None when too short, a response, or a bad checksum."""
    if len(msg) < 7 or checksum(msg[:2]) != msg[2] or checksum(msg[3:-1]) != msg[-1]:
        return None
    netfn = msg[1] >> 2
    if netfn & 1:  # odd network functions are responses
        return None
    return Request(msg[0], netfn, msg[1] & 3, msg[3], msg[4] >> 2, msg[4] & 3, msg[5], bytes(msg[6:-1]))


def build_response(req: Request, code: int, data: bytes = b"") -> bytes:
    head = bytes([req.rq_addr, ((req.netfn + 1) << 2) | req.rq_lun])
    body = bytes([req.rs_addr, (req.rq_seq << 2) | req.rs_lun, req.cmd, code]) + data
    return head + bytes([checksum(head)]) + body + bytes([checksum(body)])


def build_request(netfn: int, cmd: int, data: bytes = b"", *, seq: int = 0) -> bytes:
    """A request message (used by the tests' raw client)."""
    head = bytes([BMC_SLAVE_ADDRESS, netfn << 2])
    body = bytes([0x81, seq << 2, cmd]) + data
    return head + bytes([checksum(head)]) + body + bytes([checksum(body)])
