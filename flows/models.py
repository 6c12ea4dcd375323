"""Flow inputs, parsed once at the edge: a bad field fails here, named, before anything changes."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
CRYPT_HASH = re.compile(r"^\$(1|5|6|y|gy|2[aby])\$[^\s:]+$")

EraseMode = Literal["none", "quick", "secure"]


class Nic(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    # 2..4094: VLAN 1 is every switch's default VLAN, which metalflow never changes (the
    # switch drivers refuse it too, but only after the first change was made).
    vlan: int = Field(
        ge=2, le=4094, description="802.1Q VLAN id of the network, 2 to 4094 (CloudStack broadcastUri vlan://N)"
    )
    default: bool = Field(False, description="The default NIC's VLAN is the guest VLAN, untagged")


class Owner(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    account: str = ""
    domain: str = ""
    project: str = ""

    def tags(self) -> list[str]:
        out = []
        for kind, value in (("accountid", self.account), ("domainid", self.domain), ("projectid", self.project)):
            if value:
                out.append(f"{kind}_{re.sub(r'[^A-Za-z0-9_-]', '-', value)}")
        return out


class Vm(BaseModel):
    """The CloudStack VM a host becomes. Credentials come by reference or as a crypt hash,
    never as a plain password."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(description="Hostname for the machine in MAAS (lower-case letters, digits, dashes)")
    uuid: str = Field(min_length=1, max_length=64, description="CloudStack VM uuid")
    image: str = Field(min_length=1, description="MAAS image name = the CloudStack template URL, e.g. ubuntu/jammy")
    nics: list[Nic] = Field(min_length=1)
    owner: Owner = Owner()
    root_password_hash: str | None = Field(None, description="crypt(3) hash ($6$..., $y$...) for root")
    root_password_ref: str | None = Field(None, description="where a root password hash lives: block:NAME or env:NAME")
    ssh_keys: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _hostname(cls, v: str) -> str:
        if not HOSTNAME.match(v):
            raise ValueError(
                f"{v!r} is not a valid hostname: use lower-case letters, digits and dashes "
                "(at most 63), not starting or ending with a dash"
            )
        return v

    @field_validator("ssh_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        from metalflow.integrations.maas.preseed import check_ssh_key

        return [check_ssh_key(line) for line in v]

    @field_validator("root_password_hash")
    @classmethod
    def _hash(cls, v: str | None) -> str | None:
        if v is not None and not CRYPT_HASH.match(v):
            raise ValueError(
                "must be a crypt(3) hash such as $6$salt$..., never a plain password (make one with: openssl passwd -6)"
            )
        return v

    @field_validator("root_password_ref")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^(env|block):[A-Za-z0-9_.#/-]+$", v):
            raise ValueError("must look like block:NAME or env:NAME")
        return v

    @model_validator(mode="after")
    def _nics(self) -> Vm:
        defaults = [n for n in self.nics if n.default]
        if len(defaults) != 1:
            raise ValueError(f"nics: exactly one NIC must be the default (found {len(defaults)})")
        vlans = [n.vlan for n in self.nics]
        if len(set(vlans)) != len(vlans):
            raise ValueError(f"nics: each NIC needs its own VLAN (got {vlans})")
        return self

    @property
    def guest_vlan(self) -> int:
        return next(n.vlan for n in self.nics if n.default)

    @property
    def extra_vlans(self) -> list[int]:
        return sorted(n.vlan for n in self.nics if not n.default)


class BulkItem(BaseModel):
    """One host of a bulk provision: exactly the ``provision`` flow's parameters."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    host: str = Field(min_length=1, description="Inventory name or CloudStack host id")
    vm: Vm
