"""Flow inputs, parsed once at the edge: a bad field fails here, named, before anything changes.

The fields are the vocabulary's pydantic types (:mod:`metalflow.integrations.common.fields`):
Prefect builds the UI's form and the API's parameter validation from these models, so a value
the UI or API accepts is one the run accepts, and the CloudStack extension and the CLI refuse
the same values with the same words."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from metalflow.integrations.common.fields import EraseModeField, Ident
from metalflow.integrations.common.vm import HIDDEN_INPUT, Nic, Owner, Vm, hidden_inputs

__all__ = ["HIDDEN_INPUT", "BulkItem", "EraseMode", "HostRef", "Nic", "Owner", "Vm", "hidden_inputs"]

#: What MAAS does to the disks on release (flow parameters ``erase``, ``erase_on_failure``).
EraseMode = EraseModeField
#: A host as a flow names it: its inventory name or its CloudStack host id.
HostRef = Ident


class BulkItem(BaseModel):
    """One host of a bulk provision: exactly the ``provision`` flow's parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)
    host: HostRef = Field(description="Inventory name or CloudStack host id")
    vm: Vm
