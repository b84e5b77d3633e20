"""workers.quic: Initial decryption (RFC 9001 / RFC 9369 vectors), real captures, the bounded
ClientHello reassembler, and fuzzing.

Real captures are read from ../shared with dpkt (never copied here); tests needing them skip with a
reason when ../shared is absent. Synthetic Initials are built by engine/sources/synthetic.py's protector,
checked against the RFC packets byte for byte before anything relies on it.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.sources import synthetic as g
from tests.conftest import MALTRAIL_CORPUS, REAL_CORPUS, need_shared
from tests.pcaps import udp_datagrams
from tests.test_corpus import console_script
from tests.test_engine import process_table
from workers.quic import (
    MAX_CRYPTO_BYTES,
    QUIC_V1,
    QUIC_V2,
    QuicSniAssembler,
    extract_quic_sni,
    initial_client_keys,
    parse_quic_initial_crypto,
)
from workers.tls import parse_client_hello_sni

FUZZ = settings(max_examples=400, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])

# --- RFC 9001 Appendix A and RFC 9369 Appendix A test vectors, reproduced as data ---

RFC_DCID = bytes.fromhex("8394c8f03e515708")

# The CRYPTO frame both RFCs put in the client Initial (ClientHello for example.com).
RFC_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
)
RFC_CLIENT_HELLO = RFC_CRYPTO_FRAME[4:]

# RFC 9001 A.1 client keys (key, iv, hp) and A.2 protected client Initial.
RFC9001_CLIENT_KEYS = ("1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c",
                       "9f50449e04a0e810283a1e9933adedd2")
RFC9001_CLIENT_INITIAL = bytes.fromhex(
    "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
    "d242b123dc9bd8bab936b47d92ec356c0bab7df5976d27cd449f63300099f399"
    "1c260ec4c60d17b31f8429157bb35a1282a643a8d2262cad67500cadb8e7378c"
    "8eb7539ec4d4905fed1bee1fc8aafba17c750e2c7ace01e6005f80fcb7df6212"
    "30c83711b39343fa028cea7f7fb5ff89eac2308249a02252155e2347b63d58c5"
    "457afd84d05dfffdb20392844ae812154682e9cf012f9021a6f0be17ddd0c208"
    "4dce25ff9b06cde535d0f920a2db1bf362c23e596d11a4f5a6cf3948838a3aec"
    "4e15daf8500a6ef69ec4e3feb6b1d98e610ac8b7ec3faf6ad760b7bad1db4ba3"
    "485e8a94dc250ae3fdb41ed15fb6a8e5eba0fc3dd60bc8e30c5c4287e53805db"
    "059ae0648db2f64264ed5e39be2e20d82df566da8dd5998ccabdae053060ae6c"
    "7b4378e846d29f37ed7b4ea9ec5d82e7961b7f25a9323851f681d582363aa5f8"
    "9937f5a67258bf63ad6f1a0b1d96dbd4faddfcefc5266ba6611722395c906556"
    "be52afe3f565636ad1b17d508b73d8743eeb524be22b3dcbc2c7468d54119c74"
    "68449a13d8e3b95811a198f3491de3e7fe942b330407abf82a4ed7c1b311663a"
    "c69890f4157015853d91e923037c227a33cdd5ec281ca3f79c44546b9d90ca00"
    "f064c99e3dd97911d39fe9c5d0b23a229a234cb36186c4819e8b9c5927726632"
    "291d6a418211cc2962e20fe47feb3edf330f2c603a9d48c0fcb5699dbfe58964"
    "25c5bac4aee82e57a85aaf4e2513e4f05796b07ba2ee47d80506f8d2c25e50fd"
    "14de71e6c418559302f939b0e1abd576f279c4b2e0feb85c1f28ff18f58891ff"
    "ef132eef2fa09346aee33c28eb130ff28f5b766953334113211996d20011a198"
    "e3fc433f9f2541010ae17c1bf202580f6047472fb36857fe843b19f5984009dd"
    "c324044e847a4f4a0ab34f719595de37252d6235365e9b84392b061085349d73"
    "203a4a13e96f5432ec0fd4a1ee65accdd5e3904df54c1da510b0ff20dcc0c77f"
    "cb2c0e0eb605cb0504db87632cf3d8b4dae6e705769d1de354270123cb11450e"
    "fc60ac47683d7b8d0f811365565fd98c4c8eb936bcab8d069fc33bd801b03ade"
    "a2e1fbc5aa463d08ca19896d2bf59a071b851e6c239052172f296bfb5e724047"
    "90a2181014f3b94a4e97d117b438130368cc39dbb2d198065ae3986547926cd2"
    "162f40a29f0c3c8745c0f50fba3852e566d44575c29d39a03f0cda721984b6f4"
    "40591f355e12d439ff150aab7613499dbd49adabc8676eef023b15b65bfc5ca0"
    "6948109f23f350db82123535eb8a7433bdabcb909271a6ecbcb58b936a88cd4e"
    "8f2e6ff5800175f113253d8fa9ca8885c2f552e657dc603f252e1a8e308f76f0"
    "be79e2fb8f5d5fbbe2e30ecadd220723c8c0aea8078cdfcb3868263ff8f09400"
    "54da48781893a7e49ad5aff4af300cd804a6b6279ab3ff3afb64491c85194aab"
    "760d58a606654f9f4400e8b38591356fbf6425aca26dc85244259ff2b19c41b9"
    "f96f3ca9ec1dde434da7d2d392b905ddf3d1f9af93d1af5950bd493f5aa731b4"
    "056df31bd267b6b90a079831aaf579be0a39013137aac6d404f518cfd4684064"
    "7e78bfe706ca4cf5e9c5453e9f7cfd2b8b4c8d169a44e55c88d4a9a7f9474241"
    "e221af44860018ab0856972e194cd934"
)
# RFC 9001 A.3: the server's Initial (server keys; must not decrypt as a client Initial).
RFC9001_SERVER_INITIAL = bytes.fromhex(
    "cf000000010008f067a5502a4262b5004075c0d95a482cd0991cd25b0aac406a"
    "5816b6394100f37a1c69797554780bb38cc5a99f5ede4cf73c3ec2493a1839b3"
    "dbcba3f6ea46c5b7684df3548e7ddeb9c3bf9c73cc3f3bded74b562bfb19fb84"
    "022f8ef4cdd93795d77d06edbb7aaf2f58891850abbdca3d20398c276456cbc4"
    "2158407dd074ee"
)

# RFC 9369 A.1 client keys and A.2 protected client Initial (QUIC version 2).
RFC9369_CLIENT_KEYS = ("8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f",
                       "45b95e15235d6f45a6b19cbcb0294ba9")
RFC9369_CLIENT_INITIAL = bytes.fromhex(
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc"
)
# RFC 9369 A.3: the server's version 2 Initial.
RFC9369_SERVER_INITIAL = bytes.fromhex(
    "dc6b3343cf0008f067a5502a4262b5004075d92faaf16f05d8a4398c47089698"
    "baeea26b91eb761d9b89237bbf87263017915358230035f7fd3945d88965cf17"
    "f9af6e16886c61bfc703106fbaf3cb4cfa52382dd16a393e42757507698075b2"
    "c984c707f0a0812d8cd5a6881eaf21ceda98f4bd23f6fe1a3e2c43edd9ce7ca8"
    "4bed8521e2e140"
)


# --- Initials built by engine/sources/synthetic.py's protector, checked against the RFC vectors above ---

_varint = g.varint
_crypto = g.crypto_frame


def _protect_initial(frames: bytes, dcid: bytes = RFC_DCID, version: int = QUIC_V1, pn: int = 2,
                     payload_bytes: int = 1162, scid: bytes = b"", token: bytes = b"") -> bytes:
    return g.protect_initial(frames, dcid, version, pn, payload_bytes, scid, token)


def _split_hello(points) -> list[bytes]:
    """The RFC ClientHello cut at `points`, one Initial datagram per piece."""
    edges = [0, *points, len(RFC_CLIENT_HELLO)]
    return [_protect_initial(_crypto(a, RFC_CLIENT_HELLO[a:b]), pn=i)
            for i, (a, b) in enumerate(zip(edges, edges[1:]))]


NAME_AT = RFC_CLIENT_HELLO.index(b"example.com")


# --- real captures ---

def _single_datagram_snis(path):
    return [n for n in (extract_quic_sni(d) for _, _, d in udp_datagrams(need_shared(path))) if n]


def _assembled_snis(path, datagrams=None):
    assembler = QuicSniAssembler()
    names = []
    for ts, key, datagram in datagrams or udp_datagrams(need_shared(path)):
        name = assembler.feed(key, datagram, ts)
        if name is not None:
            names.append(name)
    assert len(assembler) == 0
    return names


@functools.lru_cache(maxsize=None)
def _real_initials() -> tuple[bytes, ...]:
    found = [RFC9001_CLIENT_INITIAL, RFC9369_CLIENT_INITIAL, RFC9001_SERVER_INITIAL]
    if REAL_CORPUS.exists() and MALTRAIL_CORPUS.exists():
        for path in (REAL_CORPUS / "sv_quic-frag_input.pcap", REAL_CORPUS / "sv_quic-v2_input.pcap",
                     REAL_CORPUS / "zk_quic_chromium-115.0.5790.110-google-de-fragmented.pcap",
                     MALTRAIL_CORPUS / "quic_sni.pcap"):
            found += [d for _, _, d in udp_datagrams(path) if d[0] & 0x80][:4]
    return tuple(found)


# --- RFC vectors ---

def test_rfc_initial_keys():
    assert initial_client_keys(QUIC_V1, RFC_DCID) == tuple(bytes.fromhex(h) for h in RFC9001_CLIENT_KEYS)
    assert initial_client_keys(QUIC_V2, RFC_DCID) == tuple(bytes.fromhex(h) for h in RFC9369_CLIENT_KEYS)
    assert initial_client_keys(0xFF00001D, RFC_DCID) is None


@pytest.mark.parametrize("packet", [RFC9001_CLIENT_INITIAL, RFC9369_CLIENT_INITIAL], ids=["v1", "v2"])
def test_rfc_client_initial_decrypts_to_the_client_hello(packet):
    assert len(packet) == 1200
    assert parse_quic_initial_crypto(packet) == [(RFC_DCID, 0, RFC_CLIENT_HELLO)]
    assert parse_client_hello_sni(RFC_CLIENT_HELLO) == "example.com"
    assert extract_quic_sni(packet) == "example.com"
    assert QuicSniAssembler().feed(("c", 1, "s", 443), packet, 0.0) == "example.com"


def test_test_protector_reproduces_the_rfc_packets():
    assert _protect_initial(RFC_CRYPTO_FRAME) == RFC9001_CLIENT_INITIAL
    assert _protect_initial(RFC_CRYPTO_FRAME, version=QUIC_V2) == RFC9369_CLIENT_INITIAL


@pytest.mark.parametrize("packet", [RFC9001_SERVER_INITIAL, RFC9369_SERVER_INITIAL], ids=["v1", "v2"])
def test_server_initial_does_not_open_with_client_keys(packet):
    assert parse_quic_initial_crypto(packet) is None
    assert extract_quic_sni(packet) is None


def test_header_checks_refuse_before_decrypting():
    packet = RFC9001_CLIENT_INITIAL
    assert parse_quic_initial_crypto(b"") is None
    assert parse_quic_initial_crypto(b"\x40" + packet[1:]) is None                   # short header
    assert parse_quic_initial_crypto(packet[:1] + b"\x00\x00\x00\x00" + packet[5:]) is None  # VN
    assert parse_quic_initial_crypto(packet[:1] + b"\xff\x00\x00\x1d" + packet[5:]) is None  # draft-29
    assert parse_quic_initial_crypto(bytes([packet[0] | 0x20]) + packet[1:]) is None  # Handshake type
    assert parse_quic_initial_crypto(packet[:5] + b"\x15" + packet[6:]) is None       # 21-byte DCID
    assert parse_quic_initial_crypto("not bytes") is None


def test_truncated_datagram_gives_none():
    for cut in list(range(0, len(RFC9001_CLIENT_INITIAL), 41)) + [len(RFC9001_CLIENT_INITIAL) - 1]:
        assert parse_quic_initial_crypto(RFC9001_CLIENT_INITIAL[:cut]) is None, cut


def test_corrupted_ciphertext_is_refused():
    # The byte lands in the padding; deciphered it becomes 0x80, which no Initial frame type is.
    packet = bytearray(RFC9001_CLIENT_INITIAL)
    packet[1000] ^= 0x80
    assert parse_quic_initial_crypto(bytes(packet)) is None


def test_placeholder_tag_with_well_formed_frames_is_read():
    # Maltrail's corpus builds Initials with a fixed 0xaa tag; the frames inside are still whole.
    packet = RFC9001_CLIENT_INITIAL[:-16] + b"\xaa" * 16
    assert extract_quic_sni(packet) == "example.com"


def test_coalesced_packets_are_walked_by_length():
    handshake = b"\xe0" + QUIC_V1.to_bytes(4, "big") + b"\x08" + RFC_DCID + b"\x00" + b"\x40\x20" + bytes(32)
    short_header = b"\x40" + bytes(40)
    assert extract_quic_sni(RFC9001_CLIENT_INITIAL + handshake + short_header) == "example.com"
    assert extract_quic_sni(handshake + RFC9001_CLIENT_INITIAL) == "example.com"
    # Two coalesced Initials (a ClientHello in two packets): both are opened.
    first, second = _split_hello([NAME_AT + 4])
    assert extract_quic_sni(first + second) == "example.com"


def test_frames_allowed_in_initials_are_skipped_and_unknown_ones_stop_the_walk():
    ack = b"\x02" + _varint(5) + _varint(0) + _varint(1) + _varint(0) + _varint(1) + _varint(1)
    ack_ecn = b"\x03" + _varint(9) + _varint(3) + _varint(0) + _varint(2) + _varint(1) + _varint(1) + _varint(1)
    close = b"\x1c" + _varint(0x0a) + _varint(0x06) + _varint(3) + b"bye"
    a, b = NAME_AT + 2, NAME_AT + 40
    frames = (b"\x01" + bytes(7) + _crypto(b, RFC_CLIENT_HELLO[b:]) + ack + b"\x00\x00" + ack_ecn
              + _crypto(0, RFC_CLIENT_HELLO[:a]) + close + b"\x01" + _crypto(a, RFC_CLIENT_HELLO[a:b])
              + b"\x08\x00\x00" + _crypto(0, b"never read"))
    found = parse_quic_initial_crypto(_protect_initial(frames))
    assert [(off, data) for _, off, data in found] == [
        (b, RFC_CLIENT_HELLO[b:]), (0, RFC_CLIENT_HELLO[:a]), (a, RFC_CLIENT_HELLO[a:b])]
    assert extract_quic_sni(_protect_initial(frames)) == "example.com"


def test_initial_without_crypto_frames_gives_an_empty_list():
    assert parse_quic_initial_crypto(_protect_initial(b"\x01")) == []
    assert extract_quic_sni(_protect_initial(b"\x01")) is None


def test_token_and_source_cid_are_skipped():
    packet = _protect_initial(RFC_CRYPTO_FRAME, scid=b"\x11" * 20, token=b"t" * 70, dcid=b"\x22" * 20)
    assert extract_quic_sni(packet) == "example.com"


# --- the assembler ---

FLOW = ("192.0.2.1", 50000, "198.51.100.2", 443)


def test_name_across_datagrams_is_returned_once_as_soon_as_it_is_whole():
    # The name itself straddles the first two datagrams; the third is the rest of the hello.
    first, second, third = _split_hello([NAME_AT + 4, NAME_AT + 60])
    assert extract_quic_sni(first) is None and extract_quic_sni(second) is None
    assembler = QuicSniAssembler()
    assert assembler.feed(FLOW, first, 0.0) is None
    assert len(assembler) == 1
    assert assembler.feed(FLOW, second, 0.01) == "example.com"
    assert len(assembler) == 0
    assert assembler.feed(FLOW, third, 0.02) is None      # the tail opens no new assembly
    assert assembler.feed(FLOW, first, 0.03) is None      # a retransmission says nothing twice
    assert len(assembler) == 0 and assembler.held_bytes == 0


def test_reordered_and_overlapping_datagrams():
    pieces = _split_hello([20, NAME_AT - 5, NAME_AT + 30, 150])
    assembler = QuicSniAssembler()
    overlap = _protect_initial(_crypto(10, RFC_CLIENT_HELLO[10:NAME_AT]), pn=9)
    got = [assembler.feed(FLOW, d, 1.0) for d in (pieces[4], pieces[2], overlap, pieces[3], pieces[0])]
    assert got == [None, None, None, None, "example.com"]
    assert len(assembler) == 0


def test_flows_and_dcids_are_kept_apart():
    first, second = _split_hello([NAME_AT + 4])
    assembler = QuicSniAssembler()
    assert assembler.feed(FLOW, first, 0.0) is None
    assert assembler.feed(("other", 1, "x", 443), second, 0.0) is None
    other_dcid = _protect_initial(_crypto(NAME_AT + 4, RFC_CLIENT_HELLO[NAME_AT + 4:]), dcid=b"\x01" * 8)
    assert assembler.feed(FLOW, other_dcid, 0.0) is None
    assert len(assembler) == 3
    assert assembler.feed(FLOW, second, 0.0) == "example.com"


def test_partial_assembly_times_out_in_packet_time():
    first, second = _split_hello([NAME_AT + 4])
    assembler = QuicSniAssembler(timeout_s=10.0)
    assert assembler.feed(FLOW, first, 100.0) is None
    assert assembler.feed(FLOW, second, 110.5) is None
    assert assembler.evicted == 1
    assert len(assembler) == 1  # the late half now waits on its own, until it too expires
    # Only client Initials move the clock: other datagrams (whatever a caller hands over) don't.
    assert assembler.feed(FLOW, b"not quic", 121.0) is None
    assert assembler.evicted == 1 and len(assembler) == 1
    assert assembler.feed(("other", 1), first, 121.0) is None
    assert assembler.evicted == 2 and len(assembler) == 1  # the old half went; the new one waits


def test_flood_of_partial_flows_is_capped_and_exact_names_still_come_through():
    tail = _protect_initial(_crypto(NAME_AT + 4, RFC_CLIENT_HELLO[NAME_AT + 4:]))
    assembler = QuicSniAssembler(max_flows=16, timeout_s=10.0)
    for i in range(200):
        assert assembler.feed(("203.0.113.7", 1024 + i, "198.51.100.2", 443), tail, i * 0.001) is None
        assert len(assembler) <= 16
    assert len(assembler) == 16
    assert assembler.saturated == 200 - 16
    assert assembler.held_bytes <= 16 * MAX_CRYPTO_BYTES
    # A complete single-datagram Initial needs no state, so saturation does not hide it.
    assert assembler.feed(("203.0.113.8", 999, "198.51.100.2", 443), RFC9001_CLIENT_INITIAL, 0.5) == "example.com"
    # Later in packet time the flood has aged out and its entries are counted as evicted.
    assert assembler.feed(("203.0.113.7", 5000, "198.51.100.2", 443), tail, 30.0) is None
    assert assembler.evicted == 16
    assert len(assembler) == 1


def test_per_flow_crypto_bytes_and_fragments_are_capped():
    assembler = QuicSniAssembler(max_crypto_bytes=4096, max_fragments=4)
    chunk = bytes(500)
    for i in range(1, 12):  # out-of-order fragments far beyond the gap at offset 0
        assembler.feed(FLOW, _protect_initial(_crypto(i * 600, chunk), pn=i), 0.0)
    assert assembler.feed(FLOW, _protect_initial(_crypto(70000, chunk), pn=20), 0.0) is None
    assert assembler.held_bytes <= 4096
    assert assembler.overflowed >= 11 - 4
    # Overlapping fragments admitted while the prefix was short, then the prefix grows: the
    # furthest fragments are given up so the flow stays within its budget.
    other = ("c", 2, "s", 443)
    before = assembler.overflowed
    for i, offset in enumerate((3000, 3010, 3020, 3030)):
        assembler.feed(other, _protect_initial(_crypto(offset, bytes(1000)), pn=i), 0.0)
    assembler.feed(other, _protect_initial(_crypto(0, b"\x01\x00\x0f\x00" + bytes(1000)), pn=5), 0.0)
    assembler.feed(other, _protect_initial(_crypto(1004, bytes(1000)), pn=6), 0.0)
    assembler.feed(other, _protect_initial(_crypto(2004, bytes(990)), pn=7), 0.0)
    assert assembler.held_bytes <= 2 * 4096  # two flows, each within 4096
    assert assembler.overflowed == before + 3
    assert len(assembler) == 2
    # A ClientHello longer than the budget can never be finished: no assembly is kept for it.
    fresh = QuicSniAssembler(max_crypto_bytes=4096)
    huge = b"\x01" + (100000).to_bytes(3, "big") + bytes(300)
    assert fresh.feed(FLOW, _protect_initial(_crypto(0, huge)), 0.0) is None
    assert len(fresh) == 0


def test_complete_hello_without_server_name_keeps_no_state():
    hello = RFC_CLIENT_HELLO.replace(b"\x00\x00\x00\x10\x00\x0e\x00\x00\x0b", b"\x00\x17\x00\x10\x00\x0e\x00\x00\x0b")
    assert parse_client_hello_sni(hello) is None
    assembler = QuicSniAssembler()
    assert assembler.feed(FLOW, _protect_initial(_crypto(0, hello)), 0.0) is None
    assert len(assembler) == 0


# --- real captures ---

def test_ja4_quic_capture(real_corpus):
    names = _single_datagram_snis(real_corpus / "sv_ja4-quic_input.pcap")
    assert names == ["www.blogger.com", "socpuppet.blogspot.com", "apis.google.com", "www.blogger.com",
                     "apis.google.com", "www.google.com", "www.gstatic.com", "fonts.gstatic.com",
                     "4.bp.blogspot.com", "1.bp.blogspot.com", "2.bp.blogspot.com"]
    assert len(set(names)) == 9
    assert _assembled_snis(real_corpus / "sv_ja4-quic_input.pcap") == names


def test_firefox_win11_capture(real_corpus):
    path = real_corpus / "zk_quic_quic_win11_firefox_google.pcap"
    assert _single_datagram_snis(path) == ["www.google.com"]
    assert _assembled_snis(path) == ["www.google.com"]


def test_chromium_hello_in_shuffled_crypto_frames(real_corpus):
    path = real_corpus / "zk_quic_chromium-115.0.5790.110-google-de-fragmented.pcap"
    opened = [f for f in (parse_quic_initial_crypto(d) for _, _, d in udp_datagrams(path)) if f]
    assert len(opened) == 1
    offsets = [offset for _, offset, _ in opened[0]]
    # Chromium cuts its ClientHello into ten CRYPTO frames and sends them out of order, all in
    # the first Initial: sorting frames within the datagram is enough to read the name.
    assert len(offsets) == 10 and offsets != sorted(offsets)
    assert _single_datagram_snis(path) == ["www.google.de"]
    assert _assembled_snis(path) == ["www.google.de"]


def test_hello_split_across_two_initial_datagrams(real_corpus):
    path = real_corpus / "sv_quic-frag_input.pcap"
    datagrams = udp_datagrams(path)
    opened = [(i, f) for i, f in enumerate(parse_quic_initial_crypto(d) for _, _, d in datagrams) if f]
    assert [[(o, len(d)) for _, o, d in f] for _, f in opened] == [[(0, 1209)], [(1209, 645)]]
    assert _assembled_snis(path, datagrams) == ["token.services.mozilla.com"]
    # The second half first: the name comes out of reassembly, not the single-datagram path.
    (i, _), (j, _) = opened
    swapped = list(datagrams)
    swapped[i], swapped[j] = datagrams[j], datagrams[i]
    assembler = QuicSniAssembler()
    results = [assembler.feed(k, d, ts) for ts, k, d in swapped[:j + 1]]
    assert results[i] is None and results[j] == "token.services.mozilla.com"


def test_quic_v2_capture_has_no_server_name(real_corpus):
    path = real_corpus / "sv_quic-v2_input.pcap"  # DLT_NULL loopback
    datagrams = [d for _, _, d in udp_datagrams(path)]
    opened = [(d, f) for d, f in ((d, parse_quic_initial_crypto(d)) for d in datagrams) if f]
    assert len(opened) == 1
    datagram, frames = opened[0]
    assert int.from_bytes(datagram[1:5], "big") == QUIC_V2
    hello = frames[0][2]
    # A complete ClientHello (251 bytes) sent to 127.0.0.1: RFC 6066 forbids IP literals in
    # server_name, so this client sends none (its extensions are 5, 10, 11, 13, 65281, 23, 16,
    # 18, 43, 51, 57).
    assert [offset for _, offset, _ in frames] == [0]
    assert hello[0] == 1 and int.from_bytes(hello[1:4], "big") + 4 == len(hello) == 251
    assert b"\x00\x10\x00\x05\x00\x03\x02h3" in hello  # ALPN h3: it is the HTTP/3 handshake
    assert parse_client_hello_sni(hello) is None
    assert _single_datagram_snis(path) == []
    assert _assembled_snis(path) == []


def test_maltrail_quic_sni_capture(maltrail_corpus):
    path = maltrail_corpus / "quic_sni.pcap"
    (datagram,) = [d for _, _, d in udp_datagrams(path)]
    assert datagram[-16:] == b"\xaa" * 16  # the generator's placeholder AEAD tag
    assert extract_quic_sni(datagram) == "quic-evil.example"
    assert _assembled_snis(path) == ["quic-evil.example"]


_KNOWN_REAL_QUIC_NAMES = ("www.blogger.com", "socpuppet.blogspot.com", "apis.google.com", "www.google.com",
                          "www.gstatic.com", "fonts.gstatic.com", "4.bp.blogspot.com", "1.bp.blogspot.com",
                          "2.bp.blogspot.com", "www.google.de", "token.services.mozilla.com")


def test_every_udp_datagram_of_the_real_corpus_parses_without_raising(real_corpus):
    seen = 0
    for path in sorted(real_corpus.glob("*.pcap")):
        try:
            datagrams = udp_datagrams(path)
        except ValueError:
            continue  # pcapng: dpkt's pcap reader refuses it; decode tests cover those files
        assembler = QuicSniAssembler()
        for ts, key, datagram in datagrams:
            frames = parse_quic_initial_crypto(datagram)
            assert frames is None or isinstance(frames, list)
            assert assembler.feed(key, datagram, ts) in (None, *_KNOWN_REAL_QUIC_NAMES)
            seen += 1
    assert seen > 1000


# --- fuzzing: None or the right type, never an exception, bounded state ---

def _check(datagram: bytes, assembler: QuicSniAssembler) -> None:
    frames = parse_quic_initial_crypto(datagram)
    assert frames is None or all(
        type(d) is bytes and type(o) is int and type(c) is bytes for d, o, c in frames)
    for name in (extract_quic_sni(datagram), assembler.feed(FLOW, datagram, 0.0)):
        assert name is None or type(name) is str
    assert len(assembler) <= assembler.max_flows


@FUZZ
@given(st.binary(max_size=1500))
def test_fuzz_random_datagrams(data):
    assembler = QuicSniAssembler(max_flows=4)
    _check(data, assembler)
    # Past the cheap checks: a plausible v1/v2 Initial header in front of random bytes.
    _check(b"\xc3\x00\x00\x00\x01\x08" + RFC_DCID + b"\x00\x00\x44\x9e" + data, assembler)
    _check(b"\xd3\x6b\x33\x43\xcf\x08" + RFC_DCID + b"\x00\x00\x44\x9e" + data, assembler)


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
        else:
            out[at:at + len(blob)] = blob
    return bytes(out)


@FUZZ
@given(st.data())
def test_fuzz_mutated_real_initials(data):
    base = data.draw(st.sampled_from(_real_initials()))
    mutations = data.draw(st.lists(_MUTATION, min_size=1, max_size=4))
    # Mutating the header (first 64 bytes) reaches the length and connection ID checks.
    if data.draw(st.booleans()):
        mutations = [(kind, where % 64, blob) for kind, where, blob in mutations]
    _check(_mutate(base, mutations), QuicSniAssembler(max_flows=4))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 120), st.integers(0, 7)), max_size=12))
def test_fuzz_assembler_with_arbitrary_crypto_pieces(pieces):
    # Arbitrary (offset, length) pieces of the real hello over a few flows, any order, any time.
    assembler = QuicSniAssembler(max_flows=3, timeout_s=1.0, max_crypto_bytes=200, max_fragments=4)
    for i, (offset, length, flow) in enumerate(pieces):
        datagram = _protect_initial(_crypto(offset, RFC_CLIENT_HELLO[offset:offset + length]), pn=i)
        assert assembler.feed(("f", flow), datagram, i * 0.3) in (None, "example.com")
        assert len(assembler) <= 3
        assert assembler.held_bytes <= 3 * 200


def test_only_a_worker_that_decrypts_an_initial_loads_the_aes_library(tmp_path):
    """The engine's supervisor never maps cryptography's 15 MB library (it held 4.7-6.8 MB PSS of
    it); a worker imports it at its first Initial, after it has dropped its privileges when the
    engine runs as root, and still reports the name."""
    trails = tmp_path / "t.csv"
    trails.write_text("quic-evil.org,malware (test),(t)\n")
    fifo = tmp_path / "in.pcap"
    os.mkfifo(fifo)
    proc = subprocess.Popen([console_script(), "replay", "--trails", str(trails), "--log-dir", str(tmp_path / "log"),
                             "--workers", "1", str(fifo)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # The capture process starts last, and waits on the FIFO: the supervisor is past its start.
        deadline = time.monotonic() + 60
        while not any(parent == proc.pid and name == "mte-capture" for parent, name in process_table().values()):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        maps = Path("/proc/%d/maps" % proc.pid).read_text()
        assert "/cryptography/" not in maps and "site-packages" in maps
        with g.PcapWriter(str(fifo)) as w:
            w.write(1_700_000_000_000_000_000, g.udp_frame("10.0.0.1", "198.51.100.7", 50000, 443,
                                                            g.quic_initial("quic-evil.org")))
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "quic server names 1" in out and "events: 1 (SNI 1)" in out, out


def test_the_aes_library_is_imported_before_an_account_change_only_for_an_account_that_could_not_read_it():
    # each in a fresh interpreter: this one has imported the library already
    def run(readable: str) -> list[str]:
        code = ("import sys; from workers.quic import load_aes_unless_readable as load; "
                "from engine.processes.privileges import Account, readable_by; "
                "seen = []; print(load(lambda path: seen.append(path) or (%s)), 'cryptography' in sys.modules, "
                "any(p.endswith('/cryptography') for p in seen))" % readable)
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()

    # root reads the installed library, whatever its path: nothing imported early
    assert run("readable_by(path, Account('root', 0, 0))") == ["False", "False", "True"]
    assert run("True") == ["False", "False", "True"]
    # an account that could not: imported now, at the first place it could not read
    assert run("False") == ["True", "True", "True"]
