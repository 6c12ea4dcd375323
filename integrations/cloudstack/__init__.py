"""The Orchestrator extension CloudStack 4.21+ runs as ``<exe> <action> <payload.json>
<timeout>`` (``extension``, console script ``metalflow-cloudstack``).

A leaf: nothing in metalflow imports it (the MAAS settings string and the rack config it used
to parse live in ``integrations.config``). This file stays empty so that starting the
extension imports no more than ``extension`` itself needs.
"""
