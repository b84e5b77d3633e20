"""The log directory as a spool (`disable_local_log_storage`, Maltrail's DISABLE_LOCAL_LOG_STORAGE).

Owns the rule that decides when a day file may go: it is not today's (local date: `tail` still
shows the day, and the writer is still adding to it), and every configured destination's saved
place in it (events/forwarders/cursor.py, LOG_DIR/.forward/NAME.json) is its end: the same file
(inode), offset at its size, no record of a pair half taken. A destination with no saved place
yet (never started) has passed nothing. So a collector that is down keeps every day file it has
not taken, however long: the spool costs disk, never an event.

Deleting is safe only where nothing can append to the file between the check and the unlink:
the log writer does it between two frames (it is the only appender, and lets go of the file
first, `release`), and the forwarder process does it once more when the sensor stops, after the
writer has closed the log. Must not know what destinations do with the events.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from events.forwarders.cursor import PositionStore
from events.log import day_files_in, file_name_for


def today_name(now_s: float | None = None) -> str:
    """The day file name of the local date now."""
    return file_name_for(int((time.time() if now_s is None else now_s) * 1_000_000))


def passed_files(dir_fd: int, position_names, today: str) -> list[tuple[str, os.stat_result]]:
    """(name, stat) of the day files, other than `today`, that every destination in
    `position_names` has passed; [] when there is no destination at all."""
    names = list(position_names)
    if not names:
        return []
    places = []
    for name in names:
        saved = PositionStore(dir_fd, name).load()
        if saved is None:
            return []           # a destination that never saved a place has passed nothing
        places.append(saved)
    out = []
    for _day, name in day_files_in(dir_fd):
        if name == today:
            continue
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if all(_at_end(saved.get(name), st) for saved in places):
            out.append((name, st))
    return out


def _at_end(place, st: os.stat_result) -> bool:
    return place is not None and place.inode == st.st_ino and place.offset >= st.st_size and place.done == 0


def sweep(dir_fd: int, position_names, release: Callable[[str], bool] = lambda name: True,
          now_s: float | None = None) -> list[str]:
    """Deletes the day files every destination has passed (see passed_files); `release(name)` is
    asked first and may refuse (the writer has a frame for that day on its way). Returns the
    names deleted. A file that changed since it was looked at (another inode, more bytes) stays."""
    deleted = []
    for name, st in passed_files(dir_fd, position_names, today_name(now_s)):
        if not release(name):
            continue
        try:
            now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if (now.st_ino, now.st_size) != (st.st_ino, st.st_size):
                continue
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            continue
        deleted.append(name)
    return deleted
