"""The files behind the event controls, and the heuristic settings, read from the configuration.

Owns reading the run-time whitelist (`[all] whitelist_file`, the format `trails build` reads), the
per-host whitelist (`[sensor] host_whitelist_file`), the ignore rules (`[sensor] ignore_file`) and
the ignore regex into plain data (lists of strings) that a worker turns into
`workers.controls.Controls`; plain data because it crosses to the worker processes at start and
again on SIGHUP. A bad line is an error naming the file, the line and what is allowed.

Also builds `workers.heuristics.HeuristicSettings` from `[sensor] use_heuristics` and the
`[heuristics]` section.

Must not judge events (workers/controls.py does).
"""

from __future__ import annotations

import ipaddress
import re

from trailsdb.sources import SourceError, read_whitelist
from workers.controls import Controls
from workers.heuristics import HeuristicSettings


class ControlsError(Exception):
    """A control file that cannot be read or holds a bad line: the message names the file, the
    line and what is allowed."""


def heuristic_settings(cfg) -> HeuristicSettings:
    values = {name: getattr(cfg.heuristics, name) for name in HeuristicSettings.names()
              if name != "enabled"}
    return HeuristicSettings(enabled=cfg.sensor.use_heuristics, **values)


def _lines(path: str):
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        raise ControlsError("%s: cannot read: %s" % (path, exc.strerror or exc)) from None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line:
            yield number, line


def _network(text: str, where: str, what: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ControlsError("%s: %s %r is not an IP address or CIDR range" % (where, what, text)) from None


def _ports(text: str, where: str, what: str) -> str:
    low, sep, high = text.partition("-")
    try:
        a, b = int(low), int(high) if sep else int(low)
    except ValueError:
        raise ControlsError("%s: %s %r is not a port, a port range a-b or *" % (where, what, text)) from None
    if not 0 <= a <= b <= 65535:
        raise ControlsError("%s: %s %r is out of range (0-65535, low-high)" % (where, what, text))
    return "%d-%d" % (a, b)


def read_host_whitelist(path: str) -> list[list[str]]:
    """Lines "HOST TRAIL": [[network, indicator], ...]."""
    out = []
    for number, line in _lines(path):
        where = "%s:%d" % (path, number)
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise ControlsError('%s: expected "HOST TRAIL" (an address or CIDR range, a space, a trail or a '
                                'heuristic\'s name), found %r' % (where, line))
        out.append([_network(parts[0], where, "HOST"), parts[1].strip().lower()])
    return out


def read_ignore_rules(path: str) -> list[list[str]]:
    """Lines "SRC_IP SRC_PORT DST_IP DST_PORT" ('*' for any): [[src, sport, dst, dport], ...]
    with networks and "low-high" port ranges ("" for any)."""
    out = []
    for number, line in _lines(path):
        where = "%s:%d" % (path, number)
        fields = [f for f in re.split(r"[;\s]+", line) if f]
        if len(fields) != 4:
            raise ControlsError('%s: expected 4 fields "SRC_IP SRC_PORT DST_IP DST_PORT" (each an address, CIDR '
                                'range, port, port range a-b, or *), found %d in %r' % (where, len(fields), line))
        names = ("SRC_IP", "SRC_PORT", "DST_IP", "DST_PORT")
        rule = []
        for i, (name, field) in enumerate(zip(names, fields)):
            if field == "*":
                rule.append("")
            elif i % 2 == 0:
                rule.append(_network(field, where, name))
            else:
                rule.append(_ports(field, where, name))
        out.append(rule)
    return out


def read_controls(cfg) -> dict:
    """The plain form of every control the configuration names; raises ControlsError."""
    plain = {"whitelist_ips": [], "whitelist_networks": [], "whitelist_domains": [], "host_trails": [],
             "ignore_rules": [], "ignore_regex": cfg.sensor.ignore_regex}
    if cfg.all.whitelist_file:
        try:
            wl = read_whitelist(cfg.all.whitelist_file)
        except SourceError as exc:
            raise ControlsError(str(exc)) from None
        plain["whitelist_ips"] = sorted(str(ip) for ip in wl.ips)
        plain["whitelist_networks"] = [str(n) for n in wl.networks]
        plain["whitelist_domains"] = sorted(wl.domains)
    if cfg.sensor.host_whitelist_file:
        plain["host_trails"] = read_host_whitelist(cfg.sensor.host_whitelist_file)
    if cfg.sensor.ignore_file:
        plain["ignore_rules"] = read_ignore_rules(cfg.sensor.ignore_file)
    Controls.from_plain(plain)  # everything in it must build
    return plain
