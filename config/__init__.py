"""maltrail.toml: the declared schema, the loader/validator, command-line overrides, the printer.

Owns: `SCHEMA` (the one declaration of every section and key: type, default, allowed values,
a one-line doc and the Maltrail option it stands for), reading and validating a TOML file
against it, merging command-line values on top, and printing the effective configuration for
`maltrail-engine check-config`.  Everything else here (defaults, messages, the printer, the
docs test in tests/test_config.py) is derived from `SCHEMA`; add a key there and nowhere else.

Must not: open interfaces, touch trail files or directories, resolve host names, or start
anything.  Paths are checked for form only; whether they exist is the business of the part
that uses them (a config written on one host is often checked on another).
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import shlex
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

__all__ = [
    "SCHEMA",
    "SECTION_DOCS",
    "SYSTEM_CONFIG_PATH",
    "ENV_VAR",
    "Key",
    "Config",
    "ConfigError",
    "iter_keys",
    "load_config",
    "apply_overrides",
    "parse_flag_value",
    "default_config_path",
    "dump_config",
    "resolved_sensor_name",
    "looks_like_maltrail_conf",
    "check_value",
    "toml_value",
    "comment_text",
]

ENV_VAR = "MALTRAIL_ENGINE_CONFIG"
SYSTEM_CONFIG_PATH = "/etc/maltrail-engine/maltrail.toml"

ORIGIN_DEFAULT = "default"
ORIGIN_FILE = "file"
ORIGIN_FLAG = "flag"
COMMAND_LINE = "command line"


# --------------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Key:
    """One configuration key.

    type:      "int", "float", "bool", "str", "list" (a list of strings) or "ints" (a list of
               integers, each from min to max).
    default:   the effective default value (lists are tuples, so a default cannot be mutated).
    doc:       one line saying what the key does.
    unit:      the unit of an int ("seconds", "bytes"), also carried in the key's name.
    min/max:   inclusive range of an int.
    words:     strings accepted in place of an int (workers = "auto").
    form:      name of a rule in `_FORMS` that a str value (or each list item) must satisfy.
    empty_ok:  a str may be "" (the doc says what empty means).
    split:     a list may also be written as one comma-separated string.
    min_items: fewest items a list may hold.
    maltrail:  the maltrail.conf option this corresponds to, "" when there is none.
    secret:    the value is a secret: never printed (check-config shows whether it is set).
    """

    type: str
    default: Any
    doc: str
    unit: str = ""
    min: int | None = None
    max: int | None = None
    words: tuple[str, ...] = ()
    form: str | None = None
    empty_ok: bool = False
    split: bool = False
    min_items: int = 0
    maltrail: str = ""
    secret: bool = False

    @property
    def allowed(self) -> str:
        """What the key accepts, in words, for messages and help text."""
        return _describe_allowed(self)


SECTION_DOCS: dict[str, str] = {
    "all": "settings shared by every part (Maltrail's [All] section)",
    "sensor": "the capturing sensor (Maltrail's [Sensor] section)",
    "heuristics": "the heuristic detections (all off when [sensor] use_heuristics = false): a switch "
                  "and a threshold each, and the caps on their state",
    "server": "the event server; a later release reads these, they are validated now",
}

SCHEMA: dict[str, dict[str, Key]] = {
    "all": {
        "log_dir": Key(
            "str", "/var/log/maltrail-engine", form="path",
            doc="directory the event log files are written to", maltrail="LOG_DIR"),
        "trails_artifact": Key(
            "str", "/var/lib/maltrail-engine/trails.mtdb", form="path",
            doc="compiled trail artifact the sensor loads (written by `trails build`)"),
        "trail_sources": Key(
            "list", (), form="path",
            doc="Maltrail trails.csv files and/or directories of Maltrail static trail files "
                "(*.txt) that `trails build` compiles", maltrail="TRAILS_FILE"),
        "custom_trails_dir": Key(
            "str", "", form="path", empty_ok=True,
            doc='directory of custom trail files (*.txt); "" for none',
            maltrail="CUSTOM_TRAILS_DIR"),
        "whitelist_file": Key(
            "str", "", form="path", empty_ok=True,
            doc='file of whitelisted IP addresses and domains; "" for none',
            maltrail="USER_WHITELIST"),
        "min_trail_prefix_v4": Key(
            "int", 8, unit="bits", min=1, max=32,
            doc="IPv4 range trails wider than this prefix (0.0.0.0/0, a /4) are rejected when trails "
                "are built, with the reason: they would match (nearly) every address"),
        "min_trail_prefix_v6": Key(
            "int", 12, unit="bits", min=1, max=128,
            doc="IPv6 range trails wider than this prefix (::/0, 2000::/3) are rejected when trails "
                "are built, with the reason: they would match (nearly) every address"),
        "ip_minimum_feeds": Key(
            "int", 3, min=1, max=100,
            doc="an IP address that only feeds list is kept when at least this many feeds (distinct "
                "references) list it; what static or custom trails list is always kept; 1 keeps every "
                "feed address", maltrail="IP_MINIMUM_FEEDS"),
        "update_period_s": Key(
            "int", 86400, unit="seconds", min=600, max=604800,
            doc="how often trails are rebuilt from their sources", maltrail="UPDATE_PERIOD"),
        "proxy_url": Key(
            "str", "", form="proxy_url", empty_ok=True,
            doc='HTTP(S) proxy used when fetching trail sources; "" for a direct connection',
            maltrail="PROXY_ADDRESS"),
    },
    "sensor": {
        "sensor_name": Key(
            "str", "", form="name", empty_ok=True,
            doc='name written into every event; "" means the host name',
            maltrail="SENSOR_NAME"),
        "interface": Key(
            "list", ("any",), form="ifname", split=True, min_items=1,
            doc='interface(s) to capture on; "any" for all of them',
            maltrail="MONITOR_INTERFACE"),
        "capture_filter": Key(
            "str", "default", empty_ok=True,
            doc='BPF expression applied in the kernel; "default" keeps what detection needs '
                '(no bulk TCP), "" captures everything',
            maltrail="CAPTURE_FILTER"),
        "snaplen_bytes": Key(
            "int", 2000, unit="bytes", min=64, max=262144,
            doc="bytes kept of each captured frame", maltrail="SNAP_LEN"),
        "promiscuous": Key(
            "bool", True,
            doc="put the interface(s) in promiscuous mode (needed on a span port)"),
        "capture_buffer_bytes": Key(
            "int", 33554432, unit="bytes", min=1048576, max=4294967296,
            doc="kernel capture buffer per interface", maltrail="CAPTURE_BUFFER"),
        "workers": Key(
            "int", "auto", min=1, max=256, words=("auto",),
            doc='number of worker processes; "auto" is one per CPU core',
            maltrail="PROCESS_COUNT"),
        "ring_bytes": Key(
            "int", 16777216, unit="bytes", min=65536, max=1073741824,
            doc="shared-memory ring between the capture process and each worker"),
        "use_heuristics": Key(
            "bool", True,
            doc="run the heuristic checks as well as trail matching", maltrail="USE_HEURISTICS"),
        "allow_no_trails": Key(
            "bool", False,
            doc="start even when no usable trails are loaded (otherwise refuse to start)"),
        "condense_window_s": Key(
            "int", 60, unit="seconds", min=1, max=3600,
            doc="noise control: repeats of one trail from one source within this window become one "
                "record with a count and the first/last time"),
        "host_whitelist_file": Key(
            "str", "", form="path", empty_ok=True,
            doc='per-host whitelist: lines "HOST TRAIL" (HOST an address or CIDR range, TRAIL a '
                'trail or a heuristic\'s name) silence that trail for that host only; "" for none'),
        "ignore_file": Key(
            "str", "", form="path", empty_ok=True,
            doc='ignore rules: lines "SRC_IP SRC_PORT DST_IP DST_PORT" (each an address, CIDR, '
                'port, port range a-b, or * for any); matching events are dropped and counted; '
                '"" for none', maltrail="USER_IGNORELIST"),
        "ignore_regex": Key(
            "str", "", form="regex", empty_ok=True,
            doc='events whose text "SRC_IP SRC_PORT DST_IP DST_PORT PROTO TYPE TRAIL INFO REFERENCE" '
                'matches this regular expression are dropped and counted; "" for none',
            maltrail="IGNORE_EVENTS_REGEX"),
        "stats_interval_s": Key(
            "int", 60, unit="seconds", min=0, max=86400,
            doc="how often capture/worker statistics are logged; 0 = only at exit"),
        "user": Key(
            "str", "maltrail-engine", form="name",
            doc='unprivileged account the workers, the log writer and (once its capture handles are '
                'open) the capture process run as when the sensor is started as root; the log '
                'directory is made to belong to it. "root" keeps root (not recommended). When the '
                'default account does not exist, "nobody" is used and a notice says so'),
        "log_server": Key(
            "str", "", form="endpoint_udp", empty_ok=True,
            doc='a Maltrail server (or ours) to send every event to, one UDP datagram each '
                '("<epoch seconds> <event line>"), "host:port" or "[IPv6]:port"; best effort, as in '
                'Maltrail; "" for none', maltrail="LOG_SERVER"),
        "log_server_secret": Key(
            "str", "", empty_ok=True, secret=True,
            doc='shared secret signing log_server datagrams as Maltrail\'s newer servers check them '
                '("MTS1 <HMAC>"); "" sends them unsigned', maltrail="LOG_SERVER_SECRET"),
        "syslog_server": Key(
            "list", (), form="endpoint", split=True,
            doc='SIEM collectors receiving every event as CEF over syslog: "udp://host:514", '
                '"tcp://host:514" (RFC 6587 octet counting) or "tls://host:6514"; a bare "host:port" '
                'is UDP, as Maltrail\'s. TCP and TLS lose nothing through an outage or a restart',
            maltrail="SYSLOG_SERVER"),
        "syslog_format": Key(
            "str", "maltrail", form="syslog_format",
            doc='"maltrail": Maltrail\'s CEF line byte for byte (no <PRI>, severity 0-2); "rfc5424": an '
                'RFC 5424 header and CEF severity on its 0-10 scale (3, 6, 9)'),
        "syslog_ca_file": Key(
            "str", "", form="path", empty_ok=True,
            doc='CA certificates (PEM) that verify tls:// collectors; "" for the system\'s'),
        "syslog_client_cert": Key(
            "str", "", form="path", empty_ok=True,
            doc='certificate (PEM) presented to tls:// collectors that ask for one; "" for none'),
        "syslog_client_key": Key(
            "str", "", form="path", empty_ok=True,
            doc='private key (PEM) of syslog_client_cert, if not in the same file; "" for none'),
        "logstash_server": Key(
            "list", (), form="endpoint_udp_tcp", split=True,
            doc='Logstash inputs receiving every event as Maltrail\'s JSON object: "udp://host:5000" '
                '(a datagram each, best effort) or "tcp://host:5000" (a line each, nothing lost); a bare '
                '"host:port" is UDP', maltrail="LOGSTASH_SERVER"),
    },
    "heuristics": {
        "scan_window_s": Key(
            "int", 30, unit="seconds", min=1, max=3600,
            doc="sliding window of packet time the scan heuristics count in"),
        "port_scan": Key(
            "bool", True,
            doc="TCP port scan: SYN, NULL, FIN and XMAS probes from one source to one target"),
        "port_scan_threshold": Key(
            "int", 10, min=1, max=65535,
            doc="a port scan is more than this many distinct ports within the window"),
        "udp_scan": Key(
            "bool", True,
            doc="UDP port scan: small non-DNS datagrams from one sender to one receiver"),
        "udp_scan_threshold": Key(
            "int", 10, min=1, max=65535,
            doc="a UDP scan is more than this many distinct ports within the window"),
        "udp_probe_max_bytes": Key(
            "int", 100, unit="bytes", min=0, max=65535,
            doc="larger UDP payloads are traffic (media, QUIC), not probes"),
        "infection_scan": Key(
            "bool", True,
            doc="infection (worm) scan: a local source reaching many hosts on a worm port"),
        "infection_scan_threshold": Key(
            "int", 32, min=1, max=65535,
            doc="an infection scan is more than this many distinct hosts within the window"),
        "infection_ports": Key(
            "ints", (135, 139, 445, 1433, 3389, 6379, 6892, 6893, 6901), min=1, max=65535,
            doc="the worm ports the infection scan watches"),
        "local_networks": Key(
            "list", ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "fc00::/7", "fe80::/10", "::1/128"), form="cidr", split=True,
            doc="networks counted as local (sources of infection scans; no direct-download or data-leakage events towards them)"),
        "web_scan": Key(
            "bool", True,
            doc="web scan: many distinct first path segments from one client to one web server"),
        "web_scan_threshold": Key(
            "int", 10, min=1, max=65535,
            doc="a web scan is more than this many distinct first path segments within the window"),
        "nxdomain": Key(
            "bool", True,
            doc="excessive NXDOMAIN answers per name and per parent domain in an hour"),
        "nxdomain_threshold": Key(
            "int", 20, min=1, max=1000000,
            doc="more than this many NXDOMAIN answers in one hour is an event"),
        "dga": Key(
            "bool", True,
            doc="DGA-like names among NXDOMAIN answers"),
        "dga_entropy": Key(
            "float", 3.5, min=0.0, max=8.0,
            doc="a first label with more Shannon entropy than this (bits per character) is DGA-like"),
        "dga_consonants": Key(
            "int", 9, min=1, max=63,
            doc="a first label with more consonants than this is DGA-like"),
        "long_domain": Key(
            "bool", True,
            doc="queries for names whose first label is long and has no hyphen"),
        "long_domain_length": Key(
            "int", 24, min=1, max=63,
            doc="a first label longer than this is long"),
        "dns_exhaustion": Key(
            "bool", True,
            doc="DNS exhaustion: many distinct subdomains of one domain in a short time (tunnels, floods)"),
        "dns_exhaustion_threshold": Key(
            "int", 1000, min=1, max=1000000,
            doc="more than this many distinct subdomains within the window is an event"),
        "dns_exhaustion_window_s": Key(
            "int", 60, unit="seconds", min=1, max=3600,
            doc="the window starts with the first subdomain counted"),
        "dns_answers": Key(
            "bool", True,
            doc="DNS answers pointing at sinkhole or parking trail addresses"),
        "user_agent": Key(
            "bool", True,
            doc="suspicious HTTP user agents (attack tools, exploit payloads)"),
        "http_request": Key(
            "bool", True,
            doc="attack patterns in HTTP paths and bodies (injection, traversal, RCE, XSS, XXE, config files, web shells)"),
        "direct_download": Key(
            "bool", True,
            doc="direct downloads of executables and scripts (.exe .dll .scr .hta .ps1 .msi .apk .elf ...)"),
        "iot_download": Key(
            "bool", True,
            doc="IoT malware downloads: architecture-named files from bare IP hosts"),
        "proxy_probe": Key(
            "bool", True,
            doc="open-proxy probes (absolute-form requests to port 80 naming probe/proxy/echo/check)"),
        "missing_host": Key(
            "bool", False,
            doc="HTTP requests without a Host header", maltrail="CHECK_MISSING_HOST"),
        "http_response": Key(
            "bool", True,
            doc="HTTP responses: sinkhole servers, seized-domain pages, script content types"),
        "forwarded_for": Key(
            "bool", True,
            doc="attribute HTTP request events to the client X-Forwarded-For, CF-Connecting-IP or True-Client-IP names"),
        "max_scan_keys": Key(
            "int", 65536, min=16, max=16777216,
            doc="per worker and scan heuristic: most (source, target) pairs tracked; the least recently seen is evicted"),
        "max_dns_domains": Key(
            "int", 16384, min=16, max=16777216,
            doc="per worker: most domains the DNS exhaustion heuristic tracks"),
        "max_dns_subdomains": Key(
            "int", 262144, min=16, max=67108864,
            doc="per worker: most subdomains the DNS exhaustion heuristic stores in all"),
        "max_nxdomain_names": Key(
            "int", 65536, min=16, max=16777216,
            doc="per worker: most names (and parents) the NXDOMAIN counters track"),
    },
    "server": {
        "http_address": Key(
            "str", "0.0.0.0", form="host",
            doc="address the reporting HTTP server listens on", maltrail="HTTP_ADDRESS"),
        "http_port": Key(
            "int", 8338, min=1, max=65535,
            doc="port the reporting HTTP server listens on", maltrail="HTTP_PORT"),
        "use_ssl": Key(
            "bool", False,
            doc="serve HTTPS instead of HTTP (needs ssl_pem)", maltrail="USE_SSL"),
        "ssl_pem": Key(
            "str", "", form="path", empty_ok=True,
            doc='PEM file holding the TLS private key and certificate; "" for none',
            maltrail="SSL_PEM"),
        "udp_address": Key(
            "str", "0.0.0.0", form="host",
            doc="address the UDP event collector listens on", maltrail="UDP_ADDRESS"),
        "udp_port": Key(
            "int", 8337, min=0, max=65535,
            doc="port the UDP event collector listens on; 0 = off", maltrail="UDP_PORT"),
    },
}


def iter_keys() -> Iterator[tuple[str, str, Key]]:
    """Every (section, key, spec) in schema order: the order of the file and of the printer."""
    for section, keys in SCHEMA.items():
        for name, spec in keys.items():
            yield section, name, spec


# --------------------------------------------------------------------------------------------
# Value rules
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


def _check_proxy_url(s: str) -> str | None:
    if any(c.isspace() for c in s):
        return "it contains whitespace"
    try:
        parts = urlsplit(s)
        port = parts.port
    except ValueError as exc:  # bad port number or malformed [IPv6] literal
        return "it is not a valid URL (%s)" % exc
    if parts.scheme not in ("http", "https"):
        return "the scheme must be http:// or https://"
    if not parts.hostname:
        return "the host is missing"
    if parts.username is not None or parts.password is not None:
        return "credentials in the URL are not supported"
    if port is None or port == 0:
        return "the port is missing"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "only scheme, host and port are allowed"
    return None


def _check_endpoint(s: str, schemes) -> str | None:
    """A forwarding destination: scheme://host:port, or host:port meaning the first scheme."""
    if any(c.isspace() for c in s):
        return "it contains whitespace"
    raw = s if "://" in s else "%s://%s" % (schemes[0], s)
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        return "it is not host:port (%s)" % exc
    if parts.scheme not in schemes:
        return "the scheme must be %s" % " or ".join("%s://" % x for x in schemes)
    if not parts.hostname:
        return "the host is missing"
    if not port:
        return "the port is missing (host:port)"
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
        return "only scheme://host:port is allowed"
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


# form name -> (check returning None or the reason, "allowed" text for one, for several)
_FORMS: dict[str, tuple[Any, str, str]] = {
    "path": (_check_path, "a path", "paths"),
    "name": (_check_name, "a name without whitespace, at most %d bytes" % NAME_MAX_BYTES,
             "names without whitespace, at most %d bytes each" % NAME_MAX_BYTES),
    "ifname": (_check_ifname, "an interface name", "interface names"),
    "host": (_check_host, "an IP address or host name", "IP addresses or host names"),
    "cidr": (_check_cidr, "an IP address or CIDR range", "IP addresses or CIDR ranges"),
    "regex": (_check_regex, "a regular expression (Python syntax)", "regular expressions"),
    "proxy_url": (_check_proxy_url, 'a URL "http://host:port" or "https://host:port"',
                  'URLs "http://host:port" or "https://host:port"'),
    "endpoint": (lambda s: _check_endpoint(s, ("udp", "tcp", "tls")),
                 'a destination "udp://host:port", "tcp://host:port", "tls://host:port" or "host:port" (UDP)',
                 'destinations "udp://host:port", "tcp://host:port", "tls://host:port" or "host:port" (UDP)'),
    "endpoint_udp_tcp": (lambda s: _check_endpoint(s, ("udp", "tcp")),
                         'a destination "udp://host:port", "tcp://host:port" or "host:port" (UDP)',
                         'destinations "udp://host:port", "tcp://host:port" or "host:port" (UDP)'),
    "endpoint_udp": (lambda s: _check_endpoint(s, ("udp",)), 'a destination "host:port" or "[IPv6]:port"',
                     'destinations "host:port" or "[IPv6]:port"'),
    "syslog_format": (lambda s: None if s in ("maltrail", "rfc5424") else "it is neither maltrail nor rfc5424",
                      '"maltrail" or "rfc5424"', '"maltrail" or "rfc5424"'),
}


def _describe_allowed(spec: Key) -> str:
    if spec.type == "int":
        text = "an integer from %d to %d" % (spec.min, spec.max)
        if spec.words:
            text = " or ".join(_toml_value(w) for w in spec.words) + " or " + text
        return text
    if spec.type == "float":
        return "a number from %s to %s" % (spec.min, spec.max)
    if spec.type == "ints":
        return "an array of integers from %d to %d" % (spec.min, spec.max)
    if spec.type == "bool":
        return "true or false"
    if spec.type == "str":
        if not spec.form:
            return "any string" if spec.empty_ok else "any non-empty string"
        return _FORMS[spec.form][1] + (' or "" (empty)' if spec.empty_ok else " (not empty)")
    plural = _FORMS[spec.form][2] if spec.form else "strings"
    text = "an array of %s" % plural
    if spec.min_items:
        text += " (at least %d)" % spec.min_items
    if spec.split:
        text += ", or one string of comma-separated %s" % plural
    return text


def _type_name(value: Any) -> str:
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


def _expected_type(spec: Key) -> str:
    if spec.type == "int":
        return "an integer" + "".join(" or %s" % _toml_value(w) for w in spec.words)
    if spec.type == "float":
        return "a number"
    if spec.type == "ints":
        return "an array of integers"
    if spec.type == "bool":
        return "a boolean (true or false)"
    if spec.type == "str":
        return "a string"
    return "a string or an array of strings" if spec.split else "an array of strings"


def _check_str(spec: Key, s: str) -> str | None:
    """Return why the string `s` is not acceptable, or None."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes smuggled in from argv (surrogateescape)
        return "is not valid: it is not valid UTF-8 text"
    if s == "" and spec.type == "str":
        return None if spec.empty_ok else "is not valid: it must not be empty"
    if spec.form:
        reason = _FORMS[spec.form][0](s)
        if reason:
            return "is not valid: " + reason
    return None


def _check_value(spec: Key, value: Any) -> tuple[Any, str | None]:
    """(normalised value, None) when `value` is acceptable for `spec`, else (None, problem)."""
    wrong = "has the wrong type: expected %s, found %s" % (_expected_type(spec), _type_name(value))
    if spec.type == "int":
        if isinstance(value, bool):
            # TOML true is not 1: a bool for a count is almost always a misplaced line.
            return None, wrong
        if isinstance(value, str) and spec.words:
            if value in spec.words:
                return value, None
            return None, "is not valid"
        if not isinstance(value, int):
            return None, wrong
        if not spec.min <= value <= spec.max:
            return None, "is out of range"
        return value, None
    if spec.type == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, wrong
        if not spec.min <= value <= spec.max:
            return None, "is out of range"
        return float(value), None
    if spec.type == "ints":
        if not isinstance(value, (list, tuple)):
            return None, wrong
        for index, item in enumerate(value, 1):
            if isinstance(item, bool) or not isinstance(item, int):
                return None, "has the wrong type: item %d is %s, expected an integer" % (index, _type_name(item))
            if not spec.min <= item <= spec.max:
                return None, "is out of range (item %d)" % index
        if len(set(value)) != len(value):
            return None, "is not valid: an item is listed twice"
        return tuple(value), None
    if spec.type == "bool":
        return (value, None) if isinstance(value, bool) else (None, wrong)
    if spec.type == "str":
        if not isinstance(value, str):
            return None, wrong
        problem = _check_str(spec, value)
        return (None, problem) if problem else (value, None)
    # list of strings
    if isinstance(value, str) and spec.split:
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        return None, wrong
    for index, item in enumerate(items, 1):
        if not isinstance(item, str):
            return None, "has the wrong type: item %d is %s, expected a string" % (
                index, _type_name(item))
        if item == "":
            return None, "is not valid: item %d is empty" % index
        problem = _check_str(spec, item)
        if problem:
            return None, "%s (item %d)" % (problem, index)
    if len(items) < spec.min_items:
        return None, "is not valid: it has fewer than %d item(s)" % spec.min_items
    seen = set()
    for item in items:
        if item in seen:
            return None, "is not valid: %s is listed twice" % _toml_value(item)
        seen.add(item)
    return tuple(items), None


def check_value(section: str, key: str, value: Any) -> tuple[Any, str | None]:
    """(normalised value, None) when `value` is acceptable for [section] key, else (None, the
    problem and what is allowed); the rules a file's value is held to."""
    spec = SCHEMA[section][key]
    normalised, problem = _check_value(spec, value)
    return (None, "%s; allowed: %s" % (problem, spec.allowed)) if problem else (normalised, None)


# Rules that involve more than one key, as (section, key, predicate over the values, problem,
# allowed).  The error is reported at (section, key).
_CROSS_RULES = (
    ("server", "use_ssl",
     lambda v: not (v[("server", "use_ssl")] and v[("server", "ssl_pem")] == ""),
     "needs [server] ssl_pem to name a PEM file",
     "set ssl_pem, or use_ssl = false"),
)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

class ConfigError(Exception):
    """An unusable configuration.  `problems` holds one line per problem found."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


def _where(source: str, line: int | None) -> str:
    return "%s:%d" % (source, line) if line else source


def _value_problem(where: str, section: str, key: str, value: Any, problem: str,
                   allowed: str) -> str:
    return "%s: [%s] %s = %s %s; allowed: %s" % (
        where, section, key, _render_found(value), problem, allowed)


def _render_found(value: Any) -> str:
    try:
        text = _toml_value(value)
    except TypeError:
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _closest(name: str, candidates: list[str]) -> str | None:
    match = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return match[0] if match else None


def _unknown_section(where: str, section: str) -> str:
    message = "%s: unknown section [%s]; known sections: %s" % (
        where, section, ", ".join("[%s]" % s for s in SCHEMA))
    hint = _closest(section, list(SCHEMA))
    return message + ("; did you mean [%s]?" % hint if hint else "")


def _unknown_key(where: str, section: str, key: str) -> str:
    known = list(SCHEMA[section])
    message = "%s: [%s] unknown key %s; known keys of [%s]: %s" % (
        where, section, key, section, ", ".join(known))
    homes = [s for s in SCHEMA if key in SCHEMA[s]]
    if homes:  # a real key, filed under the wrong header
        return message + "; %s belongs in [%s]" % (key, homes[0])
    hint = _closest(key, known)
    return message + ("; did you mean %s?" % hint if hint else "")


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------

class _Section:
    """Read-only attribute view of one section's values."""

    __slots__ = ("_name", "_values")

    def __init__(self, name: str, values: dict[str, Any]):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError("[%s] has no key %r" % (self._name, key)) from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("configuration is read-only; use apply_overrides()")

    def __dir__(self) -> list[str]:
        return list(self._values)

    def __repr__(self) -> str:
        return "<[%s] %s>" % (self._name, self._values)


class Config:
    """The effective configuration: read-only, one attribute per section.

    `cfg.sensor.snaplen_bytes`; lists are tuples.  `path` is the file it came from (None when
    only defaults were used); `origin(section, key)` says where a value came from.
    """

    __slots__ = ("_path", "_values", "_origins", "_lines", "_sections")

    def __init__(self, path: str | None, values: dict[tuple[str, str], Any],
                 origins: dict[tuple[str, str], str], lines: dict[tuple[str, str], int | None]):
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_values", dict(values))
        object.__setattr__(self, "_origins", dict(origins))
        object.__setattr__(self, "_lines", dict(lines))
        sections = {s: _Section(s, {k: values[(s, k)] for k in keys}) for s, keys in SCHEMA.items()}
        object.__setattr__(self, "_sections", sections)

    @property
    def path(self) -> str | None:
        return self._path

    def __getattr__(self, section: str) -> _Section:
        try:
            return self._sections[section]
        except KeyError:
            raise AttributeError("no configuration section %r" % section) from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("configuration is read-only; use apply_overrides()")

    def __dir__(self) -> list[str]:
        return ["path", "origin", "as_dict", *SCHEMA]

    def __repr__(self) -> str:
        return "<Config path=%r>" % (self._path,)

    def origin(self, section: str, key: str) -> str:
        """"default", "file" or "flag" (the command line)."""
        return self._origins[(section, key)]

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """{section: {key: value}} in schema order, lists as lists; a fresh copy."""
        out: dict[str, dict[str, Any]] = {}
        for section, key, _spec in iter_keys():
            value = self._values[(section, key)]
            out.setdefault(section, {})[key] = list(value) if isinstance(value, tuple) else value
        return out


def _defaults() -> tuple[dict, dict, dict]:
    values = {(s, k): spec.default for s, k, spec in iter_keys()}
    return values, {key: ORIGIN_DEFAULT for key in values}, {key: None for key in values}


def _cross_check(values: dict, origins: dict, lines: dict, source: str | None) -> list[str]:
    problems = []
    for section, key, ok, problem, allowed in _CROSS_RULES:
        if not ok(values):
            where = COMMAND_LINE if origins[(section, key)] == ORIGIN_FLAG else (
                _where(source, lines[(section, key)]) if source else "defaults")
            problems.append(_value_problem(where, section, key, values[(section, key)],
                                           problem, allowed))
    return problems


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_HEADER_RE = re.compile(r"^\s*\[\[?\s*(.*?)\s*\]\]?\s*(?:#.*)?$")
_KEY_RE = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
                     r"""(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")
_KEY_PART_RE = re.compile(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""")
_TOML_POS_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")


def _key_parts(text: str) -> tuple[str, ...]:
    return tuple(p[1:-1] if p[0] in "\"'" else p for p in _KEY_PART_RE.findall(text))


def _index_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map (section,) and (section, key) to the line that defines them, by scanning the raw
    text.  tomllib gives no positions for values, so this finds the `[section]` header and the
    first `key =` line after it.  Best effort: a look-alike line inside a multi-line string can
    fool it, which only costs a wrong line number in a message, never a wrong value."""
    found: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for number, line in enumerate(text.split("\n"), 1):
        header = _HEADER_RE.match(line)
        if header:
            table = _key_parts(header.group(1))
            for depth in range(1, len(table) + 1):
                found.setdefault(table[:depth], number)
            continue
        key = _KEY_RE.match(line)
        if key:
            path = table + _key_parts(key.group(1))
            for depth in range(1, len(path) + 1):
                found.setdefault(path[:depth], number)
    return found


def _read_text(path: str) -> str:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError("%s: configuration file not found" % path) from None
    except IsADirectoryError:
        raise ConfigError("%s: is a directory, not a configuration file" % path) from None
    except PermissionError:
        raise ConfigError("%s: cannot be read: permission denied" % path) from None
    except OSError as exc:
        raise ConfigError("%s: cannot be read: %s" % (path, exc.strerror or exc)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError("%s:%d: not valid UTF-8 text (byte offset %d)"
                          % (path, line, exc.start)) from None
    # Some Windows editors start UTF-8 files with a byte-order mark; TOML parsers reject it.
    return text[1:] if text.startswith("\ufeff") else text


# A maltrail.conf line: an option name in capitals, whitespace, its value ("LOG_DIR /var/log").
_MALTRAIL_LINE_RE = re.compile(r"^([A-Z][A-Z0-9_]*)\s+\S")


def looks_like_maltrail_conf(text: str) -> bool:
    """Whether `text` is Maltrail's maltrail.conf format: some line sets, in Maltrail's
    `NAME value` form, an option one of our keys stands for.  (TOML cannot parse such a line,
    so this is only asked after TOML has refused the file.)"""
    names = {spec.maltrail for _s, _k, spec in iter_keys() if spec.maltrail}
    for line in text.splitlines():
        match = _MALTRAIL_LINE_RE.match(line.split("#", 1)[0])
        if match and match.group(1) in names:
            return True
    return False


def _parse(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        if looks_like_maltrail_conf(text):
            raise ConfigError(
                "%s: this is Maltrail's maltrail.conf format, not TOML; maltrail-engine reads "
                "maltrail.toml. Write the equivalent maltrail.toml with: maltrail-engine config import %s "
                "(-o FILE to choose where; every option is carried over or named as not applicable)"
                % (source, shlex.quote(source))) from None
        message = str(exc)
        pos = _TOML_POS_RE.search(message)
        if pos:
            where = "%s:%s:%s" % (source, pos.group(1), pos.group(2))
            message = message[:pos.start()]
        elif message.endswith("(at end of document)"):
            where = "%s:%d" % (source, text.count("\n") + 1)
            message = message[: -len("(at end of document)")].rstrip()
        else:
            where = source
        raise ConfigError("%s: TOML syntax error: %s" % (where, message)) from None


def _apply_document(doc: Mapping[str, Any], source: str, lines: dict[tuple[str, ...], int],
                    values: dict, origins: dict, key_lines: dict) -> list[str]:
    """Validate a parsed file into `values`/`origins`/`key_lines`; return the problems."""
    problems = []
    for section, body in doc.items():
        where = _where(source, lines.get((section,)))
        if section not in SCHEMA:
            homes = [s for s in SCHEMA if section in SCHEMA[s]]
            if homes and not isinstance(body, dict):
                problems.append("%s: %s is outside any section; it belongs under [%s]"
                                % (where, section, homes[0]))
                continue
            problems.append(_unknown_section(where, section))
            continue
        if not isinstance(body, dict):
            problems.append("%s: %s must be a table (a [%s] header), found %s"
                            % (where, section, section, _type_name(body)))
            continue
        for key, value in body.items():
            line = lines.get((section, key)) or lines.get((section,))
            where = _where(source, line)
            spec = SCHEMA[section].get(key)
            if spec is None:
                problems.append(_unknown_key(where, section, key))
                continue
            normalised, problem = _check_value(spec, value)
            if problem:
                problems.append(_value_problem(where, section, key, value, problem, spec.allowed))
                continue
            values[(section, key)] = normalised
            origins[(section, key)] = ORIGIN_FILE
            key_lines[(section, key)] = line
    return problems


def load_config(path: str | os.PathLike | None) -> Config:
    """Load and validate `path`; None means no file (every key at its default).

    Raises ConfigError naming the file, line, key, what was found and what is allowed; all the
    problems in a file are reported at once.
    """
    values, origins, key_lines = _defaults()
    if path is None:
        return Config(None, values, origins, key_lines)
    source = os.fspath(path)
    if isinstance(source, bytes):
        source = os.fsdecode(source)
    text = _read_text(source)
    doc = _parse(text, source)
    problems = _apply_document(doc, source, _index_lines(text), values, origins, key_lines)
    if not problems:
        problems = _cross_check(values, origins, key_lines, source)
    if problems:
        raise ConfigError(problems)
    return Config(source, values, origins, key_lines)


# --------------------------------------------------------------------------------------------
# Command-line overrides
# --------------------------------------------------------------------------------------------

def apply_overrides(cfg: Config, overrides: Mapping[tuple[str, str], Any]) -> Config:
    """A new Config with the command-line values in `overrides` on top of `cfg`.

    Keys are (section, key); a value of None means "flag not given" and is skipped, so an
    argparse namespace can be passed through without filtering.  Values are checked with the
    same rules as the file; messages say "command line".
    """
    values = dict(cfg._values)
    origins = dict(cfg._origins)
    lines = dict(cfg._lines)
    problems = []
    for (section, key), value in overrides.items():
        if value is None:
            continue
        spec = SCHEMA.get(section, {}).get(key)
        if spec is None:
            if section not in SCHEMA:
                problems.append(_unknown_section(COMMAND_LINE, section))
            else:
                problems.append(_unknown_key(COMMAND_LINE, section, key))
            continue
        normalised, problem = _check_value(spec, value)
        if problem:
            problems.append(_value_problem(COMMAND_LINE, section, key, value, problem,
                                           spec.allowed))
            continue
        values[(section, key)] = normalised
        origins[(section, key)] = ORIGIN_FLAG
        lines[(section, key)] = None
    if not problems:
        problems = _cross_check(values, origins, lines, cfg.path)
    if problems:
        raise ConfigError(problems)
    return Config(cfg.path, values, origins, lines)


def parse_flag_value(section: str, key: str, text: str) -> Any:
    """Turn a flag's text into the typed value `apply_overrides` expects.

    "1500" -> 1500 for int keys, "auto" stays a word, "true"/"false" for bool keys, strings and
    comma-separated lists as they are (apply_overrides splits and checks them).  Text that is
    not even of the right type is returned unchanged so apply_overrides reports it with the
    usual message.
    """
    spec = SCHEMA[section][key]
    if spec.type == "int" and text not in spec.words:
        try:
            return int(text.strip(), 10)
        except ValueError:
            return text
    if spec.type == "float":
        try:
            return float(text.strip())
        except ValueError:
            return text
    if spec.type == "bool":
        lowered = text.strip().lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        return text
    return text


# --------------------------------------------------------------------------------------------
# Locating the file, the sensor name
# --------------------------------------------------------------------------------------------

def default_config_path(environ: Mapping[str, str] | None = None,
                        system_path: str = SYSTEM_CONFIG_PATH) -> str | None:
    """$MALTRAIL_ENGINE_CONFIG if set and non-empty, else `system_path` if it exists, else None.

    (An explicit -c/--config flag is handled by the CLI before this is consulted.)
    """
    env = os.environ if environ is None else environ
    chosen = env.get(ENV_VAR, "")
    if chosen:
        return chosen
    return system_path if os.path.exists(system_path) else None


def resolved_sensor_name(cfg: Config) -> str:
    """The configured sensor name, or the host name when it is empty (as Maltrail does)."""
    return cfg.sensor.sensor_name or socket.gethostname()


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------

_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
                 "\f": "\\f", "\r": "\\r"}


def _toml_str(s: str) -> str:
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


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError("no TOML form for %r" % (value,))


def toml_value(value: Any) -> str:
    """The TOML text of a configuration value (string, number, boolean, or a list of them)."""
    return _toml_value(value)


def comment_text(text: str) -> str:
    """`text` made safe inside a TOML comment."""
    # A newline in a path would end the comment and corrupt the TOML that follows.
    return "".join("?" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)


def dump_config(cfg: Config) -> str:
    """The effective configuration as TOML: every key, in schema order, each with a trailing
    comment saying where its value came from.  Loading the output gives the same values."""
    if cfg.path:
        source_line = "# configuration file: %s" % comment_text(cfg.path)
    else:
        source_line = "# configuration file: none (built-in defaults)"
    out = [
        "# maltrail-engine effective configuration",
        source_line,
        "# precedence: command-line flags, then the file, then built-in defaults",
    ]
    rows = []
    for section, key, spec in iter_keys():
        origin = cfg._origins[(section, key)]
        if origin == ORIGIN_FLAG:
            note = COMMAND_LINE
        elif origin == ORIGIN_FILE:
            note = "file " + comment_text(_where(cfg.path, cfg._lines[(section, key)]))
        else:
            note = ORIGIN_DEFAULT
        value = cfg._values[(section, key)]
        if spec.secret and value:
            # A secret is never printed: the key line would not load back, which is the point.
            rows.append((section, "# %s = (set, not shown)" % key, note))
            continue
        rows.append((section, "%s = %s" % (key, _toml_value(value)), note))
    width = min(60, max(len(text) for _s, text, _n in rows))
    current = None
    for section, text, note in rows:
        if section != current:
            out += ["", "[%s]" % section]
            current = section
        out.append("%s  # %s" % (text.ljust(width), note))
    return "\n".join(out) + "\n"


def _check_schema() -> None:
    # The schema's own defaults must pass its own rules: fail at import, not at a user's start.
    for section, key, spec in iter_keys():
        value, problem = _check_value(spec, spec.default)
        if problem or value != spec.default:
            raise AssertionError("default of [%s] %s %s" % (section, key, problem or "changes"))


_check_schema()
