"""`json_output`: every event as one line of JSON named by the Elastic Common Schema (ECS 8.x), to a
file or over TCP, for Filebeat, Vector or Fluent Bit to ship without a pipeline.

Owns the document (`ecs_document`; README.md "ECS JSON output" lists every field) and the file
it is appended to:

- ECS fields where ECS has one: `@timestamp` (the first occurrence, UTC), `event.*`
  (kind "alert", categories network and intrusion_detection, type info, `event.severity` on
  Elastic Security's 0-100 risk scale: low 21, medium 47, high 73, `event.start`/`event.end`),
  `source.*`, `destination.*`, `network.*`, `observer.*` (the sensor), `rule.*` (the label),
  `threat.indicator.*` (the trail, its STIX type as ECS expects it), `related.ip`; what ECS has
  no name for (the condensed count, the trail as Maltrail writes it, our type) under `maltrail.*`,
  a custom namespace as ECS asks. A condensed record's lists ("80,443,+3") become arrays of the
  values it names; the text stays in `maltrail.*`.
- The file (`file:///path`): appended, created exclusively (mode 0640) and never opened through
  a symlink or a hard link (events/fsafety.py), its directory held to the log directory's rule
  and opened once, while the forwarder may still reach it; before every batch one stat of the
  path tells whether logrotate (or anyone) moved or deleted it, and a new file is started. A
  write that fails part-way is cut back, so a retry never leaves half a line.
- `tcp://host:port`: a line each, every batch acknowledged by the collector's TCP
  (events/forwarders/transports.py Stream).

Must not know how events are detected.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re

from events.formats import format_maltrail
from events.forwarders.base import Destination, Unreachable
from events.forwarders.transports import Endpoint, Stream
from events.fsafety import (
    UnsafeFile, create_in_dir, directory_fd_problem, directory_problem, open_dir, open_regular_in_dir,
)
from events.record import (
    TYPE_CERT, TYPE_DNS, TYPE_HTTP, TYPE_IP, TYPE_IPORT, TYPE_PATH, TYPE_SNI, TYPE_UA, TYPE_URL, Event,
)

ECS_VERSION = "8.11.0"
FILE_MODE = 0o640
# event.severity: ECS leaves the scale to the source; this is the one Elastic Security's rules use
# for low / medium / high (their risk-score bands), so a rule can take the field as it is.
ECS_SEVERITY = {"low": 21, "medium": 47, "high": 73}
HEURISTIC = "(heuristic)"
# network.transport: IANA's keyword names, lower case, as ECS asks ("ipv6-icmp", not "icmpv6").
_TRANSPORT = {"ICMPV6": "ipv6-icmp"}
# network.protocol (the application layer) by our event type.
_PROTOCOL = {TYPE_DNS: "dns", TYPE_HTTP: "http", TYPE_URL: "http", TYPE_UA: "http", TYPE_PATH: "http",
             TYPE_CERT: "tls"}
_SHA1_HEX = re.compile(r"\A[0-9a-f]{40}\Z")
_PARENTHESISED = re.compile(r"\([^()]*\)")
_DOMAIN = re.compile(r"\A[!-~]+\.[!-~]+\Z")
_IPPORT = re.compile(r"\A\[?([0-9A-Fa-f:.]+)\]?:(\d{1,5})\Z")


def _utc(ts_us: int) -> str:
    seconds, micros = divmod(ts_us, 1_000_000)
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc).replace(microsecond=micros)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _values(value) -> list:
    """The values one field of a record names: one, or a condensed list's ("a,b,+3" -> [a, b])."""
    if value is None or value == "":
        return []
    if isinstance(value, int):
        return [value]
    return [item for item in str(value).split(",") if item and item != "-" and not item.startswith("+")]


def _ips(value) -> list[str]:
    out = []
    for item in _values(value):
        try:
            out.append(str(ipaddress.ip_address(str(item))))
        except ValueError:
            continue
    return out


def _ports(value) -> list[int]:
    out = []
    for item in _values(value):
        try:
            port = int(item)
        except (TypeError, ValueError):
            continue
        if 0 < port < 65536:
            out.append(port)
    return out


def _one_or_many(items: list):
    return items[0] if len(items) == 1 else items


def _endpoint(ips: list, ports: list) -> dict:
    out: dict = {}
    if ips:
        out["ip"] = _one_or_many(ips)
    if ports:
        out["port"] = _one_or_many(ports)
    return out


def _indicator(event: Event) -> dict:
    """threat.indicator for a trail hit: its display name (the trail as Maltrail writes it), its
    STIX type where there is one (ECS's expected values), and the typed value."""
    trail = event.trail or ""
    indicator: dict = {"name": trail, "description": event.info, "provider": event.reference}
    if event.type == TYPE_IP:
        first = trail.split(" ", 1)[0]
        try:
            address = ipaddress.ip_address(first)
        except ValueError:
            return indicator
        indicator["type"] = "ipv4-addr" if address.version == 4 else "ipv6-addr"
        indicator["ip"] = str(address)
    elif event.type == TYPE_IPORT:
        match = _IPPORT.match(trail.split(" ", 1)[0])
        if match is None:
            return indicator
        try:
            address = ipaddress.ip_address(match.group(1))
        except ValueError:
            return indicator
        indicator["type"] = ["ipv4-addr" if address.version == 4 else "ipv6-addr", "port"]
        indicator["ip"] = str(address)
        indicator["port"] = int(match.group(2))
    elif event.type in (TYPE_DNS, TYPE_SNI):
        # "(www).evil-parent.net": the listed name is what is outside the parentheses.
        domain = _PARENTHESISED.sub("", trail).strip(".")
        indicator["type"] = "domain-name"
        if _DOMAIN.match(domain):
            indicator["url"] = {"domain": domain}
    elif event.type in (TYPE_URL, TYPE_HTTP):
        indicator["type"] = "url"
    elif event.type == TYPE_CERT:
        indicator["type"] = "x509-certificate"
    return indicator


def ecs_document(event: Event, version: str = "") -> dict:
    """The ECS document of one event (see the module doc and README.md)."""
    src_ips, dst_ips = _ips(event.src_ip), _ips(event.dst_ip)
    transports = [_TRANSPORT.get(p.upper(), p.lower()) for p in _values(event.proto)]
    versions = []
    for address in src_ips + dst_ips:
        kind = "ipv6" if ":" in address else "ipv4"
        if kind not in versions:
            versions.append(kind)
    network: dict = {}
    if transports:
        network["transport"] = _one_or_many(transports)
    if versions:
        network["type"] = _one_or_many(versions)
    protocol = _PROTOCOL.get(event.type)
    if event.type == TYPE_SNI:
        protocol = "quic" if transports == ["udp"] else "tls"
    if protocol:
        network["protocol"] = protocol
    heuristic = event.reference == HEURISTIC
    rule: dict = {"name": event.info, "ruleset": "heuristics" if heuristic else "trails"}
    if event.reference.startswith(("http://", "https://")):
        rule["reference"] = event.reference
    related = []
    for address in src_ips + dst_ips:
        if address not in related:
            related.append(address)
    maltrail: dict = {"type": event.type, "trail": event.trail, "info": event.info, "reference": event.reference,
                      "severity": event.severity, "count": event.count}
    for name in ("src_ip", "src_port", "dst_ip", "dst_port", "proto"):
        value = getattr(event, name)
        if isinstance(value, str) and "," in value:
            maltrail[name] = value      # a condensed record's list, as the log holds it
    doc = {
        "@timestamp": _utc(event.ts_us),
        "message": format_maltrail(event),
        "ecs": {"version": ECS_VERSION},
        "event": {"kind": "alert", "category": ["network", "intrusion_detection"], "type": ["info"],
                  "module": "maltrail", "dataset": "maltrail.events",
                  "severity": ECS_SEVERITY.get(event.severity, ECS_SEVERITY["medium"]),
                  "start": _utc(event.ts_us), "end": _utc(max(event.last_ts_us or event.ts_us, event.ts_us))},
        "source": _endpoint(src_ips, _ports(event.src_port)),
        "destination": _endpoint(dst_ips, _ports(event.dst_port)),
        "network": network,
        "observer": {"name": event.sensor, "type": "ids", "vendor": "maltrail-engine", "product": "maltrail-engine"},
        "rule": rule,
        "related": {"ip": related},
        "maltrail": maltrail,
    }
    if version:
        doc["observer"]["version"] = version
    if not heuristic:
        doc["threat"] = {"indicator": _indicator(event)}
    if event.type == TYPE_CERT and _SHA1_HEX.match(event.trail or ""):
        # ECS tls.server.hash.sha1: the server certificate's DER SHA-1, upper-case hex as ECS shows it
        doc["tls"] = {"server": {"hash": {"sha1": event.trail.upper()}}}
    for name in ("source", "destination", "network", "related"):
        if not doc[name] or doc[name] == {"ip": []}:
            del doc[name]
    return doc


def ecs_line(event: Event, version: str = "") -> bytes:
    """One line: the document as compact JSON, ASCII only (any character escaped), and a newline."""
    return json.dumps(ecs_document(event, version), separators=(",", ":")).encode("ascii") + b"\n"


class JsonFile:
    """Appends to one file safely and follows it through rotation (see the module doc)."""

    def __init__(self, path: str, trusted_uids=()):
        if not os.path.isabs(path):
            raise ValueError("%s: the path must be absolute" % path)
        self.path = path
        directory, self.name = os.path.split(path)
        if not self.name:
            raise ValueError("%s names a directory, not a file" % path)
        if not os.path.isdir(directory):
            raise ValueError("the directory %s does not exist (it is not made for a json_output file)" % directory)
        problem = directory_problem(directory, trusted_uids)
        if problem:
            raise ValueError(problem)
        self.dir_fd = open_dir(directory)
        problem = directory_fd_problem(self.dir_fd, directory, trusted_uids)
        if problem:
            os.close(self.dir_fd)
            raise ValueError(problem)
        self.fd: int | None = None
        self.identity = None
        self.reopened = 0        # times the file was found moved, deleted or replaced: a new one begun

    def _open(self) -> int:
        for _attempt in range(3):
            try:
                return create_in_dir(self.dir_fd, self.name, os.O_WRONLY | os.O_APPEND, FILE_MODE)
            except FileExistsError:
                pass
            except OSError as exc:
                raise Unreachable("cannot create %s: %s (the directory must be writable by the sensor's account)"
                                  % (self.path, exc.strerror or exc)) from None
            try:
                return open_regular_in_dir(self.dir_fd, self.name, os.O_WRONLY | os.O_APPEND)
            except FileNotFoundError:
                continue                    # removed in between: create it
            except UnsafeFile as exc:
                raise Unreachable("%s %s: never written through; move it away" % (self.path, exc.reason)) from None
            except OSError as exc:
                raise Unreachable("cannot open %s: %s" % (self.path, exc.strerror or exc)) from None
        raise Unreachable("%s keeps appearing and vanishing" % self.path)

    def _current(self) -> int:
        if self.fd is not None:
            try:
                st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
                here = (st.st_dev, st.st_ino)
            except FileNotFoundError:
                here = None
            if here != self.identity:       # rotated away, deleted or replaced: start a new file
                os.close(self.fd)
                self.fd = None
                self.reopened += 1
        if self.fd is None:
            self.fd = self._open()
            st = os.fstat(self.fd)
            self.identity = (st.st_dev, st.st_ino)
        return self.fd

    def write(self, data: bytes) -> None:
        fd = self._current()
        before = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            try:
                os.ftruncate(fd, before)        # no half line for the reader; the batch is offered again
            except OSError:
                pass
            raise Unreachable("%s: %s" % (self.path, exc.strerror or exc)) from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None


class EcsOutput(Destination):
    """`json_output`: "file:///path" or "tcp://host:port"."""

    kind = "json_output"
    reliable = True

    def __init__(self, address: str, version: str = "", trusted_uids=()):
        super().__init__(address)
        self.version = version
        self.file: JsonFile | None = None
        self.stream: Stream | None = None
        if address.startswith("file://"):
            self.file = JsonFile(address[len("file://"):], trusted_uids)
        else:
            self.stream = Stream(Endpoint.parse(address, schemes=("tcp",), default_scheme="tcp"))

    def render(self, event: Event) -> bytes:
        return ecs_line(event, self.version)

    def deliver(self, messages: list[bytes]) -> int:
        payload = b"".join(messages)
        if self.file is not None:
            self.file.write(payload)
        else:
            self.stream.send(payload)
        return len(messages)

    def connected(self) -> bool:
        return self.file is not None or self.stream.connected

    def stats(self) -> dict:
        return {"reopened": self.file.reopened} if self.file is not None else {}

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        else:
            self.stream.close()


__all__ = ["ECS_SEVERITY", "ECS_VERSION", "EcsOutput", "JsonFile", "ecs_document", "ecs_line"]
