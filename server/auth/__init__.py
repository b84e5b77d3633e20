"""Users and security for the server: who may log in, for how long, and what they may see.

Modules: users.py (the `[server] users` lines, password hashes), scopes.py (netfilters, the
scope the store applies, custom-trail masking), state.py (the state database: sessions, upgraded hashes,
throttling, sensor keys), login.py (the login flow and session rules, apart from HTTP),
audit.py (login attempts as Maltrail `auth` records), web.py (aiohttp routes and middlewares).
Must not know events' storage or the API's routes; the API mounts web.AuthWeb and asks a
session for its scope.
"""
