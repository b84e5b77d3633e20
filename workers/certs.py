"""TLS server certificates: the leaf certificate a TLS 1.2 (or older) server sends.

Owns the byte layout of the server's first flight as far as the Certificate message (RFC 5246
sections 6.2.1 and 7.4.2: handshake records, handshake messages possibly fragmented over several
records and several records in one TCP segment, the certificate_list and the first ASN.1.Cert in
it, the server's own), and `ServerCertAssembler`, which joins the server's TCP segments of one
flow in sequence order until the first certificate is whole.

TLS 1.3 encrypts the Certificate (RFC 8446 section 4.4.2): its ServerHello is followed by
ChangeCipherSpec and application-data records, which end the walk with no certificate; so does
an abbreviated (resumed) TLS 1.2 handshake. Nothing here decrypts anything.

Must not touch capture, IP/TCP decode, trails or events: callers hand in a flow key, a TCP
sequence number and a payload and get the DER bytes of the leaf certificate back (once). `parse_*`
is pure, bounds-checks explicitly, never raises and does work bounded by its input; only the
assembler keeps state, capped in flows and in bytes (per flow and in total), the oldest flow
evicted first and every give-up counted by reason.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

CONTENT_TYPE_HANDSHAKE = 22
HANDSHAKE_SERVER_HELLO = 2
HANDSHAKE_CERTIFICATE = 11
HANDSHAKE_SERVER_HELLO_DONE = 14
RECORD_HEADER_BYTES = 5
HANDSHAKE_HEADER_BYTES = 4
# RFC 5246 section 6.2.1: a plaintext fragment is at most 2^14 bytes (and never empty for a
# handshake record); anything longer is not a record of the handshake we can read.
MAX_RECORD_BYTES = 1 << 14
# Server bytes held for one handshake: real first flights (ServerHello, a chain of 2-4
# certificates, ServerKeyExchange) are 2-8 KiB; 64 KiB covers long chains with RSA-4096 keys.
MAX_FLIGHT_BYTES = 64 * 1024
MAX_FLOWS = 1024
# All flows together: a flood of handshakes that never finish must not hold MAX_FLOWS x 64 KiB.
MAX_TOTAL_BYTES = 4 * 1024 * 1024
_SEQ_MOD = 1 << 32
_SEQ_HALF = 1 << 31

# parse_server_flight outcomes.
MORE = "more"                  # no certificate yet and nothing says there will be none
FOUND = "found"
NO_CERTIFICATE = "no certificate"   # the plaintext handshake ended without one (TLS 1.3, resumption)
MALFORMED = "malformed"


def starts_server_hello(payload) -> bool:
    """Cheap classifier: a TCP payload that opens with a handshake record of SSL 3.0-TLS 1.2
    whose first message is a ServerHello (the start of a server's first flight). The C scan's
    twin is cert_start() in workers/csrc/fastpath.c."""
    return (
        len(payload) > RECORD_HEADER_BYTES
        and payload[0] == CONTENT_TYPE_HANDSHAKE
        and payload[1] == 3
        and payload[2] <= 3
        and payload[5] == HANDSHAKE_SERVER_HELLO
    )


def parse_server_flight(stream) -> tuple[str, bytes | None]:
    """(outcome, DER of the first certificate) for the server bytes `stream`, which start at a
    record header. MORE: what is here is consistent and the Certificate is not whole yet;
    FOUND with the leaf's DER; NO_CERTIFICATE: a record other than handshake (ChangeCipherSpec,
    application data: TLS 1.3 or a resumed session) or ServerHelloDone came first; MALFORMED:
    a length or version no TLS 1.2 peer sends (the reason is the second value, as bytes)."""
    n = len(stream)
    handshake = bytearray()
    pos = 0
    while pos < n:
        if n - pos < RECORD_HEADER_BYTES:
            if stream[pos] != CONTENT_TYPE_HANDSHAKE:
                return _finish_without(handshake)
            break
        content_type = stream[pos]
        if content_type != CONTENT_TYPE_HANDSHAKE:
            # The plaintext handshake is over: whatever follows is not a certificate we can read.
            # (The messages gathered so far were checked below when their record arrived.)
            return _finish_without(handshake)
        if stream[pos + 1] != 3 or stream[pos + 2] > 3:
            return MALFORMED, b"record version"
        length = (stream[pos + 3] << 8) | stream[pos + 4]
        if length == 0 or length > MAX_RECORD_BYTES:
            return MALFORMED, b"record length"
        body = pos + RECORD_HEADER_BYTES
        end = body + length
        if end > n:
            handshake += stream[body:n]
            break
        handshake += stream[body:end]
        pos = end
    return _walk_messages(handshake)


def _finish_without(handshake: bytearray) -> tuple[str, bytes | None]:
    """A non-handshake record arrived: the certificate, if any, lies in what was gathered."""
    outcome, der = _walk_messages(handshake)
    if outcome == MORE:
        return NO_CERTIFICATE, None
    return outcome, der


def _walk_messages(handshake) -> tuple[str, bytes | None]:
    """Handshake messages back to back (a message may span records, RFC 5246 section 6.2.1)."""
    n = len(handshake)
    pos = 0
    # Each pass advances by at least the four-byte header, so the walk is bounded by n.
    while n - pos >= HANDSHAKE_HEADER_BYTES:
        msg_type = handshake[pos]
        length = (handshake[pos + 1] << 16) | (handshake[pos + 2] << 8) | handshake[pos + 3]
        if length > MAX_FLIGHT_BYTES:
            return MALFORMED, b"handshake message length"
        body = pos + HANDSHAKE_HEADER_BYTES
        if msg_type == HANDSHAKE_CERTIFICATE:
            return _first_certificate(handshake, body, length)
        if msg_type == HANDSHAKE_SERVER_HELLO_DONE:
            return NO_CERTIFICATE, None  # an anonymous or PSK suite: the server sends none
        if body + length > n:
            return MORE, None
        pos = body + length
    return MORE, None


def _first_certificate(handshake, body: int, length: int) -> tuple[str, bytes | None]:
    """certificate_list <0..2^24-1> of ASN.1Cert <1..2^24-1> (RFC 5246 section 7.4.2): the
    first entry is the sender's own certificate. Only the bytes up to its end are needed."""
    n = len(handshake)
    if n - body < 6:
        return MORE, None
    list_len = (handshake[body] << 16) | (handshake[body + 1] << 8) | handshake[body + 2]
    if list_len + 3 != length:
        return MALFORMED, b"certificate list length"
    if list_len == 0:
        return NO_CERTIFICATE, None  # an empty list: legal for a client, odd but harmless here
    cert_len = (handshake[body + 3] << 16) | (handshake[body + 4] << 8) | handshake[body + 5]
    if cert_len == 0 or cert_len + 3 > list_len:
        return MALFORMED, b"certificate length"
    start = body + 6
    if start + cert_len > n:
        return MORE, None
    return FOUND, bytes(handshake[start:start + cert_len])


class _Flight:
    __slots__ = ("next_seq", "stream")

    def __init__(self, next_seq: int, stream: bytearray):
        self.next_seq = next_seq
        self.stream = stream


class ServerCertAssembler:
    """The server's first flight of each TLS flow, joined in sequence order until its first
    certificate is whole. Keyed by an opaque flow key of the server -> client direction.

    A flow enters when a segment opens with a ServerHello record and leaves when its certificate
    is read, when the handshake ends without one, on a gap (a segment beyond the next expected
    byte: a lost or reordered segment; there is no waiting for the hole to fill), on a malformed
    length, when it holds more than `max_flight_bytes`, or when it is the oldest and room is
    needed (`max_flows`, `max_total_bytes`). `counts` says how many of each."""

    def __init__(self, max_flows: int = MAX_FLOWS, max_flight_bytes: int = MAX_FLIGHT_BYTES,
                 max_total_bytes: int = MAX_TOTAL_BYTES):
        self.max_flows = max_flows
        self.max_flight_bytes = max_flight_bytes
        self.max_total_bytes = max_total_bytes
        self._flights: OrderedDict = OrderedDict()
        self._total_bytes = 0
        self.counts = Counter()

    def __len__(self) -> int:
        return len(self._flights)

    @property
    def held_bytes(self) -> int:
        return self._total_bytes

    def active(self, key) -> bool:
        return key in self._flights

    def feed(self, key, seq: int, payload) -> bytes | None:
        """Takes one non-empty TCP payload of the server -> client direction of `key` with its
        sequence number; returns the DER bytes of the server's certificate once, when they are
        whole, else None."""
        flight = self._flights.get(key)
        if flight is not None:
            gap = (seq - flight.next_seq) % _SEQ_MOD
            if gap == 0:
                data = payload
            elif gap >= _SEQ_HALF:
                # Before the next expected byte: a retransmission, perhaps with new bytes after.
                overlap = _SEQ_MOD - gap
                if overlap >= len(payload):
                    return None
                data = payload[overlap:]
            elif starts_server_hello(payload):
                self._drop(key, None)  # a new handshake on a reused port pair starts afresh
                flight = None
            else:
                self._drop(key, "out of order or missing segment")
                return None
        if flight is None:
            if not starts_server_hello(payload):
                return None
            outcome, der = parse_server_flight(payload)
            if outcome != MORE:
                return self._outcome(outcome, der)
            if len(payload) > self.max_flight_bytes:
                self.counts["flight too long"] += 1
                return None
            self._admit(key, _Flight((seq + len(payload)) % _SEQ_MOD, bytearray(payload)))
            return None
        if len(flight.stream) + len(data) > self.max_flight_bytes:
            self._drop(key, "flight too long")
            return None
        flight.stream += data
        flight.next_seq = (flight.next_seq + len(data)) % _SEQ_MOD
        self._total_bytes += len(data)
        outcome, der = parse_server_flight(flight.stream)
        if outcome == MORE:
            self._trim_total()
            return None
        self._drop(key, None)
        return self._outcome(outcome, der)

    def _outcome(self, outcome: str, der) -> bytes | None:
        if outcome == FOUND:
            self.counts["certificates"] += 1
            return der
        if outcome == MALFORMED:
            self.counts["malformed " + der.decode("ascii")] += 1
        else:
            self.counts[outcome] += 1
        return None

    def _admit(self, key, flight: _Flight) -> None:
        while len(self._flights) >= self.max_flows:
            self._drop(next(iter(self._flights)), "flows evicted")
        self._flights[key] = flight
        self._total_bytes += len(flight.stream)
        self._trim_total()

    def _trim_total(self) -> None:
        while self._total_bytes > self.max_total_bytes and self._flights:
            self._drop(next(iter(self._flights)), "flows evicted")

    def _drop(self, key, reason: str | None) -> None:
        flight = self._flights.pop(key)
        self._total_bytes -= len(flight.stream)
        if reason:
            self.counts[reason] += 1
