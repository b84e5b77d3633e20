"""The server's JSON API under /api/v1/ (server/api/v1.py): events and aggregates for a logged-in
user, within the user's netfilter. `setup(app, server)` mounts it on the server's aiohttp app.

Must not know how events are stored (server/store/ answers), how users log in (server/auth/ puts
the session on the request) or how datagrams arrive.
"""

from server.api.v1 import Api, ApiStats, setup

__all__ = ["Api", "ApiStats", "setup"]
