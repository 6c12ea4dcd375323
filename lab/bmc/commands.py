"""The IPMI commands a simulated BMC serves, written from the IPMI 2.0 specification.

Session management commands (Set Session Privilege Level, Close Session) live with the
sessions in ``server``; everything here is a pure function of the request, the caller's
privilege and the BMC's state. Anything not listed answers "invalid command" (0xC1).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from metalflow.lab.bmc.model import BOOT_DEVICE_CODES, BOOT_DEVICE_NAMES, Machine
from metalflow.lab.bmc.wire import CipherSuite, Request

# Completion codes (table 5-2).
CC_OK = 0x00
CC_PARAM_UNSUPPORTED = 0x80  # command-specific: Get/Set System Boot Options
CC_INVALID_COMMAND = 0xC1
CC_BAD_LENGTH = 0xC7
CC_INVALID_FIELD = 0xCC
CC_INSUFFICIENT_PRIVILEGE = 0xD4

PRIV_CALLBACK, PRIV_USER, PRIV_OPERATOR, PRIV_ADMIN = 1, 2, 3, 4

NETFN_CHASSIS = 0x00
NETFN_APP = 0x06

LAN_CHANNEL = 1
CURRENT_CHANNEL = 0x0E

# IANA enterprise number 32473 is reserved for documentation (RFC 5612): no client ships an
# OEM handler for it, so clients take their generic paths.
MANUFACTURER_ID = 32473
PRODUCT_ID = 0x0001

# Length of each writable boot option parameter's data (table 28-14).
BOOT_PARAM_LENGTHS = {0: 1, 1: 1, 2: 1, 3: 1, 4: 2, 5: 5, 6: 9}
BOOT_FLAGS = 5


@dataclass
class BootParameters:
    """Raw boot option parameters other than the boot flags, which live in ``Machine``."""

    raw: dict[int, bytes] = field(
        default_factory=lambda: {0: b"\x00", 1: b"\x00", 2: b"\x00", 3: b"\x00", 4: b"\x00\x00", 6: bytes(9)}
    )
    flags_extra: bytes = b"\x00\x00\x00"  # boot flags data 3..5 (console, verbosity...), echoed


@dataclass(frozen=True)
class Identity:
    guid: bytes  # 16 bytes, the managed system GUID used in RAKP too


def channel_auth_capabilities(req: Request) -> tuple[int, bytes]:
    """Get Channel Authentication Capabilities (22.13): RMCP+ only, non-null user names."""
    if len(req.data) < 2:
        return CC_BAD_LENGTH, b""
    channel = req.data[0] & 0x0F
    if channel not in (CURRENT_CHANNEL, LAN_CHANNEL) or (req.data[1] & 0x0F) > PRIV_ADMIN + 1:
        return CC_INVALID_FIELD, b""
    v2 = bool(req.data[0] & 0x80)
    return CC_OK, bytes(
        [
            LAN_CHANNEL,
            0x80 if v2 else 0x00,  # IPMI v2.0+ extended data; no IPMI 1.5 auth types
            0x04,  # non-null user names enabled; per-message and user-level auth on
            0x02 if v2 else 0x00,  # channel supports IPMI v2.0 connections
            0,
            0,
            0,  # OEM ID
            0,  # OEM auxiliary data
        ]
    )


def channel_cipher_suites(req: Request, suites: list[CipherSuite]) -> tuple[int, bytes]:
    """Get Channel Cipher Suites (22.15): records in 16-byte pages; a short page ends them."""
    if len(req.data) < 3:
        return CC_BAD_LENGTH, b""
    if (req.data[0] & 0x0F) not in (CURRENT_CHANNEL, LAN_CHANNEL) or req.data[1] & 0x3F:
        return CC_INVALID_FIELD, b""
    by_suite = bool(req.data[2] & 0x80)
    index = req.data[2] & 0x3F
    if by_suite:
        records = b"".join(bytes([0xC0, s.id, s.auth, 0x40 | s.integrity, 0x80 | s.confidentiality]) for s in suites)
    else:
        algorithms = sorted({s.auth for s in suites}) + sorted({0x40 | s.integrity for s in suites})
        algorithms += sorted({0x80 | s.confidentiality for s in suites})
        records = bytes(algorithms)
    return CC_OK, bytes([LAN_CHANNEL]) + records[index * 16 : index * 16 + 16]


def device_id() -> tuple[int, bytes]:
    """Get Device ID (20.1): device 0x20 rev 1, firmware 1.00, IPMI 2.0, chassis device."""
    mfg = struct.pack("<I", MANUFACTURER_ID)[:3]
    return CC_OK, bytes([0x20, 0x01, 0x01, 0x00, 0x02, 0x80]) + mfg + struct.pack("<H", PRODUCT_ID)


def chassis_status(machine: Machine) -> tuple[int, bytes]:
    """Get Chassis Status (28.2): power bit, restore policy "previous", last power event."""
    power = (0x01 if machine.powered else 0x00) | 0x20
    last_event = 0x10 if machine.last_power_by_ipmi else 0x00
    return CC_OK, bytes([power, last_event, 0x00])


def chassis_control(req: Request, machine: Machine) -> tuple[int, bytes]:
    """Chassis Control (28.3): 0 down, 1 up, 2 cycle, 3 hard reset, 4 NMI, 5 ACPI soft off.

    Power cycle and hard reset of an off machine power it on (many BMCs do; the spec lets
    them refuse): the lab treats them as a boot either way."""
    if len(req.data) < 1:
        return CC_BAD_LENGTH, b""
    action = req.data[0] & 0x0F
    if action == 0:
        machine.power_off()
    elif action == 1:
        machine.power_on()
    elif action in (2, 3):
        machine.reset()
    elif action == 4:
        pass  # diagnostic interrupt: the simulated OS has nothing to dump
    elif action == 5:
        machine.soft_off()
    else:
        return CC_INVALID_FIELD, b""
    return CC_OK, b""


def set_boot_options(req: Request, machine: Machine, params: BootParameters) -> tuple[int, bytes]:
    """Set System Boot Options (28.12). Parameter 5 drives the machine's boot device; the
    others are stored and echoed (the 60-second auto-clear of boot flags is not simulated,
    nor is the set-in-progress lock)."""
    if len(req.data) < 1:
        return CC_BAD_LENGTH, b""
    param = req.data[0] & 0x7F
    value = req.data[1:]
    if param not in BOOT_PARAM_LENGTHS:
        return CC_PARAM_UNSUPPORTED, b""
    if len(value) < BOOT_PARAM_LENGTHS[param]:
        return CC_BAD_LENGTH, b""
    value = value[: BOOT_PARAM_LENGTHS[param]]
    if param != BOOT_FLAGS:
        params.raw[param] = value
        return CC_OK, b""
    device = BOOT_DEVICE_NAMES.get(value[1] & 0x3C)
    if device is None:
        return CC_INVALID_FIELD, b""
    machine.set_boot_flags(
        valid=bool(value[0] & 0x80), persistent=bool(value[0] & 0x40), device=device, efi=bool(value[0] & 0x20)
    )
    params.flags_extra = bytes(value[2:5])
    return CC_OK, b""


def get_boot_options(req: Request, machine: Machine, params: BootParameters) -> tuple[int, bytes]:
    """Get System Boot Options (28.13): version 1, parameter selector, data."""
    if len(req.data) < 3:
        return CC_BAD_LENGTH, b""
    param = req.data[0] & 0x7F
    if param not in BOOT_PARAM_LENGTHS:
        return CC_PARAM_UNSUPPORTED, b""
    if param == BOOT_FLAGS:
        flags = 0x80 | (0x40 if machine.override is None else 0) | (0x20 if machine.efi else 0)
        data = bytes([flags, BOOT_DEVICE_CODES[machine.next_boot]]) + params.flags_extra
    else:
        data = params.raw[param]
    return CC_OK, bytes([0x01, param]) + data


def handle(
    req: Request,
    priv: int,
    machine: Machine,
    params: BootParameters,
    identity: Identity,
    suites: list[CipherSuite],
) -> tuple[int, bytes]:
    """Dispatch an in-session request; ``priv`` is the session's current privilege level."""
    key = (req.netfn, req.cmd)
    if key == (NETFN_APP, 0x01):
        return device_id()
    if key == (NETFN_APP, 0x37):
        return CC_OK, identity.guid
    if key == (NETFN_APP, 0x38):
        return channel_auth_capabilities(req)
    if key == (NETFN_APP, 0x54):
        return channel_cipher_suites(req, suites)
    if key == (NETFN_CHASSIS, 0x01):
        return chassis_status(machine)
    if key == (NETFN_CHASSIS, 0x02):
        if priv < PRIV_OPERATOR:
            return CC_INSUFFICIENT_PRIVILEGE, b""
        return chassis_control(req, machine)
    if key == (NETFN_CHASSIS, 0x08):
        if priv < PRIV_OPERATOR:
            return CC_INSUFFICIENT_PRIVILEGE, b""
        return set_boot_options(req, machine, params)
    if key == (NETFN_CHASSIS, 0x09):
        return get_boot_options(req, machine, params)
    return CC_INVALID_COMMAND, b""
