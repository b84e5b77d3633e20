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

The open groups live in flat, slot-indexed arrays (the times, the repeat count, the order of
opening as links between slots), not in an object per group: under a flood of distinct scanners
every one of up to `max_entries` groups is open at once, and per-group Python objects were the
largest thing a worker held (ARCHITECTURE.md, "What the heuristics' state costs under a scanner
flood"). Per group there remain the key (with the source packed into one integer), a slot of five
references (a field's first value, or once it varies the values listed: three bytes a port, a
list otherwise) and, only past MAX_LISTED values, the counted sets; the strings and port numbers
groups share are held once.

Must not know about packets or how events are written.
"""

from __future__ import annotations

import sys
from array import array

from events.record import Event

MAX_LISTED = 16
MAX_COUNTED = 1024          # distinct values per field a group counts beyond the listed ones
# Event fields a group's repeats may differ in: src_ip, src_port, dst_ip, dst_port, proto.
_VARYING = (2, 3, 4, 5, 6)
_FIELDS = len(_VARYING)
_NONE_PORT = 0xFFFF + 1     # a listed port of None (no ports: ICMP)
_intern = sys.intern
_NONE_CODE = bytes((0x80 | _NONE_PORT >> 14, _NONE_PORT >> 7 & 0x7F, _NONE_PORT & 0x7F))
_SHARED_INTS = 4096         # port numbers held shared by every group (Condenser._share)


def _port_code(value) -> bytes:
    """A port (or None) as three bytes, only the first with its top bit set: a code found in a
    string of codes is always found at a code's start, so `in` is exact membership."""
    if value is None:
        value = _NONE_PORT
    return bytes((0x80 | value >> 14, value >> 7 & 0x7F, value & 0x7F))


def _listed(first, value):
    """A field's listed values, the first among them: ports (or None) as a bytes string of port
    codes (a fifth of a list of int objects), anything else as a list."""
    if _port_like(first) and _port_like(value):
        return _port_code(first) + _port_code(value)
    return [first, value]


def _port_like(value) -> bool:
    return value is None or (type(value) is int and 0 <= value <= 0xFFFF)


def _values(listed) -> list:
    """The listed values as the events carried them."""
    if type(listed) is list:
        return listed
    ports = [(listed[j] & 0x7F) << 14 | listed[j + 1] << 7 | listed[j + 2] for j in range(0, len(listed), 3)]
    return [None if v == _NONE_PORT else v for v in ports]


def _order(value):
    if value is None:
        return (0, 0, "")
    if isinstance(value, int):
        return (1, value, "")
    return (2, 0, str(value))


def _compact_source(source):
    """The group source as held in a key: workers/flow.py group_key's ("", version, address) as
    one integer (a tuple and an integer object less per group); any other source as it is. An
    integer source is refused: it could equal a packed one."""
    if (type(source) is tuple and len(source) == 3 and source[0] == "" and type(source[1]) is int
            and 0 <= source[1] < 16 and type(source[2]) is int and source[2] >= 0):
        return source[2] << 4 | source[1]
    if isinstance(source, int):
        raise TypeError("a noise-control source is workers/flow.py group_key's tuple, not an integer: %r"
                        % (source,))
    return source


class Condenser:
    """Noise control for one worker: the open groups, bounded in number and in values kept, and
    the counters of what the bounds cost (the rule is the module docstring's).

    A group is a slot: `_slots` maps its key to the slot; the arrays hold, per slot, its start
    (the first event's time), the first repeat's and the last repeat's times, the repeat count,
    the values it holds that took room, the fields that lost a value (a bit each), and the slots
    opened before and after it (the order groups close in when they close early or expire: the
    order of opening, oldest first); `_vals` holds five references per slot (each varying field's
    first repeat's value, or the listed values once the field varies); `_extra` the counted sets
    of the few groups past MAX_LISTED values."""

    def __init__(self, window_us: int, max_entries: int = 65536, max_values: int = 262144):
        self.window_us = window_us
        self.max_entries = max_entries
        self.max_values = max_values
        self.early_closes = 0
        self.suppressed = 0
        self.uncounted = 0          # values seen that found no room (a record says "or more")
        self._kept = 0              # values that took room, over all open groups
        self._slots: dict = {}      # key -> slot
        self._keys: list = []       # slot -> key (None when free)
        self._start = array("q")
        self._first_ts = array("q")
        self._last_ts = array("q")
        # counts in lists, not arrays: they are small, and a small int is a shared object, where
        # every read of an array makes one
        self._repeats: list = []
        self._held: list = []       # values this group holds that took room
        self._more = bytearray()
        self._prev = array("l")
        self._next = array("l")
        self._vals: list = []       # 5 per slot
        self._extra: dict = {}      # slot -> [set or None] * 5
        self._free: list = []
        self._ints: dict = {}       # int -> the same int (_share)
        self._codes: dict = {}      # port -> _port_code(port), the ones seen lately
        self._metas: dict = {}      # (sensor, type, info, reference, severity) -> the same tuple
        self._head = self._tail = -1  # oldest and newest open slot

    def __len__(self) -> int:
        return len(self._slots)

    @staticmethod
    def key(event: Event, source=None):
        """The group's key: the source, the trail, and the rest of what says "the same trail"
        (sensor, type, info, reference, severity) as one tuple, which every group of those
        shares (Condenser._open)."""
        return (_compact_source(source) if source is not None else event.src_ip, event.trail,
                (event.sensor, event.type, event.info, event.reference, event.severity))

    def offer(self, event: Event, out: list, source=None) -> None:
        """Appends to `out` what must be emitted now because of `event`. `source` identifies the
        source the event belongs to (the worker passes its packet's group, workers/flow.py
        group_key); without it, the event's source address."""
        key = self.key(event, source)
        slot = self._slots.get(key)
        if slot is not None:
            if event.ts_us < self._start[slot] + self.window_us:
                kept, lost = self._add(slot, event, self.max_values - self._kept)
                self._kept += kept
                self.uncounted += lost
                self.suppressed += 1
                return
            self._close(slot, out)
        self._open(key, event)
        out.append(event)
        if len(self._slots) > self.max_entries:
            self.early_closes += 1
            self._close(self._head, out)

    def expire(self, now_us: int, out: list, max_groups: int | None = None) -> bool:
        """Closes windows that ended before packet time `now_us` (oldest first): all of them, or
        at most `max_groups` (as flush). True while such windows remain open."""
        return self._close_oldest(out, max_groups, now_us - self.window_us)

    def flush(self, out: list, max_groups: int | None = None) -> bool:
        """Closes the open groups, oldest first: all of them, or at most `max_groups` (a caller
        that sends what they emit in parts holds one part at a time, not a record per group of a
        flood). True while groups remain open."""
        return self._close_oldest(out, max_groups)

    def _close_oldest(self, out: list, max_groups: int | None, started_by_us: int | None = None) -> bool:
        """Closes open groups oldest first while they started at or before `started_by_us` (None:
        any), at most `max_groups` of them (None: no limit); True while such groups remain."""
        start, closed = self._start, 0
        while self._head >= 0 and (started_by_us is None or start[self._head] <= started_by_us):
            if max_groups is not None and closed >= max_groups:
                return True
            self._close(self._head, out)
            closed += 1
        return False

    def _open(self, key, event: Event) -> None:
        # The trail's text is kept once: a port scan's trail is its source address, which the
        # first repeat's src_ip then shares (_add interns it too).
        metas = self._metas
        meta = metas.get(key[2])
        if meta is None:
            if len(metas) >= _SHARED_INTS:
                metas.clear()           # bounded: only the sharing of what it held ends
            meta = metas[key[2]] = key[2]
        key = (key[0], _intern(key[1]) if type(key[1]) is str else key[1], meta)
        if self._free:
            slot = self._free.pop()
            self._keys[slot] = key
            self._start[slot] = event.ts_us
            self._last_ts[slot] = event.ts_us
            self._first_ts[slot] = self._repeats[slot] = self._held[slot] = self._more[slot] = 0
        else:
            slot = len(self._keys)
            self._keys.append(key)
            self._start.append(event.ts_us)
            self._last_ts.append(event.ts_us)
            self._first_ts.append(0)
            self._repeats.append(0)
            self._held.append(0)
            self._more.append(0)
            self._prev.append(-1)
            self._next.append(-1)
            self._vals.extend((None,) * _FIELDS)
        self._slots[key] = slot
        self._prev[slot] = self._tail
        self._next[slot] = -1
        if self._tail >= 0:
            self._next[self._tail] = slot
        else:
            self._head = slot
        self._tail = slot

    def _add(self, slot: int, event: Event, room: int) -> tuple[int, int]:
        """Counts a repeat; `room` is how many more values all groups together may keep. The
        first value of each field is always kept (the group cap bounds those); every further one,
        listed or only counted, takes room. Returns (values kept that took room, values that
        found none)."""
        repeats = self._repeats[slot] = self._repeats[slot] + 1
        ts = event.ts_us
        if ts > self._last_ts[slot]:
            self._last_ts[slot] = ts
        base = slot * _FIELDS
        vals = self._vals
        if repeats == 1:
            self._first_ts[slot] = ts
            for i, field in enumerate(_VARYING):
                value = event[field]
                vals[base + i] = self._share(value)
            return 0, 0
        kept = lost = 0
        codes = self._codes
        for i, field in enumerate(_VARYING):
            value = event[field]
            held = vals[base + i]
            if value == held:       # a field's first value (a value never equals a listing)
                continue
            kind = type(held)
            if kind is bytes:
                if value is None:
                    code = _NONE_CODE
                elif type(value) is int and 0 <= value <= 0xFFFF:
                    code = codes.get(value)
                    if code is None:
                        if len(codes) >= _SHARED_INTS:
                            codes.clear()
                        code = codes[value] = _port_code(value)
                else:
                    held = vals[base + i] = _values(held)    # a value no port code can hold
                    kind = list
                if kind is bytes and code in held:
                    continue
            if kind is list:
                if value in held:
                    continue
            elif kind is not bytes:
                kind = None         # only the field's first value so far
            extras = self._extra.get(slot) if self._extra else None
            extra = extras[i] if extras else None
            if extra is not None and value in extra:
                continue
            if kept >= room:
                self._more[slot] |= 1 << i
                lost += 1
            elif kind is None:
                vals[base + i] = _listed(held, self._share(value))
                kept += 1
            elif len(held) < (3 * MAX_LISTED if kind is bytes else MAX_LISTED):
                if kind is bytes:
                    vals[base + i] = held + code
                else:
                    held.append(self._share(value))
                kept += 1
            elif extra is None or len(extra) < MAX_COUNTED:
                if extras is None:
                    extras = self._extra[slot] = [None] * _FIELDS
                if extra is None:
                    extra = extras[i] = set()
                extra.add(value)
                kept += 1
            else:
                self._more[slot] |= 1 << i
                lost += 1
        if kept:
            self._held[slot] += kept
        return kept, lost

    def _share(self, value):
        """`value` as a group keeps it: a string interned (a port scan's source address is also
        its trail), a port number shared with the other groups' (a scan's ports are the same
        numbers for every scanner). The table of shared ints is bounded: it starts over when full,
        which only ends the sharing of what it held."""
        if type(value) is str:
            return _intern(value)
        if type(value) is int:
            shared = self._ints.get(value)
            if shared is not None:
                return shared
            if len(self._ints) >= _SHARED_INTS:
                self._ints.clear()
            self._ints[value] = value
        return value

    def _close(self, slot: int, out: list) -> None:
        """Emits the group's summary (if it has repeats) and frees its slot."""
        key = self._keys[slot]
        del self._slots[key]
        prev, nxt = self._prev[slot], self._next[slot]
        if prev >= 0:
            self._next[prev] = nxt
        else:
            self._head = nxt
        if nxt >= 0:
            self._prev[nxt] = prev
        else:
            self._tail = prev
        self._kept -= self._held[slot]
        extras = self._extra.pop(slot, None)
        base = slot * _FIELDS
        if self._repeats[slot]:
            more_bits = self._more[slot]
            sensor, type_, info, reference, severity = key[2]
            fields = [self._first_ts[slot], sensor, None, None, None, None, None, type_, key[1], info, reference,
                      severity, self._repeats[slot], self._last_ts[slot]]
            for i, field in enumerate(_VARYING):
                held = self._vals[base + i]
                extra = (extras[i] if extras else None) or ()
                more = more_bits >> i & 1
                listed = type(held) is bytes or type(held) is list
                if not listed and not more:
                    fields[field] = held
                    continue
                seen = _values(held) if listed else (held,)
                text = ",".join(str(v) if v is not None else "-" for v in sorted(seen, key=_order))
                if extra:
                    text += ",+%d" % len(extra) + (" or more" if more else "")
                elif more:
                    text += ",+more"
                fields[field] = text
            out.append(Event(*fields))
        self._vals[base:base + _FIELDS] = (None,) * _FIELDS
        self._keys[slot] = None
        self._free.append(slot)
