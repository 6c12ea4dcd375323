"""Plain-Python clients for the systems metalflow drives: MAAS, IPMI BMCs, ToR switches,
the inventory database and CloudStack's configuration. No Prefect here: the clients own
their deadlines, retries and errors, and ``tasks/`` wraps them."""
