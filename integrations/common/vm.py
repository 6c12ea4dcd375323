"""A VM as metalflow provisions it: the ``provision`` flow's parameter and what the CloudStack
extension builds from a payload before it claims anything. One model, so the extension refuses
exactly what the flow would (issue 17: one set of rules, not two), and Prefect's UI form and API
validate the same way (:mod:`metalflow.flows.models` re-exports it)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ModelWrapValidatorHandler, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from metalflow.integrations.common.fields import Architecture, Hostname, Ident, ImageName, SecretRefText, SshKey, VlanId
from metalflow.integrations.common.values import MAX_NICS, MAX_SSH_KEYS


class Nic(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    # 2..4094: VLAN 1 is every switch's default VLAN, which metalflow never changes.
    vlan: VlanId = Field(description="802.1Q VLAN id of the network, 2 to 4094 (CloudStack broadcastUri vlan://N)")
    default: bool = Field(False, description="The default NIC's VLAN is the guest VLAN, untagged")


class Owner(BaseModel):
    """Who the VM belongs to, as MAAS tags on the machine. The CloudStack payload does not carry
    the VM's owner (4.22's ``caller`` is whoever made the API call: an admin deploying for a
    user, the system account): the account, domain and project come from explicit VM details
    (``account_id``, ``domain_id``, ``project_id``) or not at all, and ``vm`` is the VM's uuid,
    which always names it."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    account: str = ""
    domain: str = ""
    project: str = ""
    vm: str = ""

    def tags(self) -> list[str]:
        out = []
        for kind, value in (
            ("accountid", self.account),
            ("domainid", self.domain),
            ("projectid", self.project),
            ("vmid", self.vm),
        ):
            if value:
                out.append(f"{kind}_{re.sub(r'[^A-Za-z0-9_-]', '-', value)}")
        return out


class Vm(BaseModel):
    """The CloudStack VM a host becomes. The root password travels as a reference to where
    its crypt hash lives, never as a value: a flow run's parameters are stored and shown by
    Prefect, and a plain password pasted into a hash field would be logged with its error.
    The deliver-preseed task resolves the reference and checks the hash it finds."""

    # hide_input_in_errors: a password pasted into root_password_ref must not come back in
    # the validation error Prefect logs at ERROR.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)
    name: Hostname = Field(description="Hostname for the machine in MAAS (lower-case letters, digits, dashes)")
    uuid: Ident = Field(description="CloudStack VM uuid")
    image: ImageName = Field(description="MAAS image name = the CloudStack template URL, e.g. ubuntu/jammy")
    architecture: Architecture | None = Field(
        None, description="MAAS architecture the image and the machine must have, e.g. amd64/generic"
    )
    nics: list[Nic] = Field(min_length=1, max_length=MAX_NICS)
    owner: Owner = Owner()
    root_password_ref: SecretRefText | None = Field(
        None, description="Where the root password's crypt hash lives: block:NAME, block:NAME#KEY or env:NAME"
    )
    ssh_keys: list[SshKey] = Field(default_factory=list, max_length=MAX_SSH_KEYS)

    @model_validator(mode="wrap")
    @classmethod
    def _errors_without_inputs(cls, data: Any, handler: ModelWrapValidatorHandler[Vm]) -> Vm:
        """Errors name the field and the fix, never the value. ``hide_input_in_errors`` is
        not enough: Prefect wraps a flow's parameters in a model of its own, renders and logs
        that model's errors with every input, and a VM's fields may hold a pasted password
        (``root_password_ref``, or the ``root_password_hash`` an older caller still sends)."""
        try:
            return handler(data)
        except ValidationError as exc:
            raise ValidationError.from_exception_data(exc.title, hidden_inputs(exc), hide_input=True) from None

    @model_validator(mode="after")
    def _nics(self) -> Vm:
        networks(self.nics)
        return self

    @property
    def guest_vlan(self) -> int:
        return next(n.vlan for n in self.nics if n.default)

    @property
    def extra_vlans(self) -> list[int]:
        return sorted(n.vlan for n in self.nics if not n.default)


def networks(nics: list[Nic]) -> tuple[int, list[int]]:
    """The guest VLAN (the default NIC's, untagged on the ports) and the others (tagged) of a
    VM's NIC list; ``ValueError`` unless exactly one NIC is the default and each has its own
    VLAN. The rule of ``Vm`` and of a ``start`` given CloudStack's NIC list."""
    defaults = [n for n in nics if n.default]
    if len(defaults) != 1:
        raise ValueError(f"nics: exactly one NIC must be the default (found {len(defaults)})")
    vlans = [n.vlan for n in nics]
    if len(set(vlans)) != len(vlans):
        raise ValueError(f"nics: each NIC needs its own VLAN (got {vlans})")
    return defaults[0].vlan, sorted(n.vlan for n in nics if not n.default)


def hidden_inputs(exc: ValidationError) -> list[InitErrorDetails]:
    """``exc``'s errors with the same place and words, and no input."""
    return [
        {
            # Without a context the message is taken as written (braces in it stay text).
            "type": PydanticCustomError(e["type"], e["msg"]),
            "loc": e["loc"],
            "input": HIDDEN_INPUT,
        }
        for e in exc.errors(include_url=False)
    ]


HIDDEN_INPUT = "(not shown)"
