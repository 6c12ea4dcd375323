"""``JsonMergeUtil.mergeJsonPatch``: how CloudStack merges a ``prepare`` answer into the VM TO.

- two objects merge key by key, recursively; a key only in the patch is added;
- two arrays whose elements are *all* objects with a ``"uuid"`` (in both arrays) merge element by
  element on that ``uuid``: a patch element updates the target element with the same ``uuid``
  (recursively), a patch element with a new ``uuid`` is appended, target elements the patch
  does not name stay as they were, in their order;
- any other array, and any scalar, is replaced by the patch's value.

Which ``uuid``: in a ``NicTO`` it is the NETWORK's uuid (``nicUuid`` is the NIC's), so NICs
merge per network; two NICs of one VM on the same network cannot be told apart here (the
patch element updates the first of them).

A ``null`` in the patch removes the key: Gson reads the merged text back into a
``VirtualMachineTO`` where a null field is simply absent from the next payload, so either
reading gives the same payloads.
"""

from __future__ import annotations

import copy
from typing import Any


def _keyed(items: list[Any]) -> bool:
    return all(isinstance(item, dict) and "uuid" in item for item in items)


def _merge_arrays(target: list[Any], patch: list[Any]) -> list[Any]:
    merged = [copy.deepcopy(item) for item in target]
    for item in patch:
        at = next((i for i, old in enumerate(merged) if old["uuid"] == item["uuid"]), None)
        if at is None:
            merged.append(copy.deepcopy(item))
        else:
            merged[at] = merge_patch(merged[at], item)
    return merged


def merge_patch(target: Any, patch: Any) -> Any:
    """A new document: ``patch`` merged into ``target`` (neither is changed)."""
    if isinstance(target, dict) and isinstance(patch, dict):
        merged = copy.deepcopy(target)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = merge_patch(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(target, list) and isinstance(patch, list) and _keyed(target) and _keyed(patch):
        return _merge_arrays(target, patch)
    return copy.deepcopy(patch)
