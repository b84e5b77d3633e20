"""The worker: a batch of frames in, events out.

Owns the per-packet judgement that turns decoded packets and extracted names into events: IP
trails on every packet in both directions, domain trails on DNS query names, HTTP hosts and
TLS/QUIC server names, URL and user-agent trails on HTTP requests, certificate trails on the
server certificate of TLS 1.2 and older handshakes, sinkhole/parking trails on DNS answers; Maltrail's trail text for each (e.g. "(www).evil-parent.com", "203.0.113.44 (host)"),
and its false-positive rules. Every frame is counted as decoded or skipped by reason; identical
events are condensed (workers/condense.py).

Per packet the steps are kept apart: observe (what the payload carries: DNS messages, an HTTP
request and whom it is for, a TLS or QUIC server name, a TLS server certificate, an HTTP response; the protocol modules
parse, nothing is matched), then one `Flow` record (workers/flow.py: both ends and their ports,
the orientation, the noise-control group), then for each observation match (matchers/) and judge
(Maltrail's rules, the heuristics), then emit (`_emit`: the controls, then noise control).

This is the plain-Python reference path; it must not know how frames were captured, how trails
are stored on disk, or how events are written.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from urllib.parse import unquote

from array import array

from matchers.artifact import KIND_CIDR4, KIND_CIDR6, KIND_IPPORT4, KIND_IPPORT6, KIND_UA_REGEX, S_REGEX, S_UA
from matchers.domains import render_span
from matchers.regextrails import prefilter_literals
from workers import _fastpath
from workers.condense import Condenser
from workers.controls import NO_CONTROLS
from workers.decode import IPPROTO_TCP, IPPROTO_UDP, SKIP_REASONS, decode_frame
from workers.dns import QCLASS_IN, RCODE_NXDOMAIN, parse_dns, parse_dns_tcp
from events.record import (
    DEFAULT_SEVERITY, TYPE_CERT, TYPE_DNS, TYPE_HTTP, TYPE_IP, TYPE_IPORT, TYPE_PATH, TYPE_PORT, TYPE_SNI, TYPE_UA, TYPE_URL,
    Event, SeverityRule,
)
from workers.certs import ServerCertAssembler, starts_server_hello
from workers.flow import Flow, client_is_src, flow_of
from workers.heuristics import HeuristicSettings
from workers.heuristics import dns as hdns
from workers.heuristics import http as hhttp
from workers.heuristics.dns import DnsHeuristics
from workers.heuristics.scan import TRACEROUTE_PORTS, ScanHeuristics
from workers.heuristics.verdicts import DNS_EXHAUSTION, INFECTION_SCAN, PORT_SCAN, SCANS, UDP_SCAN, WEB_SCAN
from workers.http import (
    decoded_form, decoded_target, looks_like_http_request, parse_http_request, request_authority,
)
from workers.quic import QuicSniAssembler
from workers.tls import looks_like_tls_client_hello, parse_tls_client_hello_sni

# Query names never looked up (Maltrail's IGNORE_DNS_QUERY_SUFFIXES plus the RFC 6761 special-use
# names): local and reverse lookups that no public trail can describe.
IGNORE_DNS_QUERY_SUFFIXES = frozenset((
    "arpa", "local", "guest", "intranet", "int", "corp", "home", "lan", "intra", "intran",
    "workgroup", "localdomain", "url", "alienvault", "example", "test", "invalid", "localhost"))
# A name worth a domain lookup: printable ASCII without space (what a domain trail can hold,
# matchers/domains.py is_dns_name: DNS tunnels query names such as "aaaa.=auth.example.com") and a
# last label after a dot. The C scan's name_checkable() is its twin.
_VALID_NAME = re.compile(r"\A[!-~]*\.[!-\-/-~]+\Z")
_NUMERIC_NAME = re.compile(r"\A[0-9.]+\Z")
# Labels saying the listed address is the attacking side (Maltrail's "attacker" rule, and the mass
# scanner lists: "mass scanner", "mass scanner cidr"); "scanner" only as a word, so a malware
# family such as "camscanner" is not one of them.
_ATTACKER_LABEL = re.compile(r"attacker|\bscanner\b")
HEURISTIC = "(heuristic)"


def _escape_parens(value: str) -> str:
    return value.rstrip("\\").replace("(", "\\(").replace(")", "\\)")


def render_user_agent(user_agent: str, pattern: str) -> str:
    """Maltrail's user-agent trail text: the matched part, and the rest in parentheses."""
    i = user_agent.lower().find(pattern)
    if i < 0:
        return _escape_parens(user_agent)
    return render_user_agent_span(user_agent, i, i + len(pattern))


def render_user_agent_span(user_agent: str, start: int, end: int) -> str:
    """The same for the part user_agent[start:end] a pattern matched."""
    if start >= end:
        return _escape_parens(user_agent)
    match = user_agent[start:end]
    before, after = user_agent[:start], user_agent[end:]
    if before and after:
        return "%s (%s)" % (_escape_parens(match), _escape_parens(user_agent))
    return "%s%s%s" % ("(%s)" % _escape_parens(before) if before else "", _escape_parens(match),
                       "(%s)" % _escape_parens(after) if after else "")


def _addr_port(ip: str, port: int) -> str:
    return "[%s]:%d" % (ip, port) if ":" in ip else "%s:%d" % (ip, port)


def normalize_host(value: str) -> str:
    """An HTTP host / SNI / DNS name as the domain matcher wants it: lower case, no port, no
    trailing dot. IPv6 literals keep their brackets off."""
    name = value.strip().lower()
    if name.startswith("["):
        return name[1:name.find("]")] if "]" in name else name
    if name.count(":") == 1:
        name = name.split(":", 1)[0]
    return name.rstrip(".")


def _ignored_name(name: str) -> bool:
    """A name under an intranet or special-use suffix: never looked up, never counted."""
    return ".intranet." in name or name.rsplit(".", 1)[-1] in IGNORE_DNS_QUERY_SUFFIXES


# The counters _fastpath.scan() returns after `decoded` and the skip reasons, in its order.
_FAST_EXTRACTED = ("dns queries", "dns responses", "http requests", "tls server names")
# Artifact sections the C scan reads (the C scan knows them by the same names).
_FAST_SECTIONS = ("ip4", "cidr4", "ipport4", "ip6", "ipport6", "cidr6_list", "domains", "urls", "trails",
                  "strings", "ip4_p24", "certs", "domains_filter", "urls_filter")


def fast_tables(artifact):
    """The C scan's view of an artifact: its sections in place, the regex trails' literals (a name
    holding none of them cannot match a regex trail) and the user-agent patterns."""
    sections = {name: artifact.section(name) for name in _FAST_SECTIONS if artifact.has(name)}
    literals, always = prefilter_literals(artifact.pairs(S_REGEX))
    uas = artifact.pairs(S_UA)
    patterns = [p.lower().encode("utf-8") for i, p in uas if artifact.kind(i) != KIND_UA_REGEX]
    # A user-agent regular expression passes a user agent holding a literal it requires; one that
    # requires none passes every user agent (the empty pattern, see ua_hit in fastpath.c).
    ua_literals, ua_always = prefilter_literals([(i, p) for i, p in uas if artifact.kind(i) == KIND_UA_REGEX])
    patterns += [lit.lower().encode("utf-8") for lit in ua_literals] + ([b""] if ua_always else [])
    return _fastpath.Tables(sections, [lit.encode("utf-8") for lit in literals], always, patterns)


def fast_heuristics(settings: HeuristicSettings):
    """The C scan's heuristic state for `settings`: the stateful heuristics' windows and tables,
    and the stateless ones' prefilters built from the lists in workers/heuristics/http.py (the
    request patterns' literal formulas are derived here, once: this is the costly part)."""

    def encoded(items):
        return [item.encode("utf-8") for item in items]

    h = settings
    return _fastpath.Heuristics(
        {name: getattr(h, name) for name in h.names()},
        [(net.version, net.network_address.packed, net.prefixlen) for net in h.networks()],
        {"suspicious_user_agents": encoded(hhttp.SUSPICIOUS_USER_AGENTS),
         "whitelist_user_agents": encoded(hhttp.WHITELIST_USER_AGENTS),
         "request_needles": encoded(hhttp.REQUEST_NEEDLES),
         "request_patterns": encoded(pattern for _, pattern in hhttp.REQUEST_PATTERNS),
         "download_extensions": encoded(hhttp.DOWNLOAD_EXTENSIONS),
         "whitelist_download_paths": encoded(hhttp.WHITELIST_DOWNLOAD_PATHS),
         "filename_patterns": encoded(regex.pattern for _, regex in hhttp.SUSPICIOUS_FILENAMES),
         "proxy_probe_words": encoded(hhttp.PROXY_PROBE_WORDS),
         "response_needles": encoded(hhttp.RESPONSE_NEEDLES),
         "response_head_bytes": hhttp.RESPONSE_HEAD_BYTES,
         "traceroute_ports": (TRACEROUTE_PORTS.start, TRACEROUTE_PORTS.stop)})


class WorkerCounters:
    """What a worker has seen and done, as the statistics report it: frames, decoded, skipped by
    reason, names extracted by kind, events by type, events the controls dropped by reason.
    `frames == decoded + sum(skipped)` always holds."""

    def __init__(self):
        self.frames = 0
        self.decoded = 0
        self.skipped = Counter()
        self.extracted = Counter()
        self.events = Counter()
        self.dropped = Counter()     # events the controls dropped, by reason

    def as_dict(self, condensed: int = 0, saturation: dict | None = None) -> dict:
        return {"frames": self.frames, "decoded": self.decoded, "skipped": dict(self.skipped),
                "extracted": dict(self.extracted), "events": dict(self.events), "condensed": condensed,
                "dropped": dict(self.dropped), "saturation": dict(saturation or {})}


class Worker:
    """Judges batches of frames into events for one worker: on the fast path the C scan decodes
    and counts every frame and hands over the few that can produce an event, with the verdicts of
    the stateful heuristics it keeps; on the reference path every frame is decoded and judged
    here. Holds everything a worker keeps between batches: the trails in use (`adopt` swaps
    them), the heuristics' state, QUIC reassembly, noise control, the controls and the counters."""

    def __init__(self, matchers, sensor: str, condense_window_s: int = 60, fast: bool = True,
                 heuristics: HeuristicSettings | None = None, controls=NO_CONTROLS,
                 severity: SeverityRule | None = None):
        """`fast`: the C scan picks the frames that can matter and only those are judged here;
        False judges every frame in Python (the reference path, for differential tests).
        `heuristics`: the heuristic settings (default: all of Maltrail's, on); `controls`: the
        whitelists and ignore rules applied to every event; `severity`: the compiled severity rule
        every event is classified by (default: events/record.py's default rule)."""
        self.matchers = matchers
        self.sensor = sensor
        self.severity = severity if severity is not None else DEFAULT_SEVERITY
        self.counters = WorkerCounters()
        self.condenser = Condenser(condense_window_s * 1_000_000)
        self.quic = QuicSniAssembler()
        self.certs = ServerCertAssembler()
        # The certificate path runs only when the trails hold certificates: without them no TCP
        # segment takes it, on either path (the C scan is told by the certs section's presence).
        self._certs_on = len(matchers.certs) > 0
        self.heuristics = h = heuristics if heuristics is not None else HeuristicSettings()
        self.controls = controls
        self.scans = ScanHeuristics(h)
        self.dnsh = DnsHeuristics(h)
        self._reference = not fast
        self._artifact = matchers.artifact
        self._tables = fast_tables(matchers.artifact) if fast else None
        # On the fast path the C scan sees every frame, so it keeps the stateful heuristics (the
        # scan windows, DNS exhaustion) and flags what the stateless ones could judge; the Python
        # trackers above then only count NXDOMAIN answers. Its state is the worker's, not the
        # trails': it outlives reloads (adopt). None on the reference path.
        self.fast_heuristics = fast_heuristics(h) if fast else None

    # -- batch interface --------------------------------------------------------------------

    def process(self, batch, out: list | None = None) -> list[Event]:
        """Judges every frame of `batch`; returns the events (appended to `out` when given, so a
        caller that catches an exception still holds the events made before it)."""
        if out is None:
            out = []
        first = len(out)
        if self._tables is not None:
            now = self._process_fast(batch, out)
        else:
            now = self._process_reference(batch, out)
        # Windows close on this batch's packet time, not the run's maximum: a replay of several
        # captures from different years must not close every window of the older ones at once.
        if now:
            self.condenser.expire(now, out)
        self._count(out[first:])
        return out

    def _process_reference(self, batch, out: list) -> int:
        buf, offsets, caplens = batch.buf, batch.offsets, batch.caplens
        linktypes, ts_ns = batch.linktypes, batch.ts_ns
        counters = self.counters
        now = 0
        for i in range(len(offsets)):
            start = offsets[i]
            packet = decode_frame(bytes(buf[start:start + caplens[i]]), linktypes[i])
            counters.frames += 1
            if type(packet) is str:
                counters.skipped[packet] += 1
                continue
            counters.decoded += 1
            ts = ts_ns[i] // 1000
            if ts > now:
                now = ts
            self._inspect(packet, ts, out)
        return now

    def _process_fast(self, batch, out: list) -> int:
        buf, offsets, caplens, linktypes, ts_ns = batch.buf, batch.offsets, batch.caplens, batch.linktypes, batch.ts_ns
        counters = self.counters
        total = len(caplens)
        counters.frames += total
        now = 0
        # A flagged entry holds the frame's index in its low 16 bits: longer batches are scanned in
        # parts (the scan's state carries from one part to the next as from frame to frame).
        step = _fastpath.MAX_BATCH_FRAMES
        for first in range(0, total, step):
            arrays = (offsets, caplens, linktypes, ts_ns)
            if total > step:
                arrays = tuple(memoryview(a)[first:first + step] for a in arrays)
            flagged, counts, part_now = _fastpath.scan(self._tables, buf, *arrays, self.fast_heuristics)
            now = max(now, part_now)
            counters.decoded += counts[0]
            for k, reason in enumerate(SKIP_REASONS):
                if counts[1 + k]:
                    counters.skipped[reason] += counts[1 + k]
            for k, name in enumerate(_FAST_EXTRACTED, 1 + len(SKIP_REASONS)):
                if counts[k]:
                    counters.extracted[name] += counts[k]
            for entry in array("I", flagged):
                # low 16 bits: the frame's index in this part; high 16: the heuristic verdicts
                i = first + (entry & 0xFFFF)
                start = offsets[i]
                packet = decode_frame(bytes(buf[start:start + caplens[i]]), linktypes[i])
                self._inspect(packet, ts_ns[i] // 1000, out, entry >> 16)
        return now

    def adopt(self, matchers) -> None:
        """Switches to another trail generation between batches (a reload). The heuristics' state
        (the Python trackers and the C scan's `fast_heuristics`) belongs to the worker, not to the
        trails, and carries over."""
        tables = fast_tables(matchers.artifact) if self._tables is not None else None
        self.matchers = matchers
        self._artifact = matchers.artifact
        self._tables = tables
        self._certs_on = len(matchers.certs) > 0

    def expire(self, now_us: int) -> list[Event]:
        """Closes condensing windows that ended before `now_us` (live capture calls this with the
        wall clock, so a summary is not held back while traffic pauses)."""
        out: list[Event] = []
        self.condenser.expire(now_us, out)
        self._count(out)
        return out

    def expire_parts(self, now_us: int, max_groups: int):
        """expire() in parts of at most `max_groups` closed groups each, yielded as they are made:
        a live capture's pause after a flood closes every group of it at once (flush_parts)."""
        return self._in_parts(lambda out: self.condenser.expire(now_us, out, max_groups))

    def flush(self) -> list[Event]:
        """Closes every open condensing window (end of replay, shutdown)."""
        out: list[Event] = []
        self.condenser.flush(out)
        self._count(out)
        return out

    def flush_parts(self, max_groups: int):
        """flush() in parts of at most `max_groups` closed groups each, yielded as they are made:
        after a flood 30,000 or more groups are open, and their records at once cost a worker
        more than all its state (bench/README.md, the floods section)."""
        return self._in_parts(lambda out: self.condenser.flush(out, max_groups))

    def _in_parts(self, close_part):
        """Yields the events of `close_part(out)` (which says whether groups remain to close) one
        part at a time, counted."""
        more = True
        while more:
            out: list[Event] = []
            more = close_part(out)
            self._count(out)
            yield out

    def stats(self) -> dict:
        saturation = dict(self.scans.saturation())
        saturation.update(self.dnsh.saturation())
        if self.fast_heuristics is not None:
            # the C scan's windows and exhaustion state, under the same names (NXDOMAIN counting
            # stays with self.dnsh on both paths)
            saturation.update(self.fast_heuristics.stats())
        saturation["noise control groups closed early"] = self.condenser.early_closes
        saturation["noise control values not counted"] = self.condenser.uncounted
        # The certificate assembler's give-ups (evictions at its caps, gaps, malformed lengths):
        # counted here, where the statistics line shows state that reached a limit.
        for reason, n in self.certs.counts.items():
            if reason != "certificates":
                saturation["tls certificate handshakes: " + reason] = n
        return self.counters.as_dict(self.condenser.suppressed, saturation)

    def _count(self, events) -> None:
        for e in events:
            self.counters.events[e.type] += e.count

    # -- per packet: observe, flow, match and judge, emit --------------------------------------

    def _inspect(self, p, ts: int, out: list, bits: int | None = None) -> None:
        """Judges one decoded packet. `bits`: the heuristic verdicts the C scan reached for it
        (fast path); None on the reference path, where the Python trackers observe it here."""
        if bits is None:
            bits = self.scans.observe(p, ts) if self.heuristics.enabled else 0
        dns_messages, dns_udp, http, sni, quic_sni, response, cert = self._observe(p, ts)
        first_qname = dns_messages[0].qname if dns_messages else None
        flow = flow_of(p, ts, first_qname)

        annotation = None
        if first_qname:
            annotation = first_qname
        elif http is not None and http.host and http.host[0].isalpha():
            annotation = normalize_host(http.host)
        self._ip_trails(p, flow, annotation, bool(dns_messages), out)
        if response:
            self._http_response(flow, p.payload, out)
        if bits & SCANS:
            self._scan_events(flow, bits, out)

        for message in dns_messages:
            self._dns(flow, message, bits, dns_udp, out)
        if http is not None:
            self.counters.extracted["http requests"] += 1
            self._http(p, flow, http, bits, out)
        if sni:
            self.counters.extracted["tls server names"] += 1
            self._match_domain(flow, normalize_host(sni), TYPE_SNI, out)
        if quic_sni:
            self.counters.extracted["quic server names"] += 1
            self._match_domain(flow, normalize_host(quic_sni), TYPE_SNI, out)
        if cert is not None:
            self.counters.extracted["tls certificates"] += 1
            self._match_cert(flow, cert, out)

    def _observe(self, p, ts: int) -> tuple:
        """What the payload carries, parsed and nothing matched: (DNS messages, whether over UDP,
        an HTTP request, a TLS server name, a QUIC server name (once its ClientHello is whole),
        whether an HTTP response worth the response heuristics, the DER bytes of a TLS server
        certificate (once it is whole))."""
        payload = p.payload
        dns_messages = ()
        http = sni = quic_sni = cert = None
        dns_udp = response = False
        if p.proto == IPPROTO_UDP:
            if p.sport == 53 or p.dport == 53:
                message = parse_dns(payload)
                dns_messages = (message,) if message is not None else ()
                dns_udp = True
            elif payload and payload[0] & 0x80:
                quic_sni = self.quic.feed((p.src, p.sport, p.dst, p.dport), payload, ts / 1e6)
        elif p.proto == IPPROTO_TCP and payload:
            if p.sport == 53 or p.dport == 53:
                dns_messages = parse_dns_tcp(payload)
            elif looks_like_tls_client_hello(payload):
                sni = parse_tls_client_hello_sni(payload)
            elif looks_like_http_request(payload):
                http = parse_http_request(payload)
            elif self.heuristics.on("http_response") and payload.startswith(b"HTTP/"):
                response = True
            if self._certs_on:
                cert = self._server_certificate(p, payload)
        return dns_messages, dns_udp, http, sni, quic_sni, response, cert

    def _server_certificate(self, p, payload: bytes) -> bytes | None:
        """A server's TCP segment into the certificate assembler (workers/certs.py): one that opens
        a ServerHello record, or one of a flight already being joined. Keyed server -> client, so
        the client's segments of the same connection never meet the server's flight."""
        key = (p.version, p.src, p.sport, p.dst, p.dport)
        if not self.certs.active(key):
            if not starts_server_hello(payload) or client_is_src(p):
                return None
        return self.certs.feed(key, p.tcp_seq, payload)

    def _match_cert(self, flow: Flow, der: bytes, out: list) -> None:
        """Certificate trails on the SHA-1 of a server's certificate; the event goes client ->
        server like every other, its trail the fingerprint in lower-case hex."""
        digest = hashlib.sha1(der, usedforsecurity=False).digest()  # the fingerprint feeds list, not a MAC
        trail_id = self.matchers.certs.lookup(digest)
        if trail_id is not None:
            self._emit(flow.client_to_server(), TYPE_CERT, digest.hex(), trail_id, out)

    def _emit(self, flow: Flow, type_: str, trail: str, trail_id, out: list, info=None, reference=None) -> None:
        """One event, `flow.src` -> `flow.dst`, through the controls into noise control (grouped by
        `flow.group`). The info and reference are the trail's (`trail_id`), or a heuristic's.

        An event of loopback traffic is dropped first and counted, except a DNS event. Loopback
        traffic never crosses a wire: a sensor sees it only when it captures its own host (the
        default interface "any" includes lo), and there it is mostly a copy of what the real
        interfaces carry (a stub resolver's forwarded queries, a reverse proxy's forwarded
        requests) under addresses that name no host; the proxy's copies would make 127.0.0.1 a web
        scanner. Maltrail's default whitelist (localhost, 127.0.0.1, ::1) drops them too. DNS
        events stay: whitelisted addresses never hide a name (workers/controls.py), and a query a
        cache answered is seen on loopback only."""
        if flow.loopback and type_ != TYPE_DNS:
            self.counters.dropped["loopback"] += 1
            return
        if trail_id is not None:
            info, reference = self._artifact.meta_of(trail_id)
        ts = flow.ts_us
        event = Event(ts, self.sensor, flow.src, flow.sport or None, flow.dst, flow.dport or None, flow.proto, type_,
                      trail, info, reference, self.severity.of(info, reference), 1, ts)
        dropped = self.controls.verdict(event)
        if dropped is not None:
            self.counters.dropped[dropped] += 1
            return
        self.condenser.offer(event, out, flow.group)

    def _heuristic(self, flow: Flow, type_: str, trail: str, info: str, out: list) -> None:
        self._emit(flow, type_, trail, None, out, info, HEURISTIC)

    def _scan_events(self, flow: Flow, bits: int, out: list) -> None:
        """Scan verdicts name the prober: the sender of the probe that holds the verdict (TCP
        probes carry no ACK or RST, UDP probes are counted by sender, workers/heuristics/scan.py)."""
        if bits & PORT_SCAN:
            self._heuristic(flow, TYPE_IP, flow.src, "potential port scanning", out)
        if bits & INFECTION_SCAN:
            self._heuristic(flow, TYPE_PORT, str(flow.dport), "potential infection", out)
        if bits & UDP_SCAN:
            self._heuristic(flow, TYPE_IP, flow.src, "potential udp scanning", out)

    def _ip_trails(self, p, flow: Flow, annotation: str | None, is_dns: bool, out: list) -> None:
        """IP and IP:port trails on both endpoints, reported client -> server."""
        ips = self.matchers.ips
        version = p.version
        if flow.client_is_src:
            c_addr, c_port, s_addr, s_port = p.src, p.sport, p.dst, p.dport
        else:
            c_addr, c_port, s_addr, s_port = p.dst, p.dport, p.src, p.sport

        side, trail_id, port = None, None, None
        for side_name, a, pt in (("server", s_addr, s_port), ("client", c_addr, c_port)):
            if pt:
                trail_id = ips.lookup_ip_port(version, a, pt)
            if trail_id is None:
                trail_id = ips.lookup_ip(version, a)
            if trail_id is not None:
                side, port = side_name, pt
                break
        if trail_id is None:
            return
        info = self._artifact.meta_of(trail_id)[0]
        if not is_dns:
            # Maltrail's false-positive rules: a connection to a listed attacker or scanner (an
            # address, a range or an ip:port alike) is our own traffic answering it; parking pages
            # matter only on the web ports; a "malware" host reaching us is backscatter, not an
            # infection.
            if p.proto == IPPROTO_TCP and side == "server":
                if _ATTACKER_LABEL.search(info) or ("parking site" in info and s_port not in (80, 443)):
                    return
            if p.proto in (IPPROTO_TCP, IPPROTO_UDP) and side == "client" and "malware" in info:
                return
        kind = self._artifact.kind(trail_id)
        oriented = flow.client_to_server()
        ip = oriented.dst if side == "server" else oriented.src
        if kind in (KIND_IPPORT4, KIND_IPPORT6):
            type_, trail = TYPE_IPORT, _addr_port(ip, port)
        else:
            type_, trail = TYPE_IP, ip
            if side == "server" and annotation:
                trail = "%s (%s)" % (ip, annotation)
            elif kind in (KIND_CIDR4, KIND_CIDR6):
                trail = "%s (%s)" % (ip, self._artifact.key(trail_id))
        self._emit(oriented, type_, trail, trail_id, out)

    def _match_domain(self, flow: Flow, name: str, type_: str, out: list) -> bool:
        """Domain trails on a name seen in DNS/HTTP/TLS/QUIC; True when an event was emitted."""
        if not name or _NUMERIC_NAME.match(name) or not _VALID_NAME.match(name):
            return False
        hit = self.matchers.domains.match(name)
        if hit is None:
            return False
        self._emit(flow, type_, render_span(name, hit.start, hit.end), hit.trail_id, out)
        return True

    def _dns(self, flow: Flow, m, bits: int, over_udp: bool, out: list) -> None:
        name = m.qname
        if not name:
            return
        h = self.heuristics
        if not m.is_response:
            if m.opcode != 0:
                return
            self.counters.extracted["dns queries"] += 1
            if _ignored_name(name):
                return
            if over_udp and h.on("dns_exhaustion"):
                if (self.dnsh.observe_query(name, flow.ts_us) if self._reference else bits & DNS_EXHAUSTION):
                    self._heuristic(flow, TYPE_DNS, "*." + hdns.subdomain_of(name)[1], hdns.INFO_EXHAUSTION, out)
            if self._match_domain(flow, name, TYPE_DNS, out):
                return
            if h.on("long_domain") and hdns.judged(name):
                trail = hdns.long_name_trail(name, h)
                if trail:
                    self._heuristic(flow, TYPE_DNS, trail, hdns.INFO_LONG, out)
            return
        self.counters.extracted["dns responses"] += 1
        if m.rcode == RCODE_NXDOMAIN and m.opcode == 0 and (h.on("nxdomain") or h.on("dga")):
            self._nxdomain(flow, name, out)
            return
        if m.rcode != 0 or not m.answers or m.qclass != QCLASS_IN or not h.on("dns_answers"):
            return
        for version, addr in m.answers:
            trail_id = self.matchers.ips.lookup_ip(version, addr)
            if trail_id is None:
                continue
            info = self._artifact.meta_of(trail_id)[0]
            head, _, tld = name.rpartition(".")
            trail = "(%s).%s" % (head, tld) if head else name
            if "sinkhole" in info:
                owner = info.split(" ")[1] if " " in info else info
                self._heuristic(flow, TYPE_DNS, trail, "sinkholed by %s (malware)" % owner, out)
                return
            if "parking" in info:
                self._heuristic(flow, TYPE_DNS, trail, "parked site (suspicious)", out)
                return

    def _nxdomain(self, flow: Flow, name: str, out: list) -> None:
        """An NXDOMAIN answer: flood counters and the DGA check (Maltrail's order)."""
        if not hdns.judged(name) or _ignored_name(name):
            return
        if self.matchers.domains.match(name) is not None:
            return  # a trail names it: its query was the event
        h = self.heuristics
        if h.on("nxdomain"):
            trail = self.dnsh.observe_nxdomain(name, flow.ts_us)
            if trail:
                self._heuristic(flow, TYPE_DNS, trail, hdns.INFO_NXDOMAIN, out)
        if h.on("dga"):
            info = hdns.dga_info(name, h)
            if info:
                label, _, rest = name.partition(".")
                self._heuristic(flow, TYPE_DNS, "(%s).%s" % (label, rest), info, out)

    def _http_response(self, flow: Flow, payload: bytes, out: list) -> None:
        if not hhttp.needs_response_check(payload):
            return
        for trail, info in hhttp.response_verdicts(payload):
            self._heuristic(flow, TYPE_HTTP, trail, info, out)

    def _http(self, p, flow: Flow, req, bits: int, out: list) -> None:
        """An HTTP request: whom it is for (workers/http.py request_authority), then the web scan,
        the names it carries, its user agent, its URL against the trails, and the request
        heuristics, in Maltrail's order; a verdict that ends the judgement returns."""
        h = self.heuristics
        if self._reference and h.enabled:
            bits |= self.scans.observe_request(p, flow.ts_us, req.target, flow.client_is_src)
        if bits & WEB_SCAN:
            self._heuristic(flow, TYPE_PATH, flow.dst, "potential web scanning", out)
        a = request_authority(req, flow.dst)
        target = a.target

        # The names the request carries, each judged once (the Host header and the target often
        # name the same host).
        header_name = None
        if a.header_host is not None:
            host = a.header_host
            if (h.on("iot_download") and hhttp.is_bare_ipv4(host) and hhttp.IOT_PATH.match(host + target)
                    and not h.is_local(p.version, p.dst)):
                self._heuristic(flow, TYPE_HTTP, "(%s)%s" % (host, target),
                                "potential iot-malware download (suspicious)", out)
                return
            header_name = normalize_host(host)
            self._match_domain(flow, header_name, TYPE_DNS, out)
        elif h.on("missing_host"):
            self._heuristic(flow, TYPE_HTTP, "%s%s" % (flow.dst, target), "missing host header (suspicious)", out)
        if a.target_host is not None:
            if (a.absolute and h.on("proxy_probe") and p.dport == 80 and target.startswith("http://")
                    and any(w in target for w in hhttp.PROXY_PROBE_WORDS)):
                self._heuristic(flow, TYPE_HTTP, _proxy_trail(target), "potential proxy probe (suspicious)", out)
                return
            # Absolute-form or CONNECT target (a request to a proxy): the real host is in the target.
            target_name = normalize_host(a.target_host)
            if target_name != header_name:
                self._match_domain(flow, target_name, TYPE_DNS, out)

        if req.user_agent:
            found = self.matchers.user_agents.match_span(req.user_agent)
            if found is not None:
                trail_id, start, end = found
                self._emit(flow, TYPE_UA, render_user_agent_span(req.user_agent, start, end), trail_id, out)
            elif h.on("user_agent"):
                user_agent = unquote(req.user_agent).strip()
                pattern = hhttp.user_agent_pattern(user_agent)
                if pattern:
                    self._heuristic(flow, TYPE_UA, render_user_agent(user_agent, pattern), "user agent (suspicious)", out)

        host, url = a.host, a.url
        path = a.path.replace("//", "/")
        post = None
        if req.body and req.method.upper() == "POST":
            post = unquote(req.body.decode("latin-1")).lower()
        hit = self.matchers.urls.match(host, path, post)
        if hit is not None:
            if hit.post_form:
                trail = "%s(%s \\(%s %s\\))" % (host, path, req.method, req.body.decode("latin-1").strip())
                self._emit(flow, TYPE_HTTP, trail, hit.trail_id, out)
            else:
                # Maltrail's text: the matched candidate bare, the rest of the URL in parentheses;
                # a whole-host trail ("host/") is written alone, whatever path was requested, so every
                # request to that host is one trail (and one noise-control group per client)
                parts = url.split(hit.check)
                trail = hit.check if hit.whole_host else hit.check.join("(%s)" % part if part else part
                                                                        for part in parts)
                self._emit(flow, TYPE_URL, trail, hit.trail_id, out)
            return
        if h.enabled:
            self._request_heuristics(p, flow, req, host, path, out)

    def _request_heuristics(self, p, flow: Flow, req, host: str, path: str, out: list) -> None:
        """Attack patterns in the path or body, direct downloads, suspicious file names; the event
        is attributed to the client a proxy names in X-Forwarded-For and kin."""
        h = self.heuristics
        if h.on("forwarded_for"):
            forwarded = hhttp.forwarded_source(req.headers)
            if forwarded:
                flow = flow.attributed_to(forwarded)
        if h.on("http_request") and not hhttp.WHITELIST_REQUEST_PATHS.search(unquote(path).lower()):
            found = hhttp.request_attack(*decoded_target(path))
            if found and not ("data leakage" in found and h.is_local(p.version, p.dst)):
                self._heuristic(flow, TYPE_URL, "%s(%s)" % (host, hhttp.force_encode(path)), "%s (suspicious)" % found,
                                out)
                return
            if req.body:
                body = req.body.decode("latin-1")
                found = hhttp.request_attack(*decoded_form(body))
                if found:
                    self._heuristic(flow, TYPE_HTTP, "%s(%s \\(%s %s\\))" % (
                        host, hhttp.force_encode(path), req.method, hhttp.force_encode(body.strip())),
                        "%s (suspicious)" % found, out)
                    return
        if "." not in path or not h.on("direct_download"):
            return
        target = path.split("?", 1)
        filename = target[0].rsplit("/", 1)[-1]
        ext = hhttp.download_extension(path)
        trail = "%s(%s)" % (host, hhttp.force_encode(path))
        if ext:
            name = filename[:-len(ext)]
            query = target[1] if len(target) > 1 else ""
            if (not h.is_local(p.version, p.dst) and not any(w in path for w in hhttp.WHITELIST_DOWNLOAD_PATHS)
                    and "=" not in query and len(name) < 10):
                self._heuristic(flow, TYPE_URL, trail, "direct %s download (suspicious)" % ext, out)
            return
        for desc, pattern in hhttp.SUSPICIOUS_FILENAMES:
            if pattern.search(filename):
                self._heuristic(flow, TYPE_URL, trail, "%s (suspicious)" % desc, out)
                return


def _proxy_trail(path: str) -> str:
    """Maltrail's rendering of a proxy probe: the host without its port, the rest in parentheses."""
    rest = path[len("http://"):]
    host, sep, tail = rest.partition("/")
    host = host.split(":", 1)[0].rstrip(".")
    return "http://%s/%s" % (host, "(%s)" % tail if tail else "")
