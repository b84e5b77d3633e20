"""One forwarding destination, and the loop that feeds it from the event log.

Owns the contract every destination keeps (Maltrail's LOG_SERVER, syslog CEF, Logstash JSON,
ECS JSON lines, webhooks, our server) and the loop around it:

- A `Destination` turns an event into its message (`render`, None when the event is not for it:
  below a severity, throttled), and delivers a batch (`deliver`): it returns how many of the
  messages were accepted, in order, or raises `Unreachable` (nothing more can be sent now).
  `reliable` destinations (TCP, TLS, HTTP) count as accepted only what the other side
  acknowledged; best-effort ones (UDP) move on past everything they tried and count what is
  known not to have arrived as `dropped`: what they could not send, and (`refused()`) what the
  other side refused after it was sent.
- `Forwarder` follows the log with a LogCursor (events/forwarders/cursor.py) from the
  destination's saved place, hands out batches of FORWARD_BATCH events, moves the place past what
  was accepted and saves it. A reliable destination that is unreachable keeps its place: the same
  events are offered again after a backoff (1 s doubling to BACKOFF_MAX_S), however long the
  outage, because the log is the queue (nothing is held in memory). A best-effort one moves on.
- It runs in its own thread, reads the log from disk, and never touches capture, the workers or
  the writer: a slow or dead collector costs its own thread and nothing else, and no memory
  beyond one batch.
- `stats()` says what it did: sent (delivered, as far as it can know), failed (deliveries
  that failed), dropped (best effort: known not to have arrived), skipped (not for this
  destination), lag_s (seconds since it last had nothing to send; 0 while caught up), damaged
  (log frames passed because they could not be read; said once each) and whether it is
  connected.
- What can be sent twice: a batch whose acknowledgement came but whose place was not saved yet
  (the process killed in between), or a batch cut by a collector's death after part of it
  arrived. Places are saved after every acknowledged batch, so that is at most one batch,
  FORWARD_BATCH events, per destination and per kill or outage.

Must not know how events are detected or how the log is written.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from events.forwarders.cursor import LogCursor, PositionStore
from events.record import Event

FORWARD_BATCH = 256
POLL_S = 0.2
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0


class Unreachable(Exception):
    """The destination cannot take anything now (connection refused, reset, timed out, no answer,
    a name that resolves to nothing); the message says which, for the operator."""


class Destination:
    """One place events go to. Subclasses set `kind` (the config key, e.g. "syslog_server"),
    `address` (what the operator wrote) and `reliable`."""

    kind = "destination"
    reliable = True

    def __init__(self, address: str):
        self.address = address

    @property
    def identity(self) -> str:
        """What tells two destinations of a kind apart: the address as written, or (network
        destinations) its normal form, so that "h:514" and "udp://h:514" are one."""
        endpoint = getattr(self, "endpoint", None)
        return str(endpoint) if endpoint is not None else self.address

    @property
    def name(self) -> str:
        """A file-name-safe identity (the position file's name): kind and identity."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in self.identity.lower())
        return "%s-%s" % (self.kind.replace("_", "-"), safe)[:120]

    def render(self, event: Event) -> bytes | None:
        raise NotImplementedError

    def deliver(self, messages: list[bytes]) -> int:
        raise NotImplementedError

    def committed(self, count: int) -> None:
        """The first `count` of the events rendered since the last call are past for good (sent,
        refused or not for this destination); the others will be rendered again. A destination
        whose rendering has side effects (a throttle, counts) makes them real here."""

    def stats(self) -> dict:
        """Counts of the destination's own, added to the forwarder's statistics."""
        return {}

    def connected(self) -> bool:
        return True

    def interrupt(self) -> None:
        """Called from another thread when the sensor stops: a delivery in progress should give
        up soon (raising Unreachable); what it had not delivered waits in the log."""
        transport = getattr(self, "transport", None)
        if transport is not None and hasattr(transport, "interrupt"):
            transport.interrupt()

    def refused(self) -> int:
        """How many messages sent so far the other side refused afterwards (best effort only:
        a UDP datagram answered by an ICMP error); cumulative."""
        return 0

    def close(self) -> None:
        pass


class Forwarder:
    """Feeds one destination from the log, in a thread (see the module doc)."""

    def __init__(self, destination: Destination, dir_fd: int, warn: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic, batch: int = FORWARD_BATCH):
        self.destination = destination
        self.warn = warn
        self.store = PositionStore(dir_fd, destination.name, "%s %s" % (destination.kind, destination.address))
        places = self.store.load()
        if self.store.problem:
            self.warn("%s %s: %s; it starts at the end of the log, as a new destination does: events "
                      "written since its last saved place are not sent (they are in the log: tail)"
                      % (destination.kind, destination.address, self.store.problem))
        self.cursor = LogCursor(dir_fd, places) if places is not None else LogCursor.at_end(dir_fd)
        if places is None:
            self.store.save(self.cursor.places)
        self.clock = clock
        self.batch = batch
        self.sent = self.failed = self.dropped = self.skipped = 0
        self._refused_seen = 0
        self._damage_said = 0
        self._dropping = False
        self.caught_up_at = clock()
        self.progress_at = clock()       # when a batch last went through (or it last caught up)
        self.behind = False
        self._stop = threading.Event()
        self._wake = threading.Event()     # set: read the log now instead of at the next poll
        self._down_since = None
        self._thread: threading.Thread | None = None

    # -- the loop ------------------------------------------------------------------------------
    def step(self) -> bool:
        """Offers the next batch once; True when there was something to offer."""
        events = self.cursor.read(self.batch)
        if not events:
            self._after_delivery()
            self.cursor.ack()           # damage after the last event passed, if any
            self._say_damage()
            if self.cursor.moved:
                self.store.save(self.cursor.places)
            self.behind = False
            self.caught_up_at = self.progress_at = self.clock()
            return False
        self.behind = True
        rendered = [self.destination.render(event) for event in events]
        messages = [m for m in rendered if m is not None]
        try:
            accepted = self.destination.deliver(messages) if messages else 0
        except Unreachable as exc:
            if self._stop.is_set() and self.destination.reliable:
                raise           # stopping: not a failure of the destination; the batch waits
            self.failed += 1
            if self._down_since is None:
                self._down_since = self.clock()
                self.warn("%s %s unreachable: %s; events wait in the log and are sent once it is back"
                          % (self.destination.kind, self.destination.address, exc)
                          if self.destination.reliable else
                          "%s %s unreachable: %s; its events are dropped until it is back (best effort)"
                          % (self.destination.kind, self.destination.address, exc))
            if not self.destination.reliable:
                self.dropped += len(messages)
                self.skipped += len(events) - len(messages)
                self.cursor.ack()
                self._say_damage()
                self.store.save(self.cursor.places)
                self.destination.committed(len(events))
                self.progress_at = self.clock()
            else:
                self.destination.committed(0)
            raise
        if self._down_since is not None:
            self.warn("%s %s is reachable again after %.0f s" % (self.destination.kind, self.destination.address,
                                                                self.clock() - self._down_since))
            self._down_since = None
        dropped_before = self.dropped
        if not self.destination.reliable:
            # Best effort: what was not taken is dropped, and the place moves past all of it.
            self.dropped += len(messages) - accepted
            self.sent += accepted
            accepted = len(messages)
        else:
            self.sent += accepted
        self._after_delivery()
        if not self.destination.reliable and messages:
            self._say_drops(self.dropped - dropped_before, len(messages))
        # How many events the accepted messages cover: events rendered to None ride along.
        covered, seen = 0, 0
        for message in rendered:
            if message is not None:
                if seen >= accepted:
                    break
                seen += 1
            covered += 1
        if accepted == len(messages):
            covered = len(events)
        self.skipped += sum(1 for m in rendered[:covered] if m is None)
        self.cursor.ack(covered)
        self._say_damage()
        self.store.save(self.cursor.places)
        self.destination.committed(covered)
        if covered:
            self.progress_at = self.clock()
        return True

    def _after_delivery(self) -> None:
        """Refusals the destination learnt of since (best effort: sent, then refused by the other
        side) move from sent to dropped."""
        refused = self.destination.refused()
        if refused > self._refused_seen:
            late = refused - self._refused_seen
            self._refused_seen = refused
            self.dropped += late
            self.sent = max(self.sent - late, 0)

    def _say_drops(self, dropped: int, offered: int) -> None:
        """Best effort: says once when messages start being dropped, and once when a whole batch
        goes through again (the counts are in the statistics)."""
        if dropped and not self._dropping:
            self._dropping = True
            self.warn("%s %s: %d of %d message(s) dropped: refused by the destination's host (is anything "
                      "listening there?) or not taken by the kernel; dropped messages are counted, never "
                      "retried (best effort)" % (self.destination.kind, self.destination.address, dropped, offered))
        elif not dropped and self._dropping:
            self._dropping = False
            self.warn("%s %s takes messages again" % (self.destination.kind, self.destination.address))

    def _say_damage(self) -> None:
        if self.cursor.damaged > self._damage_said:
            self.warn("%s %s: passed %d damaged frame(s) of the event log that cannot be read (their "
                      "events are lost to every reader; tail says where)" % (
                          self.destination.kind, self.destination.address, self.cursor.damaged - self._damage_said))
            self._damage_said = self.cursor.damaged

    def run(self) -> None:
        backoff = BACKOFF_MIN_S
        while not self._stop.is_set():
            try:
                busy = self.step()
                backoff = BACKOFF_MIN_S
            except Unreachable:
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            except Exception as exc:  # noqa: BLE001 (the log, the position file, a bug: never a silent stop)
                self.failed += 1
                self.destination.committed(0)
                self.warn("%s %s: %s: %s; trying again in %.0f s" % (
                    self.destination.kind, self.destination.address, type(exc).__name__, exc, BACKOFF_MAX_S))
                self._stop.wait(BACKOFF_MAX_S)
                continue
            if not busy:
                self._wake.wait(POLL_S)
                self._wake.clear()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="forward-%s" % self.destination.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Read the log now (it has just been closed, or written to)."""
        self._wake.set()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        self.destination.interrupt()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.destination.close()
        if self._thread is None or not self._thread.is_alive():
            self._after_delivery()      # refusals that came in since the last batch
            self.cursor.close()

    def finished(self, since: float, idle_s: float) -> bool:
        """Whether a finishing forwarder can stop: it read the log to its end after `since` (the
        log was closed then), or it has made no progress for `idle_s` (a collector that is down:
        its events wait for the next start)."""
        if not self.behind and self.caught_up_at >= since:
            return True
        return self.clock() - max(self.progress_at, since) >= idle_s

    # -- reporting -----------------------------------------------------------------------------
    def stats(self) -> dict:
        stats = {"kind": self.destination.kind, "destination": self.destination.address,
                 "reliable": self.destination.reliable, "sent": self.sent, "failed": self.failed,
                 "dropped": self.dropped, "skipped": self.skipped, "damaged": self.cursor.damaged,
                 "lag_s": round(self.clock() - self.caught_up_at, 3) if self.behind else 0.0,
                 "connected": self._down_since is None and self.destination.connected()}
        stats.update(self.destination.stats())
        return stats
