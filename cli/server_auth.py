"""`maltrail-engine server user add` and `server sensor add`: making credentials.

Owns the two commands: `user add NAME [--uid N] [--netfilter ...]` asks for a password twice
without echo (or reads one line from standard input when that is not a terminal, for scripts),
refuses an empty one, and prints the `[server] users` line to paste into maltrail.toml;
`sensor add NAME` makes a random key, stores its hash in the state database and prints the key,
once. Must not write maltrail.toml (an administrator's file), or print a key twice.
"""

from __future__ import annotations

import base64
import getpass
import secrets
import sys
import time


def read_password(stdin=None) -> str | None:
    """The new password: asked twice on a terminal, one line read otherwise; None on mismatch."""
    stdin = stdin or sys.stdin
    if stdin.isatty():
        first = getpass.getpass("Password for the new user: ")
        if getpass.getpass("Again: ") != first:
            return None
        return first
    return stdin.readline().rstrip("\r\n")


def user_add(args) -> int:
    from server.auth.users import make_user_line, validate_name
    problem = validate_name(args.name)
    if problem:
        sys.stderr.write("maltrail-engine: %s\n" % problem)
        return 2
    password = read_password()
    if password is None:
        sys.stderr.write("maltrail-engine: the two passwords differ; nothing was made\n")
        return 1
    if password == "":
        sys.stderr.write("maltrail-engine: the password is empty; nothing was made\n")
        return 1
    try:
        line = make_user_line(args.name, password, args.uid, args.netfilter)
    except ValueError as exc:
        sys.stderr.write("maltrail-engine: %s\n" % exc)
        return 2
    sys.stderr.write("Add this line to [server] users in maltrail.toml:\n")
    sys.stdout.write(line + "\n")
    return 0


def sensor_add(args, cfg) -> int:
    from server.auth.state import StateDB, StateError, state_db_path
    key = "mtk_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    try:
        state = StateDB(state_db_path(cfg))
        try:
            state.add_sensor_key(args.name, key, time.time())
        finally:
            state.close()
    except StateError as exc:
        sys.stderr.write("maltrail-engine: %s\n" % exc)
        return 1
    sys.stderr.write("The key of sensor %s (shown once; only its hash is kept in %s; a sensor added again "
                     "gets a new key and its old one stops working):\n" % (args.name, state_db_path(cfg)))
    sys.stdout.write(key + "\n")
    return 0
