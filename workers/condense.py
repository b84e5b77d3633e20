"""Noise control: repeated events per (source, trail) become one record; nothing is dropped.

Owns the rule. Two events belong together when they come from the same source (the client of
the conversation, which dispatch keeps in one worker) and carry the same trail: the same sensor,
type, trail, info, reference and severity; addresses, ports and protocol may differ (one scanner
probing many ports, one client fetching one bad URL from many servers). The first event of a group
is emitted at once (live users see it without delay); later ones within `window_us` of packet time
are only counted, and when the window closes a single record carries their count, the first and
last repeat timestamps, and for each of source address, source port, destination address,
destination port and protocol either the one value all repeats shared or the distinct values,
sorted and comma-separated (at most MAX_LISTED, then "+N" more), as Maltrail's condensed events
show them. The counts of all records of a group add up to the number of events seen.

State is bounded: when `max_entries` groups are open the oldest is closed early (its summary is
emitted, never lost) and `early_closes` counts it.

Must not know about packets or how events are written.
"""

from __future__ import annotations

from collections import OrderedDict

from workers.events import Event

MAX_LISTED = 16
# Event fields a group's repeats may differ in: src_ip, src_port, dst_ip, dst_port, proto.
_VARYING = (2, 3, 4, 5, 6)


class _Group:
    __slots__ = ("start", "first", "repeats", "first_ts", "last_ts", "values", "overflow")

    def __init__(self, event: Event):
        self.start = event.ts_us
        self.first = event
        self.repeats = 0
        self.first_ts = 0
        self.last_ts = event.ts_us
        self.values = [set() for _ in _VARYING]
        self.overflow = [set() for _ in _VARYING]

    def add(self, event: Event) -> None:
        self.repeats += 1
        if self.repeats == 1:
            self.first_ts = event.ts_us
        if event.ts_us > self.last_ts:
            self.last_ts = event.ts_us
        for i, field in enumerate(_VARYING):
            value = event[field]
            seen = self.values[i]
            if value in seen:
                continue
            if len(seen) < MAX_LISTED:
                seen.add(value)
            elif len(self.overflow[i]) < 65536:
                self.overflow[i].add(value)

    def summary(self) -> Event | None:
        if not self.repeats:
            return None
        fields = list(self.first)
        for i, field in enumerate(_VARYING):
            seen = self.values[i]
            if len(seen) == 1 and not self.overflow[i]:
                fields[field] = next(iter(seen))
                continue
            text = ",".join(str(v) if v is not None else "-" for v in sorted(seen, key=_order))
            if self.overflow[i]:
                text += ",+%d" % len(self.overflow[i])
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
    def __init__(self, window_us: int, max_entries: int = 65536):
        self.window_us = window_us
        self.max_entries = max_entries
        self.early_closes = 0
        self.suppressed = 0
        self._open: OrderedDict = OrderedDict()  # key -> _Group, oldest first

    def __len__(self) -> int:
        return len(self._open)

    @staticmethod
    def key(event: Event, source=None):
        return (source if source is not None else event.src_ip, event.sensor, event.type, event.trail,
                event.info, event.reference, event.severity)

    def offer(self, event: Event, out: list, source=None) -> None:
        """Appends to `out` what must be emitted now because of `event`. `source` identifies the
        source the event belongs to (the worker passes its client and dispatch class); without
        it, the event's source address."""
        key = self.key(event, source)
        group = self._open.get(key)
        if group is not None:
            if event.ts_us < group.start + self.window_us:
                group.add(event)
                self.suppressed += 1
                return
            del self._open[key]
            self._emit_summary(group, out)
        self._open[key] = _Group(event)
        out.append(event)
        if len(self._open) > self.max_entries:
            _, oldest = self._open.popitem(last=False)
            self.early_closes += 1
            self._emit_summary(oldest, out)

    def expire(self, now_us: int, out: list) -> None:
        """Closes windows that ended before packet time `now_us` (oldest first)."""
        while self._open:
            key, group = next(iter(self._open.items()))
            if group.start + self.window_us > now_us:
                break
            del self._open[key]
            self._emit_summary(group, out)

    def flush(self, out: list) -> None:
        while self._open:
            _, group = self._open.popitem(last=False)
            self._emit_summary(group, out)

    @staticmethod
    def _emit_summary(group: _Group, out: list) -> None:
        summary = group.summary()
        if summary is not None:
            out.append(summary)
