"""QUIC Initial packets: client Initial decryption and the TLS ClientHello server name inside.

Owns the QUIC v1 (RFC 9000, RFC 9001) and v2 (RFC 9369) long-header layout, the Initial key
schedule derived from the client's Destination Connection ID, header-protection removal,
AEAD_AES_128_GCM decryption of client Initial packets, the frames an Initial may carry
(RFC 9000 section 12.4), and a bounded reassembler for a ClientHello spread over several CRYPTO
frames and datagrams. The ClientHello itself is read by workers.tls.

Must not touch capture, UDP/IP decode, trails or events: callers hand in a UDP payload and an
opaque flow key and get CRYPTO data or a name back. `parse_*` and `extract_*` are pure, never
raise and do work bounded by the datagram length; only QuicSniAssembler keeps state, and that
state is capped in flows, bytes and age.
"""

from __future__ import annotations

import hmac
import importlib.util
import os
import re

from workers.tls import HANDSHAKE_CLIENT_HELLO, HANDSHAKE_HEADER_BYTES, parse_client_hello_sni

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF

# RFC 9000 section 17.2: long-header connection IDs are at most 20 bytes in versions 1 and 2.
MAX_CID_BYTES = 20
# RFC 9001 section 5.4.2: header protection samples 16 bytes, starting 4 bytes after the packet
# number offset whatever the packet number length.
_SAMPLE_BYTES = 16
_SAMPLE_SKIP_BYTES = 4
_AEAD_TAG_BYTES = 16
# A datagram coalesces at most Initial, 0-RTT, Handshake and one short-header packet; a few more
# passes tolerate odd senders without letting a crafted datagram buy unbounded work.
_MAX_COALESCED_PACKETS = 8
# CRYPTO bytes kept per ClientHello: real ones are 0.3-2 KiB (post-quantum key shares included);
# nothing that needs more is worth holding for a name.
MAX_CRYPTO_BYTES = 64 * 1024

# Frame types an Initial packet may carry (RFC 9000 section 12.4, table 3).
FRAME_PADDING = 0x00
FRAME_PING = 0x01
FRAME_ACK = 0x02
FRAME_ACK_ECN = 0x03
FRAME_CRYPTO = 0x06
FRAME_CONNECTION_CLOSE = 0x1C

# The first non-PADDING byte; compiled once at import, never per packet.
_NOT_PADDING = re.compile(rb"[^\x00]")


class _VersionSpec:
    """What differs between QUIC versions for Initial packets."""

    __slots__ = ("salt", "key_label", "iv_label", "hp_label", "initial_type", "retry_type")

    def __init__(self, salt_hex, label_prefix, initial_type, retry_type):
        self.salt = bytes.fromhex(salt_hex)
        self.key_label = label_prefix + b" key"
        self.iv_label = label_prefix + b" iv"
        self.hp_label = label_prefix + b" hp"
        self.initial_type = initial_type
        self.retry_type = retry_type


_VERSIONS = {
    # RFC 9001 section 5.2 salt and section 5.1 labels; long packet types in RFC 9000 table 5.
    QUIC_V1: _VersionSpec("38762cf7f55934b34d179ae6a4c80cadccbb7f0a", b"quic", 0b00, 0b11),
    # RFC 9369 section 3.3.1 salt, 3.3.2 labels; 3.2 renumbers the types (Initial 0b01, Retry 0b00).
    QUIC_V2: _VersionSpec("0dede3def700a6db819381be6e269dcbf9bd2ed9", b"quicv2", 0b01, 0b00),
}


def _hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with an empty context (RFC 8446 section 7.1), SHA-256."""
    full_label = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full_label),)) + full_label + b"\x00"
    # Every output here is at most one SHA-256 block, so HKDF-Expand is the single T(1) round.
    return hmac.digest(secret, info + b"\x01", "sha256")[:length]


_AES = None
# What importing the AES pieces loads from outside the interpreter's own library (measured with
# sys.modules around the import): the package and the C backend its bindings use.
_AES_DISTRIBUTIONS = ("cryptography", "_cffi_backend")


def _aes():
    """cryptography's AES pieces, imported at the first Initial there is to decrypt. The processes
    that never decrypt one (the supervisor, the capture process, the log writer, a worker on a
    network without QUIC) then do not map its 15 MB library: the supervisor held 4.7-6.8 MB PSS
    of it (ARCHITECTURE.md). A worker imports it as its unprivileged account;
    load_aes_unless_readable runs before the worker changes account, for an account that could not."""
    global _AES
    if _AES is None:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        _AES = (InvalidTag, Cipher, algorithms, modes, AESGCM)
    return _AES


def load_aes_unless_readable(readable) -> bool:
    """Imports the AES pieces now unless `readable(path)` holds for each of _AES_DISTRIBUTIONS'
    places (its package directory, or its file; found without importing anything: top-level
    names). A worker about to change account passes what that account may read (engine/processes/
    privileges.py readable_by). True when it imported them."""
    for name in _AES_DISTRIBUTIONS:
        spec = importlib.util.find_spec(name)
        top = None
        if spec is not None and spec.origin:
            top = os.path.dirname(spec.origin) if spec.submodule_search_locations else spec.origin
        if top is None or not readable(top):
            _aes()
            return True
    return False


def _client_keys(spec: _VersionSpec, dcid: bytes) -> tuple[bytes, bytes, bytes]:
    initial_secret = hmac.digest(spec.salt, dcid, "sha256")
    client_secret = _hkdf_expand_label(initial_secret, b"client in", 32)
    return (
        _hkdf_expand_label(client_secret, spec.key_label, 16),
        _hkdf_expand_label(client_secret, spec.iv_label, 12),
        _hkdf_expand_label(client_secret, spec.hp_label, 16),
    )


def initial_client_keys(version: int, dcid: bytes) -> tuple[bytes, bytes, bytes] | None:
    """(key, iv, hp) protecting client Initial packets sent to `dcid` (RFC 9001 section 5.2)."""
    spec = _VERSIONS.get(version)
    if spec is None or not isinstance(dcid, (bytes, bytearray)):
        return None
    return _client_keys(spec, bytes(dcid))


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    """RFC 9000 section 16 variable-length integer at buf[pos]: (value, next pos); pos -1 if short."""
    if pos >= end:
        return 0, -1
    first = buf[pos]
    size = 1 << (first >> 6)
    if pos + size > end:
        return 0, -1
    value = first & 0x3F
    for i in range(pos + 1, pos + size):
        value = (value << 8) | buf[i]
    return value, pos + size


def _unprotect(buf, start: int, pn_offset: int, end: int, spec: _VersionSpec, dcid: bytes):
    """(plaintext, authenticated) of the Initial packet buf[start:end] under the client keys.

    None when header protection already shows the keys do not fit. When the AEAD tag does not
    verify, the payload is still deciphered (AES-GCM is AES-CTR from counter 2 plus a tag) and
    returned with authenticated=False; the caller decides whether the plaintext is believable.
    """
    if end - pn_offset < _SAMPLE_SKIP_BYTES + _SAMPLE_BYTES:
        return None
    InvalidTag, Cipher, algorithms, modes, AESGCM = _aes()
    key, iv, hp = _client_keys(spec, dcid)
    sample_at = pn_offset + _SAMPLE_SKIP_BYTES
    sample = bytes(buf[sample_at:sample_at + _SAMPLE_BYTES])
    mask = Cipher(algorithms.AES(hp), modes.ECB()).encryptor().update(sample)

    # RFC 9001 section 5.4.1: long headers protect the low four bits of the first byte.
    first = buf[start] ^ (mask[0] & 0x0F)
    # RFC 9000 section 17.2: the reserved bits are zero once protection is removed; anything
    # else means these are not the sender's keys (a server Initial, or not QUIC), and the
    # AEAD call can be skipped.
    if first & 0x0C:
        return None
    pn_len = (first & 0x03) + 1
    header = bytearray(buf[start:pn_offset + pn_len])
    header[0] = first
    packet_number = 0
    for i in range(pn_len):
        at = pn_offset - start + i
        header[at] ^= mask[1 + i]
        packet_number = (packet_number << 8) | header[at]

    # RFC 9001 section 5.3: the nonce is the IV XORed with the packet number. A client's first
    # Initials have no acknowledged predecessor, so the truncated number is the full number.
    nonce = (int.from_bytes(iv, "big") ^ packet_number).to_bytes(12, "big")
    ciphertext = bytes(buf[pn_offset + pn_len:end])
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, bytes(header)), True
    except InvalidTag:
        pass
    # NIST SP 800-38D: with a 96-bit nonce the payload keystream starts at counter block 2.
    body = ciphertext[:-_AEAD_TAG_BYTES]
    decryptor = Cipher(algorithms.AES(key), modes.CTR(nonce + b"\x00\x00\x00\x02")).decryptor()
    return decryptor.update(body), False


def _skip_ack(plain: bytes, pos: int, end: int, ecn: bool) -> int:
    """Position after an ACK frame body starting at pos (RFC 9000 section 19.3); -1 if short."""
    for _ in range(3):  # Largest Acknowledged, ACK Delay, ACK Range Count
        value, pos = _varint(plain, pos, end)
        if pos < 0:
            return -1
    range_count = value
    _, pos = _varint(plain, pos, end)  # First ACK Range
    if pos < 0 or range_count > (end - pos) // 2:
        return -1
    for _ in range(2 * range_count + (3 if ecn else 0)):  # Gap/Length pairs, then ECN counts
        _, pos = _varint(plain, pos, end)
        if pos < 0:
            return -1
    return pos


def _collect_crypto(plain: bytes, dcid: bytes, out: list) -> bool:
    """Append (dcid, offset, data) for each CRYPTO frame in an Initial payload.

    Walks only the frames RFC 9000 section 12.4 permits in Initial packets; anything else ends
    the walk, because an unknown frame's length cannot be known. Returns True when every byte of
    the payload belonged to a permitted, well-formed frame.
    """
    end = len(plain)
    pos = 0
    while pos < end:
        # RFC 9000 section 12.4: frame types use their shortest encoding, so every permitted
        # type is one byte and a byte >= 0x40 is never one of them.
        frame_type = plain[pos]
        if frame_type == FRAME_PADDING:
            found = _NOT_PADDING.search(plain, pos)
            if found is None:
                return True
            pos = found.start()
        elif frame_type == FRAME_PING:
            pos += 1
        elif frame_type == FRAME_CRYPTO:
            offset, pos = _varint(plain, pos + 1, end)
            if pos < 0:
                return False
            length, pos = _varint(plain, pos, end)
            if pos < 0 or length > end - pos:
                return False
            out.append((dcid, offset, plain[pos:pos + length]))
            pos += length
        elif frame_type == FRAME_ACK or frame_type == FRAME_ACK_ECN:
            pos = _skip_ack(plain, pos + 1, end, frame_type == FRAME_ACK_ECN)
            if pos < 0:
                return False
        elif frame_type == FRAME_CONNECTION_CLOSE:
            _, pos = _varint(plain, pos + 1, end)  # Error Code
            if pos < 0:
                return False
            _, pos = _varint(plain, pos, end)  # Frame Type
            if pos < 0:
                return False
            reason_len, pos = _varint(plain, pos, end)
            if pos < 0 or reason_len > end - pos:
                return False
            pos += reason_len
        else:
            return False
    return True


def parse_quic_initial_crypto(datagram: bytes) -> list[tuple[bytes, int, bytes]] | None:
    """CRYPTO frames of the client Initial packets in one UDP datagram, as (dcid, offset, data).

    Walks coalesced long-header packets (RFC 9000 section 12.2) of versions 1 and 2, decrypts each
    Initial with the client keys of its Destination Connection ID and skips the other long-header
    packets by their Length. Returns None when no Initial in the datagram could be decrypted
    (not QUIC, another version, a server Initial, a truncated or corrupted datagram); an Initial
    without CRYPTO frames gives an empty list.

    A packet whose AEAD tag fails is still accepted when its deciphered payload is entirely
    well-formed Initial frames with CRYPTO data: Initial keys are public, so the tag is only an
    integrity check, and Maltrail's sensor (whose corpus has Initials with placeholder tags)
    reads such packets too.
    """
    if not isinstance(datagram, (bytes, bytearray)):
        return None
    end = len(datagram)
    pos = 0
    frames: list[tuple[bytes, int, bytes]] = []
    decrypted = False
    for _ in range(_MAX_COALESCED_PACKETS):
        # Form bit, 4-byte version, two connection ID lengths: 7 bytes before anything else.
        if end - pos < 7:
            break
        first = datagram[pos]
        if not first & 0x80:
            # A short-header packet runs to the end of the datagram (RFC 9000 section 12.2).
            break
        version = int.from_bytes(datagram[pos + 1:pos + 5], "big")
        spec = _VERSIONS.get(version)
        if spec is None:
            # Version Negotiation or a version whose layout past the connection IDs is unknown.
            break
        # The fixed bit (0x40) is not required: RFC 9287 lets endpoints grease it.
        packet_type = (first >> 4) & 0x03
        if packet_type == spec.retry_type:
            break  # Retry has no Length field and is never coalesced before another packet
        at = pos + 5
        dcid_len = datagram[at]
        if dcid_len > MAX_CID_BYTES or at + 1 + dcid_len >= end:
            break
        dcid = bytes(datagram[at + 1:at + 1 + dcid_len])
        at += 1 + dcid_len
        scid_len = datagram[at]
        if scid_len > MAX_CID_BYTES:
            break
        at += 1 + scid_len
        if packet_type == spec.initial_type:
            token_len, at = _varint(datagram, at, end)
            if at < 0 or token_len > end - at:
                break
            at += token_len
        length, at = _varint(datagram, at, end)
        if at < 0 or length > end - at:
            break  # truncated by the snap length: the AEAD tag is gone, nothing can be verified
        packet_end = at + length
        if packet_type == spec.initial_type:
            opened = _unprotect(datagram, pos, at, packet_end, spec, dcid)
            if opened is not None:
                plain, authenticated = opened
                if authenticated:
                    decrypted = True
                    _collect_crypto(plain, dcid, frames)
                else:
                    # Initial keys are public (RFC 9001 section 7), so a tag proves nothing about
                    # the sender; it only catches corruption and wrong keys. Without it, the
                    # plaintext is believed only if it is wholly well-formed frames and carries
                    # CRYPTO data, which random bytes from a wrong key practically never are.
                    found: list = []
                    if _collect_crypto(plain, dcid, found) and found:
                        decrypted = True
                        frames += found
        pos = packet_end
    return frames if decrypted else None


def _contiguous_prefix(frames, max_bytes: int) -> bytes:
    """The CRYPTO stream bytes from offset 0 up to the first gap, at most max_bytes of them."""
    stream = bytearray()
    for _, offset, data in sorted(frames, key=lambda frame: frame[1]):
        have = len(stream)
        if offset > have or have >= max_bytes:
            break
        tail_from = have - offset
        if tail_from < len(data):
            stream += data[tail_from:tail_from + max_bytes - have]
    return bytes(stream)


def _hello_finished(stream: bytes, max_bytes: int) -> bool:
    """True when waiting for more CRYPTO data cannot produce a name.

    That is when the stream does not start a ClientHello, when the whole ClientHello is already
    here, or when it could never fit in the per-flow budget.
    """
    if len(stream) < HANDSHAKE_HEADER_BYTES:
        return bool(stream) and stream[0] != HANDSHAKE_CLIENT_HELLO
    if stream[0] != HANDSHAKE_CLIENT_HELLO:
        return True
    hello_end = HANDSHAKE_HEADER_BYTES + int.from_bytes(stream[1:4], "big")
    return len(stream) >= hello_end or hello_end > max_bytes


def extract_quic_sni(datagram: bytes) -> str | None:
    """server_name of a ClientHello whose start, through the server_name, is in one datagram."""
    frames = parse_quic_initial_crypto(datagram)
    if not frames:
        return None
    # Coalesced packets share one Destination Connection ID (RFC 9000 section 12.2); frames of a
    # stray packet with another one are not part of this connection's stream.
    dcid = frames[0][0]
    stream = _contiguous_prefix([f for f in frames if f[0] == dcid], MAX_CRYPTO_BYTES)
    return parse_client_hello_sni(stream)


class _Assembly:
    """One ClientHello being put together: the contiguous prefix plus fragments beyond a gap."""

    __slots__ = ("started_s", "stream", "pending", "pending_bytes")

    def __init__(self, started_s: float):
        self.started_s = started_s
        self.stream = bytearray()
        self.pending: dict[int, bytes] = {}
        self.pending_bytes = 0


class QuicSniAssembler:
    """Reassembles client Initial CRYPTO data per (flow key, DCID) until the server_name is known.

    Chromium and others spread the ClientHello over several CRYPTO frames, packets and datagrams,
    and may reorder them. State is bounded: at most `max_flows` partial assemblies (a new one is
    refused when full and counted in `saturated`), at most `max_crypto_bytes` of CRYPTO data and
    `max_fragments` out-of-order fragments per assembly (excess frames counted in `overflowed`),
    and assemblies older than `timeout_s` of packet time are dropped (counted in `evicted`).

    A finished assembly leaves a small marker until its timeout so that the ClientHello's later
    fragments do not open a new, useless assembly; markers are capped at `max_flows` too.
    """

    def __init__(self, max_flows: int = 4096, timeout_s: float = 10.0,
                 max_crypto_bytes: int = MAX_CRYPTO_BYTES, max_fragments: int = 64):
        self.max_flows = max_flows
        self.timeout_s = timeout_s
        self.max_crypto_bytes = max_crypto_bytes
        self.max_fragments = max_fragments
        # Insertion order is creation order, so the oldest entries sit at the front.
        self._partial: dict[tuple, _Assembly] = {}
        self._finished: dict[tuple, float] = {}
        self.evicted = 0
        self.saturated = 0
        self.overflowed = 0

    def __len__(self) -> int:
        """Partial assemblies currently held."""
        return len(self._partial)

    @property
    def held_bytes(self) -> int:
        """CRYPTO bytes currently held across all partial assemblies."""
        return sum(len(e.stream) + e.pending_bytes for e in self._partial.values())

    def _expire(self, now_s: float) -> None:
        horizon = now_s - self.timeout_s
        partial = self._partial
        while partial:
            key = next(iter(partial))
            if partial[key].started_s >= horizon:
                break
            del partial[key]
            self.evicted += 1
        finished = self._finished
        while finished:
            key = next(iter(finished))
            if finished[key] >= horizon:
                break
            del finished[key]

    def _finish(self, key, now_s: float) -> None:
        self._partial.pop(key, None)
        if len(self._finished) >= self.max_flows:
            # Markers only save work; losing the oldest one costs at most one idle assembly.
            del self._finished[next(iter(self._finished))]
        self._finished[key] = now_s

    def _add(self, entry: _Assembly, offset: int, data: bytes) -> None:
        cap = self.max_crypto_bytes
        if offset >= cap:
            self.overflowed += 1
            return
        if offset + len(data) > cap:
            data = data[:cap - offset]
        have = len(entry.stream)
        if offset <= have:
            tail_from = have - offset
            if tail_from >= len(data):
                return  # a retransmission of bytes already held
            entry.stream += data[tail_from:]
            self._absorb(entry)
            self._trim(entry)
            return
        if (len(entry.pending) >= self.max_fragments
                or have + entry.pending_bytes + len(data) > cap):
            self.overflowed += 1
            return
        known = entry.pending.get(offset)
        if known is None or len(known) < len(data):
            entry.pending_bytes += len(data) - (0 if known is None else len(known))
            entry.pending[offset] = data

    def _trim(self, entry: _Assembly) -> None:
        """Keep prefix plus fragments within the byte budget, giving up the furthest fragments.

        Fragments were admitted against the prefix as it was then; once the prefix grows, the
        sum can pass the budget, and the prefix is what the name will be read from.
        """
        while entry.pending and len(entry.stream) + entry.pending_bytes > self.max_crypto_bytes:
            furthest = max(entry.pending)
            entry.pending_bytes -= len(entry.pending.pop(furthest))
            self.overflowed += 1

    @staticmethod
    def _absorb(entry: _Assembly) -> None:
        """Move pending fragments that now touch the prefix into it, in offset order."""
        if not entry.pending:
            return
        for offset in sorted(entry.pending):
            have = len(entry.stream)
            if offset > have:
                break
            data = entry.pending.pop(offset)
            entry.pending_bytes -= len(data)
            tail_from = have - offset
            if tail_from < len(data):
                entry.stream += data[tail_from:]

    def feed(self, flow_key, datagram: bytes, now_s: float) -> str | None:
        """Take one UDP payload of `flow_key` seen at packet time `now_s`.

        Returns the server_name once, when the CRYPTO bytes from offset 0 first cover the
        server_name extension; otherwise None.
        """
        frames = parse_quic_initial_crypto(datagram)
        if not frames:
            return None
        # Only client Initials move the clock that times assemblies out: what else a flow sends
        # (or whether a caller hands over non-QUIC datagrams at all) must not change the result.
        self._expire(now_s)
        dcid = frames[0][0]
        frames = [f for f in frames if f[0] == dcid]
        key = (flow_key, dcid)
        if key in self._finished:
            return None
        entry = self._partial.get(key)
        if entry is None:
            # Fast path: the datagram alone may carry the name, and then nothing is stored.
            stream = _contiguous_prefix(frames, self.max_crypto_bytes)
            name = parse_client_hello_sni(stream)
            complete = _hello_finished(stream, self.max_crypto_bytes)
            if name is not None or complete:
                if not complete:
                    self._finish(key, now_s)  # the rest of this ClientHello is still to come
                return name
            if len(self._partial) >= self.max_flows:
                self.saturated += 1
                return None
            entry = _Assembly(now_s)
            self._partial[key] = entry
        for _, offset, data in frames:
            self._add(entry, offset, data)
        stream = bytes(entry.stream)
        name = parse_client_hello_sni(stream)
        if name is not None or _hello_finished(stream, self.max_crypto_bytes):
            self._finish(key, now_s)
        return name
