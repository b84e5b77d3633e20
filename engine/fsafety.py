"""Where the sensor may safely write: directories nobody else can plant files in.

Owns the rule a privileged process applies before it writes into a directory (the event log
directory, the trail artifact's directory): the directory, and every directory above it, must
not be writable by other users unless the sticky bit is set, and must belong to root or to an
account the sensor runs as. Otherwise another user could plant a symlink or a hard link at a name
the sensor is about to open and make it overwrite a file of their choosing.

Must not create, chmod or chown anything: it only answers whether a place is safe and why not.
"""

from __future__ import annotations

import os
import pwd
import stat


def _owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "uid %d" % uid


def directory_problem(path: str, trusted_uids=()) -> str | None:
    """Why `path` is not a safe directory to write into, or None when it is (or does not exist
    yet: its nearest existing ancestor is checked instead, since that is where it would be made).

    Unsafe: not a directory; it or an ancestor writable by every user without the sticky bit;
    it or an ancestor owned by someone other than root, the caller or `trusted_uids`.
    """
    trusted = {0, os.geteuid(), *trusted_uids}
    path = os.path.abspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        return "%s cannot be examined: %s" % (path, exc.strerror or exc)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        return "%s is not a directory" % path
    current = path
    while True:
        try:
            st = os.stat(current)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            return "%s cannot be examined: %s" % (current, exc.strerror or exc)
        if st is not None:
            what = "%s" % current if current == path else "%s (above %s)" % (current, path)
            if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
                return ("%s is writable by every user and has no sticky bit: anyone could plant a "
                        "symlink where the sensor writes; fix with `chmod o-w %s` (or `chmod +t`)"
                        % (what, current))
            if st.st_uid not in trusted:
                return ("%s belongs to %s, who could plant files where the sensor writes; make it "
                        "belong to root or to the sensor's account" % (what, _owner_name(st.st_uid)))
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
