"""Noise control: repeated events per (source, trail) become one record; nothing is dropped.

Owns the rule. Two events belong together when they come from the same source (the worker passes
its packet's group, workers/flow.py group_key: the client of the conversation, a UDP datagram's
sender, a DNS packet's client and registered domain; what dispatch keeps in one worker) and carry
the same trail: the same sensor, type, trail, info, reference and severity; addresses, ports and protocol may differ (one scanner
probing many ports, one client fetching one bad URL from many servers). The first event of a group
is emitted at once (live users see it without delay); later ones within `window_us` of packet time
are only counted, and when the window closes a single record carries their count, the first and
last repeat timestamps, and for each of source address, source port, destination address,
destination port and protocol either the one value all repeats shared or the distinct values,
sorted and comma-separated (at most MAX_LISTED, then "+N" more), as Maltrail's condensed events
show them. The counts of all records of a group add up to the number of events seen.

State is bounded: when `max_entries` groups are open the oldest is closed early (its summary is
emitted, never lost) and `early_closes` counts it. A group keeps a field's values only once the
field varies. Beyond the MAX_LISTED values shown, a group counts at most MAX_COUNTED more distinct values
per field, and all open groups together keep at most `max_values` values besides each field's
first (a scan of every port from every source must not hold every port of every source); a value
that finds no room is not kept, the record then says "+N or more" (or "+more"), and `uncounted`
counts each such value seen. The repeat count and times stay exact whatever the caps do.

Must not know about packets or how events are written.
"""

from __future__ import annotations

from collections import OrderedDict

from events.record import Event

MAX_LISTED = 16
MAX_COUNTED = 1024          # distinct values per field a group counts beyond the listed ones
# Event fields a group's repeats may differ in: src_ip, src_port, dst_ip, dst_port, proto.
_VARYING = (2, 3, 4, 5, 6)


class _Group:
    """One open group. Memory matters (up to `max_entries` are open): the varying fields' first
    values are a plain list, and a field gets its sets only when a second value appears."""

    __slots__ = ("start", "first", "repeats", "first_ts", "last_ts", "firsts", "listed", "extra", "more")

    def __init__(self, event: Event):
        self.start = event.ts_us
        self.first = event
        self.repeats = 0
        self.first_ts = 0
        self.last_ts = event.ts_us
        self.firsts = None      # the first repeat's varying fields
        self.listed = None      # per field, None or the distinct values listed (a short list, the first among them)
        self.extra = None       # per field, None or a set of the further distinct values counted
        self.more = 0           # bit per field: some value found no room

    def add(self, event: Event, room: int) -> tuple[int, int]:
        """Counts a repeat; `room` is how many more values all groups together may keep. The
        first value of each field is always kept (the group cap bounds those); every further one,
        listed or only counted, takes room. Returns (values kept that took room, values that
        found none)."""
        self.repeats += 1
        if event.ts_us > self.last_ts:
            self.last_ts = event.ts_us
        if self.repeats == 1:
            self.first_ts = event.ts_us
            self.firsts = [event[field] for field in _VARYING]
            return 0, 0
        kept = lost = 0
        for i, field in enumerate(_VARYING):
            value = event[field]
            if value == self.firsts[i]:
                continue
            listed = self.listed[i] if self.listed else None
            if listed is not None and value in listed:
                continue
            extra = self.extra[i] if self.extra else None
            if extra is not None and value in extra:
                continue
            if kept >= room:
                self.more |= 1 << i
                lost += 1
            elif listed is None:
                if self.listed is None:
                    self.listed = [None] * len(_VARYING)
                self.listed[i] = [self.firsts[i], value]
                kept += 1
            elif len(listed) < MAX_LISTED:
                listed.append(value)
                kept += 1
            elif extra is None or len(extra) < MAX_COUNTED:
                if extra is None:
                    if self.extra is None:
                        self.extra = [None] * len(_VARYING)
                    extra = self.extra[i] = set()
                extra.add(value)
                kept += 1
            else:
                self.more |= 1 << i
                lost += 1
        return kept, lost

    def kept(self) -> int:
        """The values this group holds that took room (all but the first of each field)."""
        held = sum(len(listed) - 1 for listed in self.listed if listed) if self.listed else 0
        return held + (sum(len(extra) for extra in self.extra if extra) if self.extra else 0)

    def summary(self) -> Event | None:
        if not self.repeats:
            return None
        fields = list(self.first)
        for i, field in enumerate(_VARYING):
            listed = self.listed[i] if self.listed else None
            extra = (self.extra[i] if self.extra else None) or ()
            more = self.more >> i & 1
            if listed is None and not more:
                fields[field] = self.firsts[i]
                continue
            seen = listed if listed is not None else (self.firsts[i],)
            text = ",".join(str(v) if v is not None else "-" for v in sorted(seen, key=_order))
            if extra:
                text += ",+%d" % len(extra) + (" or more" if more else "")
            elif more:
                text += ",+more"
            fields[field] = text
        fields[0], fields[12], fields[13] = self.first_ts, self.repeats, self.last_ts
        return Event(*fields)


def _order(value):
    if value is None:
        return (0, 0, "")
    if isinstance(value, int):
        return (1, value, "")
    return (2, 0, str(value))


class Condenser:
    """Noise control for one worker: the open groups, bounded in number and in values kept, and
    the counters of what the bounds cost (the rule is the module docstring's)."""

    def __init__(self, window_us: int, max_entries: int = 65536, max_values: int = 262144):
        self.window_us = window_us
        self.max_entries = max_entries
        self.max_values = max_values
        self.early_closes = 0
        self.suppressed = 0
        self.uncounted = 0          # values seen that found no room (a record says "or more")
        self._kept = 0              # values that took room, over all open groups
        self._open: OrderedDict = OrderedDict()  # key -> _Group, oldest first

    def __len__(self) -> int:
        return len(self._open)

    @staticmethod
    def key(event: Event, source=None):
        return (source if source is not None else event.src_ip, event.sensor, event.type, event.trail,
                event.info, event.reference, event.severity)

    def offer(self, event: Event, out: list, source=None) -> None:
        """Appends to `out` what must be emitted now because of `event`. `source` identifies the
        source the event belongs to (the worker passes its packet's group, workers/flow.py
        group_key); without it, the event's source address."""
        key = self.key(event, source)
        group = self._open.get(key)
        if group is not None:
            if event.ts_us < group.start + self.window_us:
                kept, lost = group.add(event, self.max_values - self._kept)
                self._kept += kept
                self.uncounted += lost
                self.suppressed += 1
                return
            del self._open[key]
            self._close(group, out)
        self._open[key] = _Group(event)
        out.append(event)
        if len(self._open) > self.max_entries:
            _, oldest = self._open.popitem(last=False)
            self.early_closes += 1
            self._close(oldest, out)

    def expire(self, now_us: int, out: list) -> None:
        """Closes windows that ended before packet time `now_us` (oldest first)."""
        while self._open:
            key, group = next(iter(self._open.items()))
            if group.start + self.window_us > now_us:
                break
            del self._open[key]
            self._close(group, out)

    def flush(self, out: list) -> None:
        while self._open:
            _, group = self._open.popitem(last=False)
            self._close(group, out)

    def _close(self, group: _Group, out: list) -> None:
        self._kept -= group.kept()
        summary = group.summary()
        if summary is not None:
            out.append(summary)
