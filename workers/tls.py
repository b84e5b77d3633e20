"""TLS ClientHello parsing: the server name a client asks for.

Owns the byte layout of the TLS record header (RFC 8446 section 5.1), the ClientHello handshake
message (RFC 8446 section 4.1.2; the same layout in TLS 1.0-1.2, RFC 5246 section 7.4.1.2) and
the server_name extension (RFC 6066 section 3), as far as is needed to read the host_name. Turns
bytes into fields and nothing more.

Must not touch capture, flows, TCP reassembly, trails or events: callers hand in whatever
contiguous bytes they hold (a TCP payload, or QUIC CRYPTO data) and get a name or None back.
Every `parse_*` here is pure, bounds-checks explicitly, never raises and does work bounded by the
length of its input.
"""

from __future__ import annotations

CONTENT_TYPE_HANDSHAKE = 22
HANDSHAKE_CLIENT_HELLO = 1
EXTENSION_SERVER_NAME = 0
NAME_TYPE_HOST_NAME = 0

RECORD_HEADER_BYTES = 5
HANDSHAKE_HEADER_BYTES = 4
# legacy_version (2) + random (32): fixed fields before the session id.
_FIXED_HELLO_BYTES = 34
# RFC 8446 section 4.1.2: legacy_session_id is opaque <0..32>.
_MAX_SESSION_ID_BYTES = 32
# RFC 8446 section 5.1: a plaintext record carries at most 2^14 bytes.
_MAX_RECORD_BYTES = 1 << 14
# A ClientHello split over more records than this is treated as hostile or broken.
_MAX_RECORDS = 16
# RFC 1035 section 2.3.4 caps a domain name at 255 octets; a longer host_name is not a host name.
_MAX_HOST_NAME_BYTES = 255


def _host_name(raw: bytes) -> str | None:
    """The host_name as a trail-comparable string, or None when it cannot be a DNS name."""
    n = len(raw)
    if n == 0 or n > _MAX_HOST_NAME_BYTES:
        return None
    # RFC 6066: HostName is ASCII. Control bytes, spaces and DEL are never part of a DNS name and
    # would let a client smuggle line breaks into the event log, so they disqualify the name.
    if min(raw) <= 0x20 or max(raw) >= 0x7F:
        return None
    name = raw.decode("ascii").lower()
    # RFC 6066 forbids the trailing dot; clients that send it anyway mean the same name.
    if name.endswith("."):
        name = name[:-1]
    return name or None


def _sni_from_extension(buf: bytes, pos: int, end: int) -> str | None:
    """server_name extension_data in buf[pos:end]: ServerNameList, first host_name entry wins."""
    if end - pos < 2:
        return None
    list_end = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if list_end > end:
        return None
    pos += 2
    while list_end - pos >= 3:
        name_type = buf[pos]
        name_len = (buf[pos + 1] << 8) | buf[pos + 2]
        pos += 3
        if pos + name_len > list_end:
            return None
        if name_type == NAME_TYPE_HOST_NAME:
            # RFC 6066: at most one name of each type, so the first host_name is the name.
            return _host_name(buf[pos:pos + name_len])
        pos += name_len
    return None


def _sni_from_hello(buf: bytes, start: int, end: int) -> str | None:
    """Walk a ClientHello whose handshake header begins at buf[start]; buf[:end] is what we have.

    `end` may fall short of the declared handshake length (snap length, TCP segmentation, a
    partial CRYPTO stream): the name is returned as long as its extension lies wholly before `end`.
    """
    if end - start < HANDSHAKE_HEADER_BYTES or buf[start] != HANDSHAKE_CLIENT_HELLO:
        return None
    hello_len = (buf[start + 1] << 16) | (buf[start + 2] << 8) | buf[start + 3]
    pos = start + HANDSHAKE_HEADER_BYTES
    end = min(end, pos + hello_len)

    pos += _FIXED_HELLO_BYTES
    if pos + 1 > end:
        return None
    session_id_len = buf[pos]
    if session_id_len > _MAX_SESSION_ID_BYTES:
        return None
    pos += 1 + session_id_len

    if pos + 2 > end:
        return None
    suites_len = (buf[pos] << 8) | buf[pos + 1]
    # cipher_suites is CipherSuite <2..2^16-2>: two bytes per suite, at least one suite.
    if suites_len < 2 or suites_len & 1:
        return None
    pos += 2 + suites_len

    if pos + 1 > end:
        return None
    compression_len = buf[pos]
    # legacy_compression_methods is opaque <1..2^8-1>.
    if compression_len < 1:
        return None
    pos += 1 + compression_len

    # Extensions are optional before TLS 1.3 (RFC 5246 section 7.4.1.2): none means no name.
    if pos + 2 > end:
        return None
    extensions_end = min(end, pos + 2 + ((buf[pos] << 8) | buf[pos + 1]))
    pos += 2
    # Each pass advances at least four bytes, so the walk is bounded by the input length.
    while extensions_end - pos >= 4:
        ext_type = (buf[pos] << 8) | buf[pos + 1]
        ext_len = (buf[pos + 2] << 8) | buf[pos + 3]
        pos += 4
        if pos + ext_len > extensions_end:
            return None
        if ext_type == EXTENSION_SERVER_NAME:
            # RFC 8446 section 4.2: an extension type appears at most once.
            return _sni_from_extension(buf, pos, pos + ext_len)
        pos += ext_len
    return None


def parse_client_hello_sni(handshake: bytes) -> str | None:
    """server_name of a ClientHello given from its handshake header (QUIC CRYPTO data), or None.

    The name is ASCII, lower-cased and without a trailing dot. Input may be cut short anywhere
    after the server_name extension.
    """
    if not isinstance(handshake, (bytes, bytearray)):
        return None
    return _sni_from_hello(handshake, 0, len(handshake))


def looks_like_tls_client_hello(payload: bytes) -> bool:
    """Cheap classifier: a handshake record of SSL 3.0-TLS 1.3 whose first message is ClientHello."""
    return (
        len(payload) > RECORD_HEADER_BYTES
        and payload[0] == CONTENT_TYPE_HANDSHAKE
        and payload[1] == 3
        and payload[2] <= 4
        and payload[5] == HANDSHAKE_CLIENT_HELLO
    )


def parse_tls_client_hello_sni(payload: bytes) -> str | None:
    """server_name of a ClientHello carried in a TCP payload that starts at a TLS record, or None.

    The record may be longer than the payload (snap length, TCP segmentation): the name is
    returned when its extension is wholly present. A ClientHello fragmented over several
    handshake records inside the payload is joined first (RFC 8446 section 5.1 allows it).
    """
    if not isinstance(payload, (bytes, bytearray)) or not looks_like_tls_client_hello(payload):
        return None
    record_len = (payload[3] << 8) | payload[4]
    if record_len == 0 or record_len > _MAX_RECORD_BYTES:
        return None
    available = len(payload)
    record_end = RECORD_HEADER_BYTES + record_len
    if available < HANDSHAKE_HEADER_BYTES + RECORD_HEADER_BYTES:
        return None
    hello_end = (
        RECORD_HEADER_BYTES + HANDSHAKE_HEADER_BYTES
        + ((payload[6] << 16) | (payload[7] << 8) | payload[8])
    )
    if record_end >= hello_end or record_end >= available:
        # The common case: the first record holds the whole ClientHello, or all we captured.
        return _sni_from_hello(payload, RECORD_HEADER_BYTES, min(record_end, available))

    # The ClientHello continues in further handshake records: join their fragments.
    joined = bytearray(payload[RECORD_HEADER_BYTES:record_end])
    want = hello_end - RECORD_HEADER_BYTES
    pos = record_end
    records = 1
    while len(joined) < want and records < _MAX_RECORDS and available - pos >= RECORD_HEADER_BYTES:
        if payload[pos] != CONTENT_TYPE_HANDSHAKE or payload[pos + 1] != 3:
            break
        fragment_len = (payload[pos + 3] << 8) | payload[pos + 4]
        if fragment_len == 0 or fragment_len > _MAX_RECORD_BYTES:
            break
        pos += RECORD_HEADER_BYTES
        joined += payload[pos:pos + fragment_len]
        pos += fragment_len
        records += 1
    return _sni_from_hello(joined, 0, len(joined))
