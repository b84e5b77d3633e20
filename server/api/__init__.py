"""The server's HTTP API, one module per concern, each with `setup(app, server)` adding its routes:
v1.py (JSON under /api/v1/: events and aggregates for a logged-in user, within the user's
netfilter) and compat.py (check, the trail set for sensors, Maltrail's paths). `setup` here
mounts v1.

Must not know how events are stored (server/store/ answers), how users log in (server/auth/ puts
the session on the request) or how datagrams arrive.
"""

from server.api.v1 import Api, ApiStats, setup

__all__ = ["Api", "ApiStats", "setup"]
