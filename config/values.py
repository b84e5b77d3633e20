"""The rules for each kind of configuration value: what it accepts, how that is said, how a flag's
text becomes one, and how it is written back as TOML.

Owns one small class per value type named in `Key.type` ("int", "float", "bool", "str", "list",
"ints"), the `VALUE_TYPES` table that maps the name to it, the string forms a str (or each list
item) may be held to (`FORMS`: path, name, ifname, host, cidr, regex, proxy_url), and the TOML
spelling of values (`toml_value`), which messages use to show what was found.  Adding a type means
adding one class here and one line to `VALUE_TYPES`: the loader, the overrides and the printer ask
the key's class and never switch on the type's name.  (config/maltrail_conf.py still looks at the
name to coerce Maltrail's looser values; a new type reaches it only if maltrail.conf can set it.)

Must not: know the schema's keys or sections (a rule sees only the one `Key` it is handed), read
files, resolve host names or look at the host at all: a value is checked for form only.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import TYPE_CHECKING, Any, Callable, NamedTuple
from urllib.parse import urlsplit

if TYPE_CHECKING:  # the schema imports this module, not the other way round
    from config.schema import Key

__all__ = ["VALUE_TYPES", "FORMS", "NAME_MAX_BYTES", "ValueType", "toml_str", "toml_value", "type_name"]


# --------------------------------------------------------------------------------------------
# TOML spelling
# --------------------------------------------------------------------------------------------

_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
                 "\f": "\\f", "\r": "\\r"}


def toml_str(s: str) -> str:
    """`s` as a TOML basic string."""
    out = []
    for ch in s:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            # TOML basic strings may not hold raw control characters.
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    """The TOML text of a configuration value (string, number, boolean, or a list of them).

    Spelled from the Python type, not from a key's type: messages use it to show a value that
    was found where it does not belong."""
    if isinstance(value, bool):  # before int: a bool is an int to Python, not to TOML
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return toml_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError("no TOML form for %r" % (value,))


def type_name(value: Any) -> str:
    """What a parsed TOML value is, in the words of a message ("an integer", "a table")."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time" if hasattr(value, "isoformat") else type(value).__name__


# --------------------------------------------------------------------------------------------
# String forms
# --------------------------------------------------------------------------------------------

_HOSTNAME_RE = re.compile(r"^(?=.{1,253}\.?$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                          r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def _check_path(s: str) -> str | None:
    # A NUL can never reach the file system intact; catch it here rather than at open().
    return "it contains a NUL character" if "\0" in s else None


# The sensor name is written into every event record (and every line of Maltrail's format), so
# its size multiplies the log's.  Its default is the host name, which DNS bounds at 255 bytes on
# the wire (253 characters of text); no sensor needs a longer name than a host may have.
NAME_MAX_BYTES = 255


def _check_name(s: str) -> str | None:
    # Events are whitespace-separated fields in Maltrail's log format, so a name with a space
    # would shift every column after it.
    if any(c.isspace() for c in s):
        return "it contains whitespace"
    size = len(s.encode("utf-8"))
    if size > NAME_MAX_BYTES:
        return "it is %d bytes long, more than the %d bytes a host name may have" % (size, NAME_MAX_BYTES)
    return None


def _check_ifname(s: str) -> str | None:
    if s == "":
        return "an interface name is empty"
    if any(c.isspace() for c in s):
        return "an interface name contains whitespace"
    if "," in s:
        return "an interface name contains a comma"
    return None


def _check_host(s: str) -> str | None:
    try:
        ipaddress.ip_address(s)  # also takes IPv6 scope ids (fe80::1%eth0)
        return None
    except ValueError:
        pass
    if _HOSTNAME_RE.match(s) and not s.replace(".", "").isdigit():
        return None
    return "it is neither an IP address nor a host name"


def _http_url(s: str, credentials: str = "credentials in the URL are not supported"):
    """(the split URL, None) for an http:// or https:// URL with a host and no user name or
    password, else (None, why not); `credentials` is the message for a URL that carries them."""
    if any(c.isspace() for c in s):
        return None, "it contains whitespace"
    try:
        parts = urlsplit(s)
        parts.port
    except ValueError as exc:  # bad port number or malformed [IPv6] literal
        return None, "it is not a valid URL (%s)" % exc
    if parts.scheme not in ("http", "https"):
        return None, "the scheme must be http:// or https://"
    if not parts.hostname:
        return None, "the host is missing"
    if parts.username is not None or parts.password is not None:
        return None, credentials
    return parts, None


def _check_proxy_url(s: str) -> str | None:
    parts, problem = _http_url(s)
    if problem:
        return problem
    if parts.port is None or parts.port == 0:
        return "the port is missing"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "only scheme, host and port are allowed"
    return None


def _check_feed_url(s: str) -> str | None:
    return _http_url(s)[1]


def _check_feed_name(s: str) -> str | None:
    # Maltrail's feed names are module names: DISABLED_FEEDS is split at anything else.
    # "*" is also "all": every catalog feed (trailsdb/update.py).
    return None if s == "*" or re.fullmatch(r"[a-z0-9_]+", s) else "a feed name is lower-case letters, digits and _"


def _check_endpoint(s: str, schemes) -> str | None:
    """A forwarding destination: scheme://host:port, or host:port meaning the first scheme."""
    if any(c.isspace() for c in s):
        return "it contains whitespace"
    raw = s if "://" in s else "%s://%s" % (schemes[0], s)
    host_port = raw.split("://", 1)[1]
    if host_port.count(":") > 1 and not host_port.startswith("["):
        return "an IPv6 address goes in brackets: [%s]:PORT" % host_port.rsplit(":", 1)[0]
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        if "out of range" in str(exc):
            return "the port must be from 1 to 65535"
        return "it is not host:port (%s)" % exc
    if parts.scheme not in schemes:
        return "the scheme must be %s" % " or ".join("%s://" % x for x in schemes)
    if not parts.hostname:
        return "the host is missing"
    if port is None:
        return "the port is missing (host:port)"
    if port == 0:
        return "the port must be from 1 to 65535"
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        return "only scheme://host:port is allowed"
    return None


def _check_listen_address(s: str) -> str | None:
    # An address to bind, so a literal IP: resolving a host name would make what the sensor
    # exposes depend on DNS at start (and this module resolves nothing).
    host, colon, port = s.rpartition(":")
    if not colon or not host:
        return 'the port is missing (write "127.0.0.1:9114", or "[::1]:9114" for IPv6)'
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        return "the port %r is not a number from 0 to 65535" % port
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])  # also takes a scope id (fe80::1%eth0)
            return None
        except ValueError:
            return "%s is not an IPv6 address" % host
    if ":" in host:
        return "an IPv6 address is written in brackets, as in [::1]:9114"
    try:
        ipaddress.IPv4Address(host)
        return None
    except ValueError:
        return ("%r is not an IP address (a host name is not resolved here: 127.0.0.1 or [::1] "
                "for this host only)" % host)


def _check_severity_regex(s: str) -> str | None:
    # Maltrail's REMOTE_SEVERITY_REGEX convention: the groups' names are the severities.
    try:
        groups = re.compile(s).groupindex
    except re.error as exc:
        return "it is not a valid regular expression (%s)" % exc
    if not set(groups) & {"low", "medium", "high"}:
        return ("it has no named group low, medium or high, so every event would be medium; name the groups, "
                "e.g. (?P<high>malware)|(?P<low>scanner)")
    return None


def _check_webhook_url(s: str) -> str | None:
    parts, problem = _http_url(s, "credentials in the URL are not supported (put a token in the path, as webhooks do)")
    if problem:
        return problem
    if parts.fragment:
        return "a #fragment is never sent; leave it out"
    return None


def _check_json_output(s: str) -> str | None:
    """file:///absolute/path, or tcp://host:port."""
    if s.startswith("file:"):
        if not s.startswith("file:///"):
            return 'a file is written "file:///absolute/path" (three slashes, no host)'
        path = s[len("file://"):]
        if path.endswith("/") or os.path.basename(path) in (".", ".."):
            return "the path names a directory, not a file"
        if "?" in path or "#" in path:
            return 'a file path may not hold "?" or "#"'
        return _check_path(path)
    problem = _check_endpoint(s, ("tcp",)) if "://" in s else 'it is neither "file:///path" nor "tcp://host:port"'
    if problem and "://" in s and not s.startswith("tcp://"):
        return 'the scheme must be file:// or tcp://'
    return problem


# The names ALERT_FORMAT may use (events/forwarders/webhook.py FIELDS; tests/test_outputs_webhook.py
# holds the two lists equal).
ALERT_FORMAT_FIELDS = ("time", "timestamp", "sensor", "src_ip", "src_port", "dst_ip", "dst_port", "proto",
                       "type", "trail", "info", "reference", "severity", "count", "json")


_PLACEHOLDER_RE = re.compile(r"%%|%\([^)]*\)[-#0 +]*\d*(?:\.\d+)?[sdirfa]")


def _check_alert_format(s: str) -> str | None:
    # Formatted once with every field, as the webhook will: an unknown name or a conversion that
    # is not %(name)s is found now, not at the first alert. A bare "%" is refused even where Python
    # would take it ("% s" formats the whole mapping).
    if "%" in _PLACEHOLDER_RE.sub("", s):
        return "a % that is neither %(name)s nor %%; write %% for a literal %"
    try:
        s % {name: 0 if name in ("timestamp", "count") else "x" for name in ALERT_FORMAT_FIELDS}
    except KeyError as exc:
        return "%%(%s)s is not a field; the fields are %s" % (exc.args[0], ", ".join(ALERT_FORMAT_FIELDS))
    except (TypeError, ValueError) as exc:
        return ("it is not a template of %%(name)s placeholders (%s); write %%%% for a literal %%" % exc)
    return None


def _check_cidr(s: str) -> str | None:
    try:
        ipaddress.ip_network(s, strict=False)
        return None
    except ValueError:
        return "it is not an IP address or CIDR range"


def _check_regex(s: str) -> str | None:
    try:
        re.compile(s)
        return None
    except re.error as exc:
        return "it is not a valid regular expression (%s)" % exc


_USER_NAME_RE = re.compile(r"[A-Za-z0-9_.@+-]{1,64}")
_USER_HASH_RE = re.compile(r"\$argon2id\$\S+|[0-9a-fA-F]{64}")


def _check_netfilter_item(item: str) -> bool:
    try:
        if "-" in item and "/" not in item:
            left, right = (ipaddress.ip_address(x.strip()) for x in item.split("-", 1))
            return left.version == right.version and left <= right
        ipaddress.ip_network(item, strict=False)
        return True
    except ValueError:
        return False


def _check_user_line(s: str) -> str | None:
    # The form of server/auth/users.py's line, checked here so check-config catches it; the
    # server parses it again with its own (identical) rules.
    parts = s.strip().split(":", 3)
    if len(parts) != 4:
        return "it has %d field(s), not the 4 of name:hash:uid:netfilter" % len(parts)
    name, stored, uid, netfilter = (p.strip() for p in parts)
    if not _USER_NAME_RE.fullmatch(name):
        return "the user name must be 1-64 letters, digits or _ . @ + -"
    if not _USER_HASH_RE.fullmatch(stored):
        return ("user %s: the hash is neither argon2id nor Maltrail's 64-hex SHA-256 (make a new line with "
                "`maltrail-engine server user add %s`)" % (name, name))
    if not uid.isdigit():
        return "user %s: the uid is not a whole number" % name
    if netfilter not in ("", "*", "::"):
        for item in re.split(r"[\s,;]+", netfilter):
            if item and not _check_netfilter_item(item):
                return "user %s: netfilter item %r is not an address, CIDR or range a-b" % (name, item)
    return None


class Form(NamedTuple):
    """A rule a string must satisfy, and how what it allows is said for one and for several."""

    check: Callable[[str], str | None]  # None, or why the string does not satisfy it
    one: str
    several: str


def _check_clickhouse_url(s: str) -> str | None:
    # The user and password have keys of their own (the password is a secret): never in the URL.
    if not re.fullmatch(r"https?://[^/?#@\s]+/?", s):
        return 'it is not "http://host:port" or "https://host:port" (no path, user or query)'
    return None


def _check_timezone(s: str) -> str | None:
    import zoneinfo
    try:
        zoneinfo.ZoneInfo(s)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return "it is not a time zone name this machine knows"
    return None


FORMS: dict[str, Form] = {
    "path": Form(_check_path, "a path", "paths"),
    "name": Form(_check_name, "a name without whitespace, at most %d bytes" % NAME_MAX_BYTES,
                 "names without whitespace, at most %d bytes each" % NAME_MAX_BYTES),
    "ifname": Form(_check_ifname, "an interface name", "interface names"),
    "host": Form(_check_host, "an IP address or host name", "IP addresses or host names"),
    "cidr": Form(_check_cidr, "an IP address or CIDR range", "IP addresses or CIDR ranges"),
    "regex": Form(_check_regex, "a regular expression (Python syntax)", "regular expressions"),
    "proxy_url": Form(_check_proxy_url, 'a URL "http://host:port" or "https://host:port"',
                      'URLs "http://host:port" or "https://host:port"'),
    "listen_address": Form(_check_listen_address, 'an address to listen on, "IPv4:PORT" or "[IPv6]:PORT"',
                           'addresses to listen on, "IPv4:PORT" or "[IPv6]:PORT"'),
    "severity_regex": Form(_check_severity_regex, "a regular expression with named groups low, medium and/or high",
                       "regular expressions with named groups low, medium and/or high"),
    "severity": Form(lambda s: None if s in ("low", "medium", "high") else "it is not low, medium or high",
                 '"low", "medium" or "high"', '"low", "medium" or "high"'),
    "webhook_url": Form(_check_webhook_url, 'a URL "http://host[:port]/path" or "https://host[:port]/path"',
                    'URLs "http://host[:port]/path" or "https://host[:port]/path"'),
    "json_output": Form(_check_json_output, 'a destination "file:///path" or "tcp://host:port"',
                    'destinations "file:///path" or "tcp://host:port"'),
    "alert_format": Form(_check_alert_format, "a template with %(field)s placeholders", "templates"),
    "feed_url": Form(_check_feed_url, 'a URL "http://..." or "https://..."', 'URLs "http://..." or "https://..."'),
    "feed_name": Form(_check_feed_name, "a feed name", "feed names"),
    "endpoint": Form(lambda s: _check_endpoint(s, ("udp", "tcp", "tls")),
                     'a destination "udp://host:port", "tcp://host:port", "tls://host:port" or "host:port" (UDP)',
                     'destinations "udp://host:port", "tcp://host:port", "tls://host:port" or "host:port" (UDP)'),
    "endpoint_udp_tcp": Form(lambda s: _check_endpoint(s, ("udp", "tcp")),
                             'a destination "udp://host:port", "tcp://host:port" or "host:port" (UDP)',
                             'destinations "udp://host:port", "tcp://host:port" or "host:port" (UDP)'),
    "endpoint_udp": Form(lambda s: _check_endpoint(s, ("udp",)), 'a destination "host:port" or "[IPv6]:port"',
                         'destinations "host:port" or "[IPv6]:port"'),
    "user_line": Form(_check_user_line, 'a user line "name:hash:uid:netfilter"',
                      'user lines "name:hash:uid:netfilter"'),
    "store": Form(lambda s: None if s in ("sqlite", "clickhouse") else "it is neither sqlite nor clickhouse",
                  '"sqlite" or "clickhouse"', '"sqlite" or "clickhouse"'),
    "clickhouse_url": Form(_check_clickhouse_url, 'a URL "http://host:port" or "https://host:port"',
                           'URLs "http://host:port" or "https://host:port"'),
    "sql_name": Form(lambda s: None if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", s) else
                     "it is not letters, digits and _ (not starting with a digit, at most 63)",
                     "a database name", "database names"),
    "timezone": Form(_check_timezone, 'a time zone name ("UTC", "Europe/Berlin")', "time zone names"),
    "syslog_format": Form(lambda s: None if s in ("maltrail", "rfc5424") else "it is neither maltrail nor rfc5424",
                          '"maltrail" or "rfc5424"', '"maltrail" or "rfc5424"'),
}


def _check_text(spec: Key, s: str) -> str | None:
    """Why the non-empty string `s` (a str value or one list item) is not acceptable, or None."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes smuggled in from argv (surrogateescape)
        return "is not valid: it is not valid UTF-8 text"
    if spec.form:
        reason = FORMS[spec.form].check(s)
        if reason:
            return "is not valid: " + reason
    return None


# --------------------------------------------------------------------------------------------
# Value types
# --------------------------------------------------------------------------------------------

class ValueType:
    """The rules for one kind of value.  Each method is handed the `Key` being checked, so the
    type reads its own options from it (range, words, form, ...).

    check:      (normalised value, None) when a parsed value is acceptable, else (None, the
                problem: "is out of range", "has the wrong type: ...").  Lists come back as
                tuples, so a value in a Config cannot be mutated.
    describe:   what the key accepts, in words, for messages and help text.
    expected:   the TOML type(s) the key takes, for "has the wrong type: expected ...".
    parse_flag: a command-line flag's text as the value `check` expects; text that is not even
                of the right type comes back unchanged, for `check` to report as usual.
    dump:       the TOML text of a value `check` accepted.
    """

    def check(self, spec: Key, value: Any) -> tuple[Any, str | None]:
        raise NotImplementedError

    def describe(self, spec: Key) -> str:
        raise NotImplementedError

    def expected(self, spec: Key) -> str:
        raise NotImplementedError

    def parse_flag(self, spec: Key, text: str) -> Any:
        return text

    def dump(self, value: Any) -> str:
        raise NotImplementedError

    def wrong_type(self, spec: Key, value: Any) -> str:
        return "has the wrong type: expected %s, found %s" % (self.expected(spec), type_name(value))


class IntType(ValueType):
    """A whole number from spec.min to spec.max, or one of spec.words (workers = "auto")."""

    def check(self, spec: Key, value: Any) -> tuple[Any, str | None]:
        if isinstance(value, bool):
            # TOML true is not 1: a bool for a count is almost always a misplaced line.
            return None, self.wrong_type(spec, value)
        if isinstance(value, str) and spec.words:
            if value in spec.words:
                return value, None
            return None, "is not valid"
        if not isinstance(value, int):
            return None, self.wrong_type(spec, value)
        if not spec.min <= value <= spec.max:
            return None, "is out of range"
        return value, None

    def describe(self, spec: Key) -> str:
        text = "an integer from %d to %d" % (spec.min, spec.max)
        if spec.words:
            text = " or ".join(toml_str(w) for w in spec.words) + " or " + text
        return text

    def expected(self, spec: Key) -> str:
        return "an integer" + "".join(" or %s" % toml_str(w) for w in spec.words)

    def parse_flag(self, spec: Key, text: str) -> Any:
        if text in spec.words:
            return text
        try:
            return int(text.strip(), 10)
        except ValueError:
            return text

    def dump(self, value: Any) -> str:
        return toml_str(value) if isinstance(value, str) else str(value)


class FloatType(ValueType):
    """A number from spec.min to spec.max; an integer is taken as the same float."""

    def check(self, spec: Key, value: Any) -> tuple[Any, str | None]:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, self.wrong_type(spec, value)
        if not spec.min <= value <= spec.max:
            return None, "is out of range"
        return float(value), None

    def describe(self, spec: Key) -> str:
        return "a number from %s to %s" % (spec.min, spec.max)

    def expected(self, spec: Key) -> str:
        return "a number"

    def parse_flag(self, spec: Key, text: str) -> Any:
        try:
            return float(text.strip())
        except ValueError:
            return text

    def dump(self, value: Any) -> str:
        return repr(value)


class BoolType(ValueType):
    """true or false; on the command line also yes/no, on/off, 1/0."""

    _TRUE = ("true", "yes", "on", "1")
    _FALSE = ("false", "no", "off", "0")

    def check(self, spec: Key, value: Any) -> tuple[Any, str | None]:
        return (value, None) if isinstance(value, bool) else (None, self.wrong_type(spec, value))

    def describe(self, spec: Key) -> str:
        return "true or false"

    def expected(self, spec: Key) -> str:
        return "a boolean (true or false)"

    def parse_flag(self, spec: Key, text: str) -> Any:
        lowered = text.strip().lower()
        if lowered in self._TRUE:
            return True
        if lowered in self._FALSE:
            return False
        return text

    def dump(self, value: Any) -> str:
        return "true" if value else "false"


class StrType(ValueType):
    """A string, held to spec.form when it has one; "" only when spec.empty_ok."""

    def check(self, spec: Key, value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, str):
            return None, self.wrong_type(spec, value)
        if value == "":
            return (value, None) if spec.empty_ok else (None, "is not valid: it must not be empty")
        problem = _check_text(spec, value)
        return (None, problem) if problem else (value, None)

    def describe(self, spec: Key) -> str:
        if not spec.form:
            return "any string" if spec.empty_ok else "any non-empty string"
        return FORMS[spec.form].one + (' or "" (empty)' if spec.empty_ok else " (not empty)")

    def expected(self, spec: Key) -> str:
        return "a string"

    def dump(self, value: Any) -> str:
        return toml_str(value)


class ListType(ValueType):
    """An array of distinct non-empty strings (each held to spec.form), at least spec.min_items
    of them; with spec.split also one comma-separated string, as Maltrail writes its lists."""

    def check(self, spec: Key, value: Any) -> tuple[Any, str | None]:
        if isinstance(value, str) and spec.split:
            items = [part.strip() for part in value.split(",")]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            return None, self.wrong_type(spec, value)
        for index, item in enumerate(items, 1):
            if not isinstance(item, str):
                return None, "has the wrong type: item %d is %s, expected a string" % (
                    index, type_name(item))
            if item == "":
                return None, "is not valid: item %d is empty" % index
            problem = _check_text(spec, item)
            if problem:
                return None, "%s (item %d)" % (problem, index)
        if len(items) < spec.min_items:
            return None, "is not valid: it has fewer than %d item(s)" % spec.min_items
        seen = set()
        for item in items:
            if item in seen:
                return None, "is not valid: %s is listed twice" % toml_str(item)
            seen.add(item)
        return tuple(items), None

    def describe(self, spec: Key) -> str:
        plural = FORMS[spec.form].several if spec.form else "strings"
        text = "an array of %s" % plural
        if spec.min_items:
            text += " (at least %d)" % spec.min_items
        if spec.split:
            text += ", or one string of comma-separated %s" % plural
        return text

    def expected(self, spec: Key) -> str:
        return "a string or an array of strings" if spec.split else "an array of strings"

    def dump(self, value: Any) -> str:
        return "[" + ", ".join(toml_str(item) for item in value) + "]"


class IntsType(ValueType):
    """An array of distinct whole numbers, each from spec.min to spec.max."""

    def check(self, spec: Key, value: Any) -> tuple[Any, str | None]:
        if not isinstance(value, (list, tuple)):
            return None, self.wrong_type(spec, value)
        for index, item in enumerate(value, 1):
            if isinstance(item, bool) or not isinstance(item, int):
                return None, "has the wrong type: item %d is %s, expected an integer" % (index, type_name(item))
            if not spec.min <= item <= spec.max:
                return None, "is out of range (item %d)" % index
        if len(set(value)) != len(value):
            return None, "is not valid: an item is listed twice"
        return tuple(value), None

    def describe(self, spec: Key) -> str:
        return "an array of integers from %d to %d" % (spec.min, spec.max)

    def expected(self, spec: Key) -> str:
        return "an array of integers"

    def dump(self, value: Any) -> str:
        return "[" + ", ".join(str(item) for item in value) + "]"


# Key.type -> its rules.
VALUE_TYPES: dict[str, ValueType] = {
    "int": IntType(),
    "float": FloatType(),
    "bool": BoolType(),
    "str": StrType(),
    "list": ListType(),
    "ints": IntsType(),
}
