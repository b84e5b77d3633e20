"""Distinct values per key within a sliding window of packet time, in bounded memory.

Owns one rule, shared by every scan heuristic: "more than `threshold` distinct values for this key
within `window_us`" (ports from one source to one target, hosts from one source on one port, first
path segments from one source to one server). It needs no more than threshold + 1 values per key:
the condition holds exactly when the threshold + 1 values kept were all seen within the window.

Per key, values are kept in insertion order with the packet time they were last seen. A value seen
again only moves its time forward. A new value first drops the values that left the window; when
threshold + 1 are still kept, the least recently seen one (the first of them on a tie) makes room.
Keys are evicted least recently used once `max_keys` are held; `evicted_keys` counts them.

The C scan's window (workers/csrc/window.h, used by workers/csrc/fastpath.c) implements the same
rule, step for step, so that both paths reach the same verdicts; tests/test_heuristics_fast.py
holds them to it (generated traffic at the thresholds, window edges and caps, compared event for
event, counters and saturation included). tests/test_heuristics.py tests this one alone.

Must not know what the keys and values mean.
"""

from __future__ import annotations

from collections import OrderedDict


class DistinctWindow:
    """The rule above for at most `max_keys` keys: more than `threshold` distinct values per key
    within `window_us` of packet time."""

    def __init__(self, threshold: int, window_us: int, max_keys: int):
        self.keep = threshold + 1
        self.window_us = window_us
        self.max_keys = max_keys
        self.evicted_keys = 0
        self._keys: OrderedDict = OrderedDict()  # key -> [[value, last_ts_us], ...]

    def __len__(self) -> int:
        return len(self._keys)

    def observe(self, key, value, ts_us: int) -> bool:
        """Records `value` for `key` at `ts_us`; True when more than `threshold` distinct values
        of the key fall within the window ending at `ts_us`."""
        entries = self._keys.get(key)
        if entries is None:
            if len(self._keys) >= self.max_keys:
                self._keys.popitem(last=False)
                self.evicted_keys += 1
            entries = self._keys[key] = []
        else:
            self._keys.move_to_end(key)
        horizon = ts_us - self.window_us
        for entry in entries:
            if entry[0] == value:
                if ts_us > entry[1]:
                    entry[1] = ts_us
                break
        else:
            if any(e[1] <= horizon for e in entries):
                entries[:] = [e for e in entries if e[1] > horizon]
            if len(entries) >= self.keep:
                oldest = 0
                for i in range(1, len(entries)):
                    if entries[i][1] < entries[oldest][1]:
                        oldest = i
                del entries[oldest]
            entries.append([value, ts_us])
        if len(entries) < self.keep:
            return False
        return min(e[1] for e in entries) > horizon
