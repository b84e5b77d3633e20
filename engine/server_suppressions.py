"""The analysts' suppressions from our server, held by the supervisor for the workers.

Owns the set of (host, trail) pairs the forwarder's SuppressionPoller last read from the server
(events/forwarders/server_link.py), each with its expiry on the monotonic clock, and how they join
the per-host whitelist the workers apply (`merged`: host_whitelist_file's lines, then these). The
supervisor pushes the merged controls to every worker whenever the set in force changes: a new
answer, or a row reaching its expiry (`expire`, called on the supervisor's tick, so a suppression
ends on time even while the server cannot be reached). Must not read files, poll the server, or
judge events (workers/controls.py does; it counts what these drop as "host-whitelisted").

The rows come from the forwarder process, which runs unprivileged: they are checked again here
(an address or CIDR, printable text, a number) before the supervisor believes them.
"""

from __future__ import annotations

import math

from workers.controls import plain_trail

MAX_ROWS = 10_000

__all__ = ["ServerSuppressions"]


def _row(raw) -> tuple[str, str, float] | None:
    if not isinstance(raw, (list, tuple)) or len(raw) != 3:
        return None
    host, trail, expires = raw
    if type(expires) not in (int, float) or not math.isfinite(expires):
        return None
    # Imported here, not at the top: server_link brings http.client and ssl, which a sensor that
    # never hears from a server (every replay) should not load at start.
    from events.forwarders.server_link import suppression_pair
    try:
        network, trail = suppression_pair(host, trail)      # the forwarder's own check, again
    except ValueError:
        return None
    indicator = plain_trail(trail).strip()
    return (network, indicator, float(expires)) if indicator else None


class ServerSuppressions:
    def __init__(self):
        self.rows: list[tuple[str, str, float]] = []        # (network, indicator, expires at: monotonic)
        self.in_force: tuple = ()                             # the pairs last pushed to the workers

    def update(self, raw_rows, now_mono: float) -> int:
        """A new answer replaces the set; returns how many rows were refused as malformed."""
        rows = [_row(r) for r in list(raw_rows or ())[:MAX_ROWS]]
        self.rows = [r for r in rows if r is not None and r[2] > now_mono]
        return sum(1 for r in rows if r is None)

    def active(self, now_mono: float) -> tuple:
        return tuple(sorted({(net, ind) for net, ind, expires in self.rows if expires > now_mono}))

    def changed(self, now_mono: float) -> bool:
        """Whether the pairs in force differ from the ones last pushed (and remember them)."""
        self.rows = [r for r in self.rows if r[2] > now_mono]      # expired rows go for good
        now = self.active(now_mono)
        if now == self.in_force:
            return False
        self.in_force = now
        return True

    def merged(self, controls: dict) -> dict:
        """`controls` (engine/control_files.py plain form) with the pairs in force added to its
        host_trails."""
        if not self.in_force:
            return controls
        plain = dict(controls)
        plain["host_trails"] = list(controls.get("host_trails", ())) + [[net, ind] for net, ind in self.in_force]
        return plain

    def describe(self, most: int = 5) -> str:
        shown = ", ".join("%s %s" % pair for pair in self.in_force[:most])
        more = len(self.in_force) - most
        return "%d in force%s%s" % (len(self.in_force), (": " + shown) if shown else "",
                                    " and %d more" % more if more > 0 else "")
