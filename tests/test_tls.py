"""workers.tls: ClientHello server_name parsing over built, RFC and real ClientHellos, and fuzzing.

Real captures are read from ../shared with dpkt (never copied here); tests needing them skip with a
reason when ../shared is absent.
"""

from __future__ import annotations

import functools

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import MALTRAIL_CORPUS, REAL_CORPUS, need_shared
from tests.pcaps import transport_payloads
from workers.tls import looks_like_tls_client_hello, parse_client_hello_sni, parse_tls_client_hello_sni

# RFC 9001 Appendix A.2: the CRYPTO frame (type 0x06, offset 0, length 0x40f1) carrying the
# client's ClientHello, whose server_name is example.com. A test vector, reproduced as data.
RFC9001_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
)
RFC9001_CLIENT_HELLO = RFC9001_CRYPTO_FRAME[4:]


# --- building ClientHellos field by field (RFC 8446 section 4.1.2, RFC 6066 section 3) ---

def _u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def _extension(ext_type: int, data: bytes) -> bytes:
    return _u16(ext_type) + _u16(len(data)) + data


def _server_name(name: bytes, name_type: int = 0) -> bytes:
    entry = bytes([name_type]) + _u16(len(name)) + name
    return _extension(0, _u16(len(entry)) + entry)


def _client_hello(extensions: bytes | None, session_id: bytes = b"\x55" * 32,
                  suites: bytes = b"\x13\x01\x13\x02", compression: bytes = b"\x00") -> bytes:
    body = (b"\x03\x03" + bytes(range(32)) + bytes([len(session_id)]) + session_id
            + _u16(len(suites)) + suites + bytes([len(compression)]) + compression)
    if extensions is not None:
        body += _u16(len(extensions)) + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


def _record(fragment: bytes, version: bytes = b"\x03\x01") -> bytes:
    return b"\x16" + version + _u16(len(fragment)) + fragment


SUPPORTED_VERSIONS = _extension(43, b"\x02\x03\x04")
ALPN_H2 = _extension(16, b"\x00\x03\x02h2")


# --- real captures ---

def _hello_payloads(path):
    """TCP payloads that start a TLS ClientHello record."""
    return [p for _, _, p in transport_payloads(need_shared(path), dpkt.tcp.TCP) if looks_like_tls_client_hello(p)]


def _snis(path):
    return [parse_tls_client_hello_sni(p) for p in _hello_payloads(path)]


@functools.lru_cache(maxsize=None)
def _real_hellos() -> tuple[bytes, ...]:
    found = [_record(RFC9001_CLIENT_HELLO)]
    if REAL_CORPUS.exists() and MALTRAIL_CORPUS.exists():
        for path in (MALTRAIL_CORPUS / "tls_sni.pcap", REAL_CORPUS / "sv_linktype-228_flow-test-01.pcap",
                     REAL_CORPUS / "sv_community-id-ipv6_input.pcap", REAL_CORPUS / "zk_tls_tls13-ech.pcap"):
            found += _hello_payloads(path)
    return tuple(found)


# --- built and RFC ClientHellos ---

def test_rfc9001_client_hello_names_example_com():
    assert parse_client_hello_sni(RFC9001_CLIENT_HELLO) == "example.com"
    assert parse_tls_client_hello_sni(_record(RFC9001_CLIENT_HELLO)) == "example.com"


def test_server_name_after_other_extensions():
    hello = _client_hello(SUPPORTED_VERSIONS + ALPN_H2 + _server_name(b"evil.example") + ALPN_H2)
    assert parse_tls_client_hello_sni(_record(hello)) == "evil.example"
    assert parse_client_hello_sni(hello) == "evil.example"


@pytest.mark.parametrize("version", [b"\x03\x00", b"\x03\x01", b"\x03\x03", b"\x03\x04"])
def test_any_record_version_up_to_tls13(version):
    assert parse_tls_client_hello_sni(_record(_client_hello(_server_name(b"a.example")), version)) == "a.example"


def test_name_is_lowered_and_loses_one_trailing_dot():
    assert parse_client_hello_sni(_client_hello(_server_name(b"WWW.Evil.Example."))) == "www.evil.example"


@pytest.mark.parametrize("name", [b"", b".", b"caf\xc3\xa9.example", b"a b.example", b"evil\r\n.example",
                                  b"x\x00.example", b"a" * 256])
def test_unusable_names_give_none(name):
    assert parse_client_hello_sni(_client_hello(_server_name(name))) is None


def test_first_host_name_entry_wins_and_other_name_types_are_skipped():
    entries = b"\x01" + _u16(3) + b"abc" + b"\x00" + _u16(9) + b"a.example" + b"\x00" + _u16(9) + b"b.example"
    hello = _client_hello(_extension(0, _u16(len(entries)) + entries))
    assert parse_client_hello_sni(hello) == "a.example"


@pytest.mark.parametrize("hello", [
    _client_hello(None),                                   # TLS 1.0-1.2 may omit extensions
    _client_hello(SUPPORTED_VERSIONS + ALPN_H2),           # extensions, but no server_name
    _client_hello(_server_name(b"a.example"), session_id=b"\x00" * 33),  # session id over 32
    _client_hello(_server_name(b"a.example"), suites=b""),                # no cipher suite
    _client_hello(_server_name(b"a.example"), suites=b"\x13\x01\x13"),    # odd suites length
    _client_hello(_server_name(b"a.example"), compression=b""),          # no compression method
    b"\x02" + _client_hello(_server_name(b"a.example"))[1:],             # a ServerHello
])
def test_no_name_or_malformed_gives_none(hello):
    assert parse_client_hello_sni(hello) is None
    assert parse_tls_client_hello_sni(_record(hello)) is None


def test_overlong_server_name_list_gives_none():
    entry = b"\x00" + _u16(9) + b"a.example"
    hello = _client_hello(_extension(0, _u16(len(entry) + 5) + entry))
    assert parse_client_hello_sni(hello) is None


def test_every_truncation_gives_the_name_exactly_when_the_extension_is_whole():
    extensions = SUPPORTED_VERSIONS + _server_name(b"cut.example") + ALPN_H2 + _extension(21, bytes(300))
    payload = _record(_client_hello(extensions))
    sni_end = payload.index(b"cut.example") + len(b"cut.example")
    for cut in range(len(payload) + 1):
        expected = "cut.example" if cut >= sni_end else None
        assert parse_tls_client_hello_sni(payload[:cut]) == expected, cut
        assert parse_client_hello_sni(payload[5:cut]) == (expected if cut > 5 else None), cut


def test_hello_fragmented_over_records_in_one_payload():
    hello = _client_hello(ALPN_H2 + ALPN_H2 + _server_name(b"split.example"))
    at = hello.index(b"split") + 2  # the name itself straddles the record boundary
    payload = _record(hello[:at]) + _record(hello[at:], b"\x03\x03")
    assert parse_tls_client_hello_sni(payload) == "split.example"
    # The second record missing: the name is not whole.
    assert parse_tls_client_hello_sni(_record(hello[:at])) is None


def test_record_layer_checks():
    hello = _client_hello(_server_name(b"a.example"))
    assert looks_like_tls_client_hello(_record(hello))
    assert not looks_like_tls_client_hello(b"\x17" + _record(hello)[1:])  # application data
    assert not looks_like_tls_client_hello(b"\x16\x03\x05" + _record(hello)[3:])
    assert not looks_like_tls_client_hello(b"\x16\x03\x01\x00")
    assert not looks_like_tls_client_hello(b"")
    assert parse_tls_client_hello_sni(b"\x16\x03\x01\x00\x00" + hello) is None  # empty record
    assert parse_tls_client_hello_sni(b"\x16\x03\x01\x40\x01" + hello) is None  # record over 2^14
    assert parse_tls_client_hello_sni(b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n") is None
    assert parse_tls_client_hello_sni("not bytes") is None
    assert parse_client_hello_sni(None) is None


# --- real captures ---

def test_maltrail_tls_sni_capture(maltrail_corpus):
    # The first ClientHello is the trail; the second is the clean control the case carries.
    assert _snis(maltrail_corpus / "tls_sni.pcap") == ["tls-evil.example", "clean.example"]


def test_raw_ipv4_linktype_228(real_corpus):
    assert _snis(real_corpus / "sv_linktype-228_flow-test-01.pcap") == ["www.perdu.com"]


def test_ipv6_client_hellos(real_corpus):
    assert _snis(real_corpus / "sv_community-id-ipv6_input.pcap") == ["dns.google", "ipv6.google.com"]


def test_ech_outer_server_name(real_corpus):
    # Both ClientHellos of the capture carry the ECH outer name; the inner one is encrypted.
    assert set(_snis(real_corpus / "zk_tls_tls13-ech.pcap")) == {"cloudflare-ech.com"}


def test_client_hello_split_over_small_tcp_segments(real_corpus):
    path = real_corpus / "sv_tls_tls-client-hello-frag-01_dump_mtu300.pcap"
    payloads = [p for _, _, p in transport_payloads(path, dpkt.tcp.TCP)]
    starts = [p for p in payloads if looks_like_tls_client_hello(p)]
    assert len(starts) == 1
    first = starts[0]
    record_len = int.from_bytes(first[3:5], "big")
    assert record_len + 5 > len(first)  # the record really continues in later segments
    # This client puts server_name early enough that the first segment holds it whole.
    assert parse_tls_client_hello_sni(first) == "www.google.com"
    for cut in range(len(first) + 1):
        assert parse_tls_client_hello_sni(first[:cut]) in (None, "www.google.com")
    for payload in payloads:  # continuation segments, server records: never a name, never raises
        if payload is not first:
            assert parse_tls_client_hello_sni(payload) is None


def test_every_tcp_payload_of_the_real_corpus_parses_without_raising(real_corpus):
    seen = 0
    for path in sorted(real_corpus.glob("*.pcap")):
        try:
            payloads = transport_payloads(path, dpkt.tcp.TCP)
        except ValueError:
            continue  # pcapng: dpkt's pcap reader refuses it; decode tests cover those files
        for _, _, payload in payloads:
            name = parse_tls_client_hello_sni(payload)
            assert name is None or (isinstance(name, str) and name)
            assert parse_client_hello_sni(payload) is None or payload[0] == 1
            seen += 1
    assert seen > 1000


# --- fuzzing: returns a str or None, never raises ---

def _check(data: bytes) -> None:
    for result in (parse_tls_client_hello_sni(data), parse_client_hello_sni(data)):
        assert result is None or (type(result) is str and result == result.lower() and result.isascii())
    assert looks_like_tls_client_hello(data) in (True, False)


FUZZ = settings(max_examples=500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2048))
def test_fuzz_random_bytes(data):
    _check(data)
    _check(b"\x16\x03\x01" + data)
    _check(b"\x01" + data)


_MUTATION = st.tuples(st.sampled_from(("flip", "truncate", "insert", "delete", "set")),
                      st.integers(min_value=0, max_value=1 << 16), st.binary(min_size=1, max_size=8))


def _mutate(data: bytes, mutations) -> bytes:
    out = bytearray(data)
    for kind, where, blob in mutations:
        if not out:
            break
        at = where % len(out)
        if kind == "flip":
            out[at] ^= 1 << (blob[0] & 7)
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = blob
        elif kind == "delete":
            del out[at:at + len(blob)]
        else:  # overwrite, aimed at length fields as often as anywhere else
            out[at:at + len(blob)] = blob
    return bytes(out)


@FUZZ
@given(st.data())
def test_fuzz_mutated_real_client_hellos(data):
    payload = data.draw(st.sampled_from(_real_hellos()))
    mutated = _mutate(payload, data.draw(st.lists(_MUTATION, min_size=1, max_size=6)))
    _check(mutated)
    _check(mutated[5:])
