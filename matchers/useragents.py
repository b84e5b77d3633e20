"""User-agent trail matching: does a User-Agent header hold one of the listed patterns.

Owns the semantics. Two kinds of pattern: a substring (KIND_UA, `ua:TEXT`, case-insensitive) and
a regular expression (KIND_UA_REGEX, `ua-re:PATTERN`, searched case-insensitively anywhere in the
header: the form Maltrail's misc/ua.txt list is written in). Of the patterns that occur, the trail
with the lowest id wins (deterministic, whatever the scan order), and the answer says where in the
header that pattern matched (Maltrail writes the matched part and the rest around it).

`UserAgentMatcher` scans once with an Aho-Corasick automaton over the substrings (the right tool
for thousands of patterns against one string) and once with one alternation of every regular
expression; only a header that alternation matches has the expressions tried one by one, in id
order, to find the lowest (a suspicious header is rare; a clean one costs the two scans).
`ReferenceUserAgentMatcher` tries every pattern in id order.

Must not know about HTTP parsing or packets.
"""

from __future__ import annotations

import re

import ahocorasick

from matchers.artifact import KIND_UA, KIND_UA_REGEX, S_UA

_ALWAYS = re.compile("")
Span = tuple[int, int, int]  # (trail id, start, end) of the winning pattern in the header


class UserAgentMatcher:
    def __init__(self, patterns: list[tuple[int, str]], regexes: list[tuple[int, str]] = ()):
        self._automaton = None
        if patterns:
            automaton = ahocorasick.Automaton()
            best: dict[str, int] = {}
            for trail_id, pattern in patterns:
                pattern = pattern.lower()
                if pattern and (pattern not in best or trail_id < best[pattern]):
                    best[pattern] = trail_id
            for pattern, trail_id in best.items():
                automaton.add_word(pattern, (trail_id, len(pattern)))
            automaton.make_automaton()
            self._automaton = automaton
        self._regexes = sorted((trail_id, re.compile(p, re.IGNORECASE)) for trail_id, p in regexes)
        self._any_regex = None
        if self._regexes:
            try:
                self._any_regex = re.compile("|".join("(?:%s)" % p.pattern for _i, p in self._regexes), re.IGNORECASE)
            except re.error:  # two patterns naming the same group: no prefilter, each is tried
                self._any_regex = _ALWAYS

    def match_span(self, user_agent: str) -> Span | None:
        if not user_agent:
            return None
        found: Span | None = None
        if self._automaton is not None:
            for end, (trail_id, length) in self._automaton.iter(user_agent.lower()):
                if found is None or trail_id < found[0]:
                    found = (trail_id, end + 1 - length, end + 1)
        if self._any_regex is not None and self._any_regex.search(user_agent):
            for trail_id, regex in self._regexes:
                if found is not None and trail_id > found[0]:
                    break
                m = regex.search(user_agent)
                if m:
                    found = (trail_id, m.start(), m.end())
                    break
        return found

    def match(self, user_agent: str) -> int | None:
        found = self.match_span(user_agent)
        return None if found is None else found[0]


class ReferenceUserAgentMatcher:
    def __init__(self, patterns: list[tuple[int, str]], regexes: list[tuple[int, str]] = ()):
        self._patterns = sorted([(trail_id, p.lower(), None) for trail_id, p in patterns if p]
                                + [(trail_id, "", re.compile(p, re.IGNORECASE)) for trail_id, p in regexes])

    def match_span(self, user_agent: str) -> Span | None:
        if not user_agent:
            return None
        ua = user_agent.lower()
        for trail_id, pattern, regex in self._patterns:
            if regex is None:
                i = ua.find(pattern)
                if i >= 0:
                    return trail_id, i, i + len(pattern)
            else:
                m = regex.search(user_agent)
                if m:
                    return trail_id, m.start(), m.end()
        return None

    def match(self, user_agent: str) -> int | None:
        found = self.match_span(user_agent)
        return None if found is None else found[0]


def _split(pairs, kind_of) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    substrings, regexes = [], []
    for trail_id, key in pairs:
        (regexes if kind_of(trail_id) == KIND_UA_REGEX else substrings).append((trail_id, key))
    return substrings, regexes


def load_ua_matcher(artifact) -> UserAgentMatcher:
    return UserAgentMatcher(*_split(artifact.pairs(S_UA), artifact.kind))


def reference_ua_matcher(trails) -> ReferenceUserAgentMatcher:
    return ReferenceUserAgentMatcher([(i, key) for i, kind, key in trails if kind == KIND_UA],
                                     [(i, key) for i, kind, key in trails if kind == KIND_UA_REGEX])
