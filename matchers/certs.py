"""Certificate trails: a server certificate's SHA-1 digest -> the trail that lists it.

Owns the lookup over the artifact's `certs` section (sorted 20-byte digests, matchers/artifact.py)
and its plain-Python reference twin (a dict built from the trail table), for differential tests.

Why a Python binary search over the mapped section and not a C table: a certificate is looked up
once per TLS handshake of 1.2 or older (not once per packet), and ~20 slice comparisons over a
million digests cost a few microseconds; the section is read in place, so the pages are shared by
every worker and nothing is built at load.

Must not know about packets, TLS or files other than the artifact it is handed.
"""

from __future__ import annotations

from matchers.artifact import KIND_CERT, S_CERT_IDS, S_CERTS

DIGEST_BYTES = 20


class CertMatcher:
    """Binary search over the sorted digests of `artifact` (none when it has no `certs` section:
    an artifact built before certificate trails)."""

    def __init__(self, artifact):
        digests = artifact.section(S_CERTS) if artifact.has(S_CERTS) else memoryview(b"")
        ids = artifact.ids(S_CERT_IDS) if artifact.has(S_CERT_IDS) else memoryview(b"").cast("I")
        count = len(digests) // DIGEST_BYTES
        if len(digests) != count * DIGEST_BYTES or len(ids) != count:
            # A section that passed its checksum but disagrees with its twin is a builder's bug:
            # no lookup is better than a wrong trail id.
            digests, ids, count = memoryview(b""), memoryview(b"").cast("I"), 0
        self._digests = digests
        self._ids = ids
        self.count = count

    def __len__(self) -> int:
        return self.count

    def lookup(self, digest: bytes) -> int | None:
        """The trail id of the certificate whose SHA-1 is `digest` (20 bytes), or None."""
        if len(digest) != DIGEST_BYTES:
            return None
        view, lo, hi = self._digests, 0, self.count
        while lo < hi:
            mid = (lo + hi) >> 1
            at = mid * DIGEST_BYTES
            here = bytes(view[at:at + DIGEST_BYTES])  # memoryviews only compare for equality
            if here < digest:
                lo = mid + 1
            elif here == digest:
                return int(self._ids[mid])
            else:
                hi = mid
        return None


class ReferenceCertMatcher:
    """The reference: every certificate trail's key (40 hex digits) decoded into a dict."""

    def __init__(self, trails):
        self._by_digest = {bytes.fromhex(key): trail_id for trail_id, kind, key in trails if kind == KIND_CERT}
        self.count = len(self._by_digest)

    def __len__(self) -> int:
        return self.count

    def lookup(self, digest: bytes) -> int | None:
        return self._by_digest.get(bytes(digest))
