"""GET /api/v1/sensor/suppressions: the analysts' active suppressions, for our sensors.

Owns the route our sensors poll (events/forwarders/server_link.py SuppressionPoller) to learn the
(host, trail) pairs analysts silenced in the web UI until an expiry (server/auth/state.py keeps
them: StateDB.suppressions). A sensor merges them into its per-host whitelist, so they stop at the
source. Authenticated exactly as the HTTPS intake is (server/sensors.py: `Authorization: Bearer
NAME:KEY`, a key `server sensor add NAME` made; 401 otherwise, counted as the intake's
`unauthorized`). Must not change suppressions (the triage routes do) nor know how a sensor
applies them.

The answer (docs/API.md, "Suppressions for sensors"):
    {"now_s": SERVER_TIME, "suppressions": [{"host": ADDRESS_OR_CIDR, "trail": TRAIL,
                                             "expires_s": EPOCH_SECONDS}, ...]}
`now_s` is the server's clock when it answered: a sensor counts each expiry from it (expires_s -
now_s seconds from when the answer came), so a sensor whose clock is off still lets a
suppression go when the server does.
"""

from __future__ import annotations

import time

from server.sensors import R_UNAUTHORIZED, bearer_sensor

SUPPRESSIONS_PATH = "/api/v1/sensor/suppressions"
MAX_ROWS = 10_000       # the sensor refuses an answer with more (events/forwarders/server_link.py)

__all__ = ["SUPPRESSIONS_PATH", "setup"]


def setup(app, server, intake) -> None:
    """Mount the route for `server` (server/process.py Server); `intake` (server/sensors.py
    HttpsIntake) checks keys and counts refusals."""
    from aiohttp import web
    state = server.auth_web.auth.state

    async def suppressions(request):
        if bearer_sensor(request, intake.check_key) is None:
            return intake._refuse(web, R_UNAUTHORIZED, 401, "a sensor key is needed: Authorization: Bearer NAME:KEY",
                                  **{"WWW-Authenticate": 'Bearer realm="maltrail-engine sensors"'})
        now_s = time.time()
        rows = state.suppressions(now_s)[:MAX_ROWS]
        return web.json_response({"now_s": now_s, "suppressions": [
            {"host": r.host, "trail": r.trail, "expires_s": r.expires_s} for r in rows]})

    server.auth_web.public = server.auth_web.public | {SUPPRESSIONS_PATH}
    app.router.add_get(SUPPRESSIONS_PATH, suppressions)
