"""User-agent trail matching: does a User-Agent header contain one of the listed patterns.

Owns the semantics: case-insensitive substring match; when several patterns occur, the trail with
the lowest id wins (deterministic, and the same whatever the scan order). `UserAgentMatcher` scans
once with an Aho-Corasick automaton over all patterns (the right tool for thousands of patterns
against one string); `ReferenceUserAgentMatcher` tries each pattern in turn.

Must not know about HTTP parsing or packets.
"""

from __future__ import annotations

import ahocorasick

from matchers.artifact import KIND_UA, S_UA


class UserAgentMatcher:
    def __init__(self, patterns: list[tuple[int, str]]):
        self._automaton = None
        if patterns:
            automaton = ahocorasick.Automaton()
            best: dict[str, int] = {}
            for trail_id, pattern in patterns:
                pattern = pattern.lower()
                if pattern and (pattern not in best or trail_id < best[pattern]):
                    best[pattern] = trail_id
            for pattern, trail_id in best.items():
                automaton.add_word(pattern, trail_id)
            automaton.make_automaton()
            self._automaton = automaton

    def match(self, user_agent: str) -> int | None:
        if self._automaton is None or not user_agent:
            return None
        found = None
        for _end, trail_id in self._automaton.iter(user_agent.lower()):
            if found is None or trail_id < found:
                found = trail_id
        return found


class ReferenceUserAgentMatcher:
    def __init__(self, patterns: list[tuple[int, str]]):
        self._patterns = sorted((trail_id, p.lower()) for trail_id, p in patterns if p)

    def match(self, user_agent: str) -> int | None:
        if not user_agent:
            return None
        ua = user_agent.lower()
        for trail_id, pattern in self._patterns:
            if pattern in ua:
                return trail_id
        return None


def load_ua_matcher(artifact) -> UserAgentMatcher:
    return UserAgentMatcher(artifact.pairs(S_UA))


def reference_ua_matcher(trails) -> ReferenceUserAgentMatcher:
    return ReferenceUserAgentMatcher([(i, key) for i, kind, key in trails if kind == KIND_UA])
