"""What metalflow made and no longer needs (issue 18, point 4), found and removed by ``audit``.

- **Curtin preseed files** metalflow wrote (they end with its mark, ``preseed.OURS_MARK``) for a
  VM no deployment needs any more. A provision removes its own once MAAS deployed the machine
  and its rollback removes it too, so what is found here was left by a run that died or by an
  older metalflow. A provision in flight is recognised by its pending undo record
  ``remove-preseeds`` naming the VM: its file is never touched.
- **MAAS tags** metalflow created (comment ``TAG_COMMENT``) that no machine carries: the
  ownership tags of VMs long gone. Left alone while a provision is tagging (a pending ``untag``
  record): the tag it just made may not be on its machine yet.
- **VLAN definitions** on switches that metalflow made (the switch had no such VLAN until a
  port change of metalflow's created it: ``tasks.switches`` records it) and that no port
  carries any more, nor is meant to. Only on switches whose dialect can read its VLAN table.

Never what metalflow did not create: a file without the mark, a tag with another comment, a
VLAN an operator had defined."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from metalflow.integrations.inventory import SwitchInfo
from metalflow.integrations.maas import TAG_COMMENT
from metalflow.integrations.maas.preseed import hostname_of, is_ours
from metalflow.tasks import clients
from metalflow.tasks.switches import vlan_litter

PRESEED = "curtin preseed"
TAG = "MAAS tag"
VLAN = "VLAN definition"


@dataclass(frozen=True)
class Litter:
    """One thing metalflow made and no longer needs."""

    kind: str  # PRESEED or TAG
    name: str
    why: str


def _in_flight() -> tuple[set[str], bool]:
    """(VM names whose preseed a live or dead provision still owns, whether one is tagging)."""
    undos = clients.inventory().undos.left()
    names = {str(u.params.get("hostname")) for u in undos if u.action == "remove-preseeds"}
    return names, any(u.action == "untag" for u in undos)


@task(name="find-litter", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=[2, 10])
def find_litter() -> list[Litter]:
    found: list[Litter] = []
    owned, tagging = _in_flight()
    store = clients.preseed_store()
    for name in store.names():
        node = hostname_of(name)
        if node is None or node in owned or not is_ours(store.read(name)):
            continue
        found.append(Litter(PRESEED, name, f"written for {node}, which no deployment needs any more"))
    if not tagging:
        maas = clients.maas()
        for tag in maas.tags():
            if tag.comment == TAG_COMMENT and not maas.tag_machines(tag.name):
                found.append(Litter(TAG, tag.name, "created by metalflow, carried by no machine"))
    return found


@task(name="remove-litter", cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=[2, 10])
def remove_litter(items: list[Litter]) -> list[str]:
    """Remove ``items`` (each checked again first); the lines of what went."""
    owned, tagging = _in_flight()
    done = []
    store = clients.preseed_store()
    maas = clients.maas()
    for item in items:
        if item.kind == PRESEED and hostname_of(item.name) not in owned:
            store.remove(item.name)
            done.append(f"{item.kind} {item.name}: removed")
        elif item.kind == TAG and not tagging and not maas.tag_machines(item.name):
            maas.delete_tag(item.name)
            done.append(f"{item.kind} {item.name}: deleted")
    return done


@task(
    name="switch-vlan-litter",
    task_run_name="switch-vlan-litter {sw.name}",
    cache_policy=NO_CACHE,
    persist_result=False,
    retries=2,
    retry_delay_seconds=[2, 10],
)
def switch_vlan_litter(sw: SwitchInfo, remove: bool) -> tuple[list[Litter], list[str]]:
    """The VLAN definitions metalflow made on ``sw`` that nothing carries (and those deleted)."""
    found, deleted = vlan_litter(sw, remove=remove)
    items = [Litter(VLAN, f"{sw.name} VLAN {v}", "made by metalflow, carried by no port") for v in found]
    return items, [f"{VLAN} {sw.name} VLAN {v}: deleted" for v in deleted]
