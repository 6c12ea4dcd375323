"""The ``/MAAS/api/2.0/`` resources, one module per resource as MAAS organises them
(``src/maasserver/api/*.py``).

Shapes, status codes and messages follow MAAS as recorded in the project's ``maas-api.md``;
where a message is MAAS's own it is quoted verbatim. Handlers run under the simulator's lock and
never do I/O, except ``query_power_state`` which waits (outside the lock) for a live BMC query,
as MAAS does.

- ``base``: the request and response, the error answers, form parsing, and ``Resource`` (what
  every handler class shares: the state, the lock, the lifecycle and the lookups);
- ``routes``: the one table of (path, method, ``op``) -> handler, the dispatch, and the API's
  description of itself (``version/``, ``describe/`` and the API hash);
- ``users``, ``machines`` (the collection), ``machine`` (one machine and its operations),
  ``interfaces``, ``network`` (subnets, fabrics, VLANs), ``boot_resources``, ``tags`` and
  ``placement`` (zones, resource pools, domains): the handlers.
"""
