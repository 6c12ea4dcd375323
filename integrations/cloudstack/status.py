"""``status``: the VM's power state from the inventory, in milliseconds.

CloudStack runs ``status`` once per VM, one after another, on every ping (60 s), and acts
on the answer: PowerOff for a Running VM makes it stop the VM, PowerOn for a Stopped one
marks it Running; PowerUnknown is ignored. So we answer from what ``power-poll`` (and the
extension after each operation it ran) stored, and say PowerUnknown whenever the reading
might not describe the VM now:

- the VM is not (yet) on the machine (``create`` still running, or it failed);
- no reading, an unknown one, or one older than ``status_stale_after``;
- anything happened on the host since the reading (a journal line newer than it);
- an operation holds the host's lock (one HTTP call to the Prefect API), or we cannot tell.

Never PowerOff by guess. This module imports only the standard library (and SQLAlchemy Core
for a database other than SQLite): no ORM models, no Alembic, no requests, because process
start-up is most of a status call. Its SQL names the inventory's tables by the names in
``integrations.common.names`` (the models use the same); tests run it against a migrated inventory.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from metalflow.integrations.cloudstack.answer import POWER_OFF, POWER_ON, POWER_UNKNOWN, Answer
from metalflow.integrations.cloudstack.extension_config import ExtensionConfig
from metalflow.integrations.cloudstack.payload import Payload
from metalflow.integrations.common.names import HOST_CLAIMS_TABLE, HOST_EVENTS_TABLE, HOSTS_TABLE, host_lock_name

_COLUMNS = (
    "h.id AS id, h.name AS name, h.last_vm_uuid AS last_vm_uuid, h.power_state AS power_state, "
    "h.power_state_at AS power_state_at"
)
Q_CLAIM = (
    f"SELECT {_COLUMNS} FROM {HOST_CLAIMS_TABLE} c JOIN {HOSTS_TABLE} h ON h.id = c.host_id WHERE c.vm_uuid = :key"
)
Q_HOST = (
    f"SELECT {_COLUMNS} FROM {HOSTS_TABLE} h WHERE h.name = :key OR h.cloudstack_id = :key "
    "ORDER BY CASE WHEN h.name = :key THEN 0 ELSE 1 END"
)
Q_CARRIES = f"SELECT {_COLUMNS} FROM {HOSTS_TABLE} h WHERE h.last_vm_uuid = :key ORDER BY h.name"
Q_LAST_EVENT = f"SELECT max(at) AS at FROM {HOST_EVENTS_TABLE} WHERE host_id = :id AND operation <> 'power-poll'"


def lock_active(cfg: ExtensionConfig, host: str) -> bool | None:
    """Whether an operation holds ``host``'s lock; None when the Prefect API does not say.
    A limit that does not exist yet was never taken (the flows create it on first use)."""
    url = f"{cfg.prefect_api_url.rstrip('/')}/v2/concurrency_limits/{host_lock_name(host)}"
    headers = {"Accept": "application/json"}
    if cfg.prefect_auth_string is not None:
        token = base64.b64encode(cfg.prefect_auth_string.reveal().encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=cfg.status_timeout) as resp:
            doc = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return False if exc.code == 404 else None
    except (OSError, ValueError):
        return None
    slots = doc.get("active_slots") if isinstance(doc, dict) else None
    return slots > 0 if isinstance(slots, (int, float)) else None


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):  # a driver that hands back text
        value = datetime.fromisoformat(value)
    stamp: datetime = value
    return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


def _sqlite_path(url: str) -> str | None:
    """The file of a plain ``sqlite:///path`` URL (None for anything fancier)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or "?" in url or url == prefix:
        return None
    return url[len(prefix) :]


def read_host(url: str, p: Payload) -> tuple[dict[str, Any] | None, datetime | None]:
    """The VM's host row (claim, then the machine prepare saved, then the CloudStack host's
    detail, then the host carrying the VM) and the time of its newest non-poll journal line.

    SQLite (the embedded default) is read with the standard library's sqlite3: importing
    SQLAlchemy alone takes longer than the whole answer. Other databases go through
    SQLAlchemy Core with the same SQL."""
    # A machine a detail names counts only when it carries this VM: a tenant's metalflow_host
    # detail naming another VM's machine learns nothing of it (not even that it exists).
    keys = [(Q_CLAIM, p.vm_uuid or "")]
    keys += [(Q_HOST, str(h)) for h in (p.virtualmachine.get("metalflow_host"), p.host.get("metalflow_host")) if h]
    keys.append((Q_CARRIES, p.vm_uuid or ""))

    def usable(sql: str, row: Any) -> bool:
        return sql is not Q_HOST or row["last_vm_uuid"] == p.vm_uuid

    path = _sqlite_path(url)
    if path is not None:
        import sqlite3

        if not os.path.exists(path):
            raise FileNotFoundError(f"the inventory {path} does not exist")
        conn = sqlite3.connect(path, timeout=5)
        conn.row_factory = sqlite3.Row
        try:
            for sql, key in keys:
                row = conn.execute(sql, {"key": key}).fetchone()
                if row is not None and usable(sql, row):
                    last = conn.execute(Q_LAST_EVENT, {"id": row["id"]}).fetchone()[0]
                    return dict(row), _aware(last)
            return None, None
        finally:
            conn.close()

    from sqlalchemy import DateTime, create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as db:
            for sql, key in keys:
                found = db.execute(text(sql).columns(power_state_at=DateTime()), {"key": key}).mappings().first()
                if found is not None and usable(sql, found):
                    last = db.execute(text(Q_LAST_EVENT).columns(at=DateTime()), {"id": found["id"]}).scalar()
                    return dict(found), _aware(last)
            return None, None
    finally:
        engine.dispose()


def answer_status(
    cfg: ExtensionConfig,
    p: Payload,
    *,
    now: Callable[[], datetime] | None = None,
    lock: Callable[[ExtensionConfig, str], bool | None] = lock_active,
) -> Answer:
    if not p.vm_uuid:
        return Answer.power(POWER_UNKNOWN, "the payload names no VM")
    row, last_event = read_host(cfg.inventory_url, p)
    if row is None:
        return Answer.power(POWER_UNKNOWN, f"no machine holds VM {p.vm_uuid}")
    name = row["name"]
    if row["last_vm_uuid"] != p.vm_uuid:
        return Answer.power(POWER_UNKNOWN, f"VM {p.vm_uuid} is not (yet) installed on {name}")
    state, at = row["power_state"], _aware(row["power_state_at"])
    if state not in ("on", "off") or at is None:
        return Answer.power(POWER_UNKNOWN, f"{name}: power state {state}")
    age = ((now or (lambda: datetime.now(UTC)))() - at).total_seconds()
    if age > cfg.status_stale_after:
        return Answer.power(
            POWER_UNKNOWN,
            f"{name}: the last power reading is {age:.0f} s old "
            f"(stale after {cfg.status_stale_after:.0f} s; is power-poll running?)",
        )
    if last_event is not None and last_event > at:
        return Answer.power(POWER_UNKNOWN, f"{name}: changed since the last power reading ({age:.0f} s ago)")
    held = lock(cfg, name)
    if held is None:
        return Answer.power(
            POWER_UNKNOWN, f"{name}: cannot tell whether an operation is running (the Prefect API did not answer)"
        )
    if held:
        return Answer.power(POWER_UNKNOWN, f"{name}: an operation is running")
    return Answer.power(POWER_ON if state == "on" else POWER_OFF, f"{name}: {state}, read {age:.0f} s ago")
