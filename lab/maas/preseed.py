"""Curtin preseeds as MAAS picks and renders them.

MAAS looks in its preseed directory for the most specific ``curtin_userdata*`` file
(``get_preseed_filenames`` in ``src/maasserver/preseed.py``)::

    curtin_userdata_{osystem}_{arch}_{subarch}_{release}_{hostname}
    curtin_userdata_{osystem}_{arch}_{subarch}_{release}
    curtin_userdata_{osystem}_{arch}_{subarch}
    curtin_userdata_{osystem}_{arch}
    curtin_userdata_{osystem}
    curtin_userdata

and, for Ubuntu only, each name again without ``{osystem}`` right after it (compatibility with
MAAS releases that only knew Ubuntu). When no file exists it uses the template it ships
(our ``DEFAULT_CURTIN_USERDATA``, written for the lab in the same shape). The template is
rendered with Tempita and must be a YAML mapping; MAAS checks that at ``deploy`` time (a
broken preseed answers ``400 Failed to render preseed: ...``) and again when the node asks
for its config.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from metalflow.lab.maas.tempita import SafeObject, Template, TemplateError

PREFIX = "curtin_userdata"

# The lab's stand-in for the curtin_userdata MAAS ships: the preseed's cloud-init datasource
# lines under debconf_selections, the late command that turns PXE off, and a reboot.
DEFAULT_CURTIN_USERDATA = """\
#cloud-config
debconf_selections:
 maas: |
  {{for line in str(curtin_preseed).splitlines()}}
  {{line}}
  {{endfor}}
late_commands:
  maas: [wget, '--no-proxy', '{{node_disable_pxe_url|escape.shell}}', '--post-data', '{{node_disable_pxe_data|escape.shell}}', '-O', '/dev/null']

power_state:
  mode: reboot
"""


class PreseedError(ValueError):
    """The preseed could not be rendered or is not a YAML mapping (the text says why)."""


def split_arch(architecture: str) -> tuple[str, str]:
    arch, _, sub = architecture.partition("/")
    return arch, sub or "generic"


def preseed_filenames(osystem: str, architecture: str, release: str, hostname: str) -> list[str]:
    """Candidate file names, most specific first, exactly in MAAS's order."""
    arch, subarch = split_arch(architecture)
    elements = [PREFIX, osystem, arch, subarch, release, hostname]
    names: list[str] = []
    while elements:
        names.append("_".join(elements))
        if osystem == "ubuntu" and len(elements) > 2:
            names.append("_".join(elements[:1] + elements[2:]))
        elements.pop()
    return names


def find_template(directory: str, filenames: list[str]) -> tuple[str | None, str]:
    """(path, content) of the first existing candidate, or (None, built-in default)."""
    for name in filenames:
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as f:
                return path, f.read()
        except OSError:
            continue
    return None, DEFAULT_CURTIN_USERDATA


class NodeView(SafeObject):
    """What a template may read of the node (``node.hostname``, ``node.get_distro_series()``)."""

    SAFE_METHODS = frozenset({"get_distro_series", "get_osystem"})

    def __init__(
        self, *, system_id: str, hostname: str, fqdn: str, architecture: str, osystem: str, distro_series: str
    ):
        self.system_id = system_id
        self.hostname = hostname
        self.fqdn = fqdn
        self.architecture = architecture
        self.osystem = osystem
        self.distro_series = distro_series

    def get_distro_series(self) -> str:
        return self.distro_series

    def get_osystem(self) -> str:
        return self.osystem


@dataclass(frozen=True)
class RenderedPreseed:
    path: str  # the file used, or "(built-in curtin_userdata)"
    text: str
    config: dict[str, Any]


def render(directory: str, node: NodeView, context: dict[str, Any]) -> RenderedPreseed:
    """Pick, render and YAML-parse the curtin preseed of ``node``; ``PreseedError`` if broken."""
    names = preseed_filenames(node.osystem, node.architecture, node.distro_series, node.hostname)
    path, source = find_template(directory, names)
    label = path or f"(built-in {PREFIX})"
    try:
        text = Template(source, name=label).substitute(node=node, **context)
    except TemplateError as exc:
        raise PreseedError(str(exc)) from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        detail = " ".join(str(exc).split())
        raise PreseedError(f"{label} is not valid YAML: {detail}") from None
    if not isinstance(config, dict):
        raise PreseedError(f"{label} does not render to a YAML mapping (got {type(config).__name__})")
    return RenderedPreseed(label, text, config)


def iter_existing(directory: str) -> Iterator[str]:
    """The preseed files present (for the snapshot)."""
    try:
        for name in sorted(os.listdir(directory)):
            if name.startswith(PREFIX):
                yield name
    except OSError:
        return
