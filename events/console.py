"""Events on the console as they are written: Maltrail's event line on stderr (`--console`).

Owns the console line and its colour rule, and the thread that writes it:

- The line is Maltrail's (events/formats.py format_maltrail), one per record as the log holds
  it (a noise-control follow-up is a second line, as `tail` shows it). Control characters that
  would reach a terminal as commands (C0 but tab, DEL, C1) are shown as `\\xNN`: an attacker's
  user agent or URL must not be able to move the cursor or retitle the window.
- Colour by severity (Maltrail's: high bold light red, medium bold light yellow, low bold light
  cyan), only when the stream is a terminal, and never when the environment sets NO_COLOR to
  anything (no-color.org) or TERM is "dumb". A pipe or a file gets plain lines.
- `Console.show` only queues: a thread of its own renders and writes, so a slow terminal, or a
  pipe whose reader stopped reading, never holds up the caller (the log writer, which every worker
  waits on). At most QUEUE_LINES wait; beyond that a line is counted as not shown, never waited for,
  and said once. A stream that is gone (EPIPE) ends the console, not the caller.

Must not know how events are detected, written to the log or forwarded.
"""

from __future__ import annotations

import collections
import os
import re
import threading
from typing import Callable, Iterable

from events.formats import format_maltrail
from events.record import Event

QUEUE_LINES = 10_000
COLOURS = {"high": "\x1b[1;91m", "medium": "\x1b[1;93m", "low": "\x1b[1;96m"}
RESET = "\x1b[0m"
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def wants_colour(fd: int, environ=None) -> bool:
    """Colour on `fd`: a terminal, no NO_COLOR, TERM not "dumb"."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR") or env.get("TERM") == "dumb":
        return False
    try:
        return os.isatty(fd)
    except OSError:
        return False


def console_line(event: Event, colour: bool) -> bytes:
    """The console's line for one event, with its newline."""
    line = _CONTROL.sub(lambda m: "\\x%02x" % ord(m.group()), format_maltrail(event))
    if colour:
        line = "%s%s%s" % (COLOURS.get(event.severity, ""), line, RESET)
    return (line + "\n").encode("utf-8", "backslashreplace")


class Console:
    """Writes the events given to `show` to `fd` from a thread of its own (see the module doc)."""

    def __init__(self, fd: int = 2, colour: bool | None = None, queue_lines: int = QUEUE_LINES,
                 warn: Callable[[str], None] | None = None):
        self.fd = fd
        self.colour = wants_colour(fd) if colour is None else colour
        self.queue_lines = queue_lines
        self.warn = warn or (lambda text: None)
        self.shown = 0
        self.not_shown = 0
        self._queue: collections.deque = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self._gone = False
        self._thread = threading.Thread(target=self._run, name="console", daemon=True)
        self._thread.start()

    def show(self, events: Iterable[Event]) -> None:
        with self._wake:
            for event in events:
                if self._gone or len(self._queue) >= self.queue_lines:
                    if not self.not_shown and not self._gone:
                        self.warn("console: stderr does not keep up; events are left off the console (the log "
                                  "has every one)")
                    self.not_shown += 1
                    continue
                self._queue.append(event)
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
            data = b"".join(console_line(event, self.colour) for event in batch)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view):]
            except OSError:
                with self._wake:      # the reader is gone (EPIPE, a closed terminal): stop here
                    self._gone = True
                    self.not_shown += len(batch) + len(self._queue)
                    self._queue.clear()
                return
            self.shown += len(batch)

    def close(self, timeout_s: float = 2.0) -> None:
        """Writes what is queued (waiting at most `timeout_s` for the stream) and stops."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout_s)
        with self._wake:
            if self._thread.is_alive():     # still blocked on the stream: what is left is not shown
                self.not_shown += len(self._queue)
                self._queue.clear()
