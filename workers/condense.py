"""Condensing repeated identical events: the first goes out at once, repeats become one record.

Owns the rule: two events are identical when every field but the timestamps and count matches.
The first occurrence in a window is emitted immediately (live users see it without delay); later
identical ones within `window_us` of packet time are only counted, and when the window closes a
single record carries their count and the first/last repeat timestamps. Nothing is dropped: the
counts of all records for an event add up to the number of times it was seen.

State is bounded: when `max_entries` windows are open the oldest is closed early (its summary is
emitted, never lost) and `early_closes` counts it.

Must not know about packets or how events are written.
"""

from __future__ import annotations

from collections import OrderedDict

from workers.events import Event


class Condenser:
    def __init__(self, window_us: int, max_entries: int = 65536):
        self.window_us = window_us
        self.max_entries = max_entries
        self.early_closes = 0
        self.suppressed = 0
        # key -> [window start, first event, repeats, first repeat ts, last repeat ts]
        self._open: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    @staticmethod
    def _key(event: Event):
        return event[1:12]  # sensor .. severity

    def offer(self, event: Event, out: list) -> None:
        """Appends to `out` what must be emitted now because of `event`."""
        key = self._key(event)
        entry = self._open.get(key)
        if entry is not None:
            if event.ts_us < entry[0] + self.window_us:
                entry[2] += 1
                if entry[2] == 1:
                    entry[3] = event.ts_us
                entry[4] = max(entry[4], event.ts_us)
                self.suppressed += 1
                return
            del self._open[key]
            self._summary(entry, out)
        self._open[key] = [event.ts_us, event, 0, 0, event.ts_us]
        out.append(event)
        if len(self._open) > self.max_entries:
            _, oldest = self._open.popitem(last=False)
            self.early_closes += 1
            self._summary(oldest, out)

    def expire(self, now_us: int, out: list) -> None:
        """Closes windows that ended before packet time `now_us` (oldest first)."""
        while self._open:
            key, entry = next(iter(self._open.items()))
            if entry[0] + self.window_us > now_us:
                break
            del self._open[key]
            self._summary(entry, out)

    def flush(self, out: list) -> None:
        while self._open:
            _, entry = self._open.popitem(last=False)
            self._summary(entry, out)

    @staticmethod
    def _summary(entry, out: list) -> None:
        _, first, repeats, first_ts, last_ts = entry
        if repeats:
            out.append(first._replace(ts_us=first_ts, count=repeats, last_ts_us=last_ts))
