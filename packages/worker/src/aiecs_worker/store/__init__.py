"""The Redis schema: key names, execution state, events, records, leases, request parsing
and the one submission check. Imports only the foundation (settings, routing, ops)."""
