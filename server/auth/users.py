"""Users and their passwords: the `[server] users` lines and the hashes in them.

Owns the user line in Maltrail's form `name:hash:uid:netfilter` (Maltrail's `USERS`), parsed
into `User` records with errors that name the file, line, key and item and say how to fix them;
the two hash forms and how a password is checked against each; and the making of a new line
(`maltrail-engine server user add`). Must not know sessions, HTTP or the state database (the
login flow in server/auth/login.py combines them).

Hash forms:
  argon2id   a PHC string `$argon2id$v=19$m=...,t=...,p=...$salt$hash` (argon2-cffi), the form
             every new line gets.
  sha256     Maltrail's unsalted 64-hex SHA-256 of the password, accepted only to migrate a
             Maltrail configuration: loading such a line warns, naming the user (never the
             hash); a login with it is accepted only over TLS or from loopback (the caller says
             which), and the first success stores an argon2id hash in the state database.
Maltrail's older PBKDF2 form (`$salt$rounds$hash`) is refused with the way out.

Comparisons of secrets are constant-time (hmac.compare_digest; argon2's verify is).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Iterable

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from server.auth.scopes import Scope, ScopeError, parse_netfilter

__all__ = ["User", "UserConfigError", "parse_user_line", "parse_users", "hash_password", "make_user_line",
           "check_password", "needs_rehash", "HASHER", "validate_name", "KIND_ARGON2ID", "KIND_SHA256"]

KIND_ARGON2ID = "argon2id"
KIND_SHA256 = "sha256"

# argon2-cffi's defaults are RFC 9106's second recommendation (t=3, 64 MiB, p=4).
HASHER = PasswordHasher()

_NAME_RE = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_PBKDF2_RE = re.compile(r"\$[0-9a-fA-F]+\$\d+\$[0-9a-fA-F]+")
FIX_NEW_LINE = "make a new line with `maltrail-engine server user add NAME`"


class UserConfigError(ValueError):
    """Unusable user lines; `problems` holds one message per problem, each naming where."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class User:
    name: str
    hash: str                 # as written in the config
    kind: str                 # KIND_ARGON2ID or KIND_SHA256
    uid: int
    netfilter: str
    scope: Scope

    @property
    def restricted_view(self) -> bool:
        """Maltrail's rule: uid >= 1000 only views results (and sees custom trails masked when
        ENABLE_MASK_CUSTOM is on)."""
        return self.uid >= 1000

    def __repr__(self) -> str:   # never the hash, not even in a traceback
        return "User(%r, uid=%d, kind=%s, scope=%r)" % (self.name, self.uid, self.kind, self.scope)


def validate_name(name: str) -> str | None:
    """Why `name` cannot be a user name, or None."""
    if not _NAME_RE.fullmatch(name):
        return "the name %r must be 1-64 letters, digits or _ . @ + -" % name
    return None


def parse_user_line(line: str) -> User:
    """One `name:hash:uid:netfilter` line; raises ValueError saying what is wrong and how to fix
    it (without repeating the hash). The netfilter, the last field, may hold colons (IPv6)."""
    text = line.strip()
    parts = text.split(":", 3)
    if len(parts) != 4:
        raise ValueError("has %d field(s), expected 4: name:hash:uid:netfilter (netfilter may be empty, "
                         "as in \"admin:HASH:0:\")" % len(parts))
    name, stored, uid_text, netfilter = (p.strip() for p in parts)
    problem = validate_name(name)
    if problem:
        raise ValueError(problem)
    if stored.startswith("$argon2id$"):
        try:
            HASHER.check_needs_rehash(stored)  # parses the parameters: a mangled string fails here
        except (InvalidHashError, ValueError):
            raise ValueError("user %s: the argon2id hash is damaged; %s" % (name, FIX_NEW_LINE)) from None
        kind = KIND_ARGON2ID
    elif _SHA256_RE.fullmatch(stored):
        kind = KIND_SHA256
    elif _PBKDF2_RE.fullmatch(stored):
        raise ValueError("user %s: Maltrail's PBKDF2 hashes are not accepted; %s" % (name, FIX_NEW_LINE))
    else:
        raise ValueError("user %s: the hash is neither argon2id ($argon2id$...) nor Maltrail's 64-hex SHA-256; %s"
                         % (name, FIX_NEW_LINE))
    if not uid_text.isdigit() or int(uid_text) > 2**31 - 1:
        raise ValueError("user %s: uid %r is not a whole number from 0 (0-999 administer, 1000 and above only view)"
                         % (name, uid_text))
    try:
        scope = parse_netfilter(netfilter)
    except ScopeError as exc:
        raise ValueError("user %s: netfilter: %s" % (name, exc)) from None
    return User(name, stored, kind, int(uid_text), netfilter, scope)


def parse_users(lines: Iterable[str], where: str = "[server] users", warn=None) -> dict[str, User]:
    """The users of `lines` by name. `where` prefixes every message ("FILE:LINE: [server] users").
    Raises UserConfigError with every problem at once; calls warn(message) once per user whose
    hash is the legacy SHA-256 (naming the user, never the hash)."""
    users: dict[str, User] = {}
    problems = []
    for index, line in enumerate(lines, 1):
        try:
            user = parse_user_line(line)
        except ValueError as exc:
            problems.append("%s item %d %s" % (where, index, exc))
            continue
        if user.name in users:
            problems.append("%s item %d: user %s is listed twice; keep one line per user" % (where, index, user.name))
            continue
        users[user.name] = user
    if problems:
        raise UserConfigError(problems)
    if warn is not None:
        for user in users.values():
            if user.kind == KIND_SHA256:
                warn("user %s has Maltrail's unsalted SHA-256 password hash: it is accepted only over TLS or "
                     "from loopback, and replaced by an argon2id hash at the first login; better, %s"
                     % (user.name, FIX_NEW_LINE.replace("NAME", user.name)))
    return users


def users_from_config(cfg, warn=None) -> dict[str, User]:
    """The users of a loaded Config ([server] users), messages located at the file and line."""
    line = cfg.lines.get(("server", "users")) if cfg.path else None
    where = "%s%s: [server] users" % (cfg.path or "defaults", ":%d" % line if line else "")
    return parse_users(cfg.server.users, where, warn)


def hash_password(password: str) -> str:
    """A new argon2id hash of `password`."""
    return HASHER.hash(password)


def make_user_line(name: str, password: str, uid: int = 0, netfilter: str = "") -> str:
    """The `[server] users` line for a new user; raises ValueError for a bad name, uid or netfilter
    and for an empty password."""
    if password == "":
        raise ValueError("the password is empty")
    line = "%s:%s:%d:%s" % (name, hash_password(password), uid, netfilter)
    parse_user_line(line)  # the same rules a loaded line is held to
    return line


def check_password(stored: str, kind: str, password: str) -> bool:
    """Whether `password` matches the hash `stored` of form `kind`; constant-time."""
    if kind == KIND_SHA256:
        digest = hashlib.sha256(password.encode("utf-8", "surrogatepass")).hexdigest()
        return hmac.compare_digest(digest, stored.lower())
    try:
        return HASHER.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str, kind: str) -> bool:
    """Whether a hash that just verified should be replaced: every SHA-256 one, and an argon2id
    one made with weaker parameters than this release's."""
    return kind == KIND_SHA256 or HASHER.check_needs_rehash(stored)


# A hash checked when the user does not exist, so an unknown name costs as much as a wrong password.
DUMMY_HASH = HASHER.hash("not a password of anyone")
