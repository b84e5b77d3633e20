"""`check`: which trails match an indicator, and why, as the server's JSON answers.

Owns the two answer shapes: ours (`answer`, for GET /api/v1/check?q=) and Maltrail's (`maltrail_answer`,
for GET /check?q=). The lookups and their reasons are `trails check`'s own (trailsdb/check.py
`explain`, which reports each match with how it matched), so the server and the command line
can never disagree; provenance comes from the artifact (trailsdb/provenance.py).

Custom trails (reference "(custom)" or "(remote custom)", the operator's own lists) are answered
only to a caller allowed to see them (`reveal_custom`); to anyone else a match that only a custom
trail makes is reported as no match, as Maltrail's /check does: confirming membership is the
disclosure. Must not know HTTP or sessions.
"""

from __future__ import annotations

import time

from matchers.artifact import KIND_NAMES
from trailsdb.check import IndicatorError, explain, parse_indicator
from trailsdb.provenance import Provenance

__all__ = ["IndicatorError", "MAX_QUERY_CHARS", "answer", "maltrail_answer"]

# Maltrail's /check bound ("missing or oversized 'q'"): an exact lookup, not a search.
MAX_QUERY_CHARS = 256
CUSTOM_REFERENCES = ("(custom)", "(remote custom)")


def _iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _provenance(provenance: Provenance | None, trail_id: int) -> list[dict] | None:
    if provenance is None:
        return None
    return [{"source": seen.name, "source_kind": seen.kind, "first_listed": _iso(seen.first_s),
             "last_listed": _iso(seen.last_s), "listed_now": seen.last_s >= provenance.built_s}
            for seen in provenance.of(trail_id)]


def answer(matchers, query: str, reveal_custom: bool) -> dict:
    """Our answer: {"query", "shape", "matched", "matches": [{"how", "trail", "kind", "info",
    "reference", "provenance"}], "explanation": [lines], "generation"}. Raises IndicatorError
    for text that is no indicator (the message says why)."""
    if len(query) > MAX_QUERY_CHARS:
        raise IndicatorError("the query is longer than %d characters" % MAX_QUERY_CHARS)
    shape = parse_indicator(query)[0]
    found: list = []
    _matched, lines = explain(matchers, query, with_provenance=False, found=found)
    artifact = matchers.artifact
    provenance = Provenance.load(artifact) if found else None
    matches, hidden, seen = [], 0, set()
    for how, trail_id in found:
        if trail_id in seen:
            continue
        seen.add(trail_id)
        r = artifact.record(trail_id)
        if r.reference in CUSTOM_REFERENCES and not reveal_custom:
            hidden += 1
            continue
        matches.append({"how": how, "trail": r.key, "kind": KIND_NAMES.get(r.kind, "?"), "info": r.info,
                        "reference": r.reference, "provenance": _provenance(provenance, trail_id)})
    out = {"query": query, "shape": shape, "matched": bool(matches), "matches": matches,
           "generation": artifact.generation}
    # The lines name every candidate trail, custom ones included: only for who may see those.
    if reveal_custom or not hidden:
        out["explanation"] = lines
    return out


def maltrail_answer(matchers, query: str, reveal_custom: bool) -> dict:
    """Maltrail's /check answer: {"query", "found": true, "trail", "info", "reference",
    "confidence": null} for the first match, {"query", "found": false} otherwise, and "error"
    for a query that is missing, too long or no indicator. The query is lower-cased, as
    Maltrail's is."""
    query = (query or "").strip().lower()
    if not query or len(query) > MAX_QUERY_CHARS:
        return {"query": query[:MAX_QUERY_CHARS], "found": False, "error": "missing or oversized 'q'"}
    try:
        ours = answer(matchers, query, reveal_custom)
    except IndicatorError as exc:
        return {"query": query, "found": False, "error": str(exc)}
    if not ours["matches"]:
        return {"query": query, "found": False}
    first = ours["matches"][0]
    # No confidence sidecar here: null is Maltrail's "no opinion".
    return {"query": query, "found": True, "trail": first["trail"], "info": first["info"],
            "reference": first["reference"], "confidence": None}
