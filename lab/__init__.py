"""The metalflow lab: MAAS, IPMI BMCs and ToR switches simulated over their real protocols.

Written from the protocol facts in the project's reference notes, never from ``integrations``:
a simulator that shared code with the client it tests would prove nothing. Constants that
also appear in the clients (MAAS status numbers, CLI error text) are duplicated on purpose.
"""
