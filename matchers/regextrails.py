"""Regex (wildcard) domain trails: Maltrail's semantics, without running every regex per name.

Owns how regex trails are evaluated. Maltrail joins them into one alternation and searches each
name with it; the answer is the leftmost match, and at equal positions the trail listed first.
One alternation is slow in CPython (it defeats the literal-prefix optimisation: ~50 us per name
for the 27 regexes of the shipped set), so `RegexTrails` does the same search differently: every
pattern is compiled on its own, a literal each match must contain (or a set of alternatives, one
of which it must contain) is read off the pattern, and an Aho-Corasick scan of the name picks the
few patterns worth running. Patterns with no usable literal always run. `ReferenceRegexTrails`
is Maltrail's alternation, kept for differential tests.

Must not know about packets or where names come from.
"""

from __future__ import annotations

import re

import ahocorasick

MIN_LITERAL = 3
_META = set(".^$*+?{}[]()|\\")


def _skip_class(pattern: str, i: int) -> int:
    """Index just after the character class starting at pattern[i] == '['."""
    i += 1
    if i < len(pattern) and pattern[i] == "^":
        i += 1
    if i < len(pattern) and pattern[i] == "]":
        i += 1
    while i < len(pattern) and pattern[i] != "]":
        i += 2 if pattern[i] == "\\" else 1
    return i + 1


def _skip_quantifier(pattern: str, i: int) -> tuple[int, bool]:
    """If a quantifier starts at i, returns (index after it, whether it allows zero repeats)."""
    if i >= len(pattern):
        return i, False
    c = pattern[i]
    if c in "*?":
        j = i + 1
        return (j + 1 if j < len(pattern) and pattern[j] in "?+" else j), True
    if c == "+":
        j = i + 1
        return (j + 1 if j < len(pattern) and pattern[j] in "?+" else j), False
    if c == "{":
        m = re.match(r"\{(\d*)(,\d*)?\}[?+]?", pattern[i:])
        if m:
            return i + m.end(), (m.group(1) or "0") == "0"
    return i, False


def _split_alternatives(body: str) -> list[str]:
    """body split at its top-level '|' (not inside groups, classes or after an escape)."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            i += 2
            continue
        if c == "[":
            i = _skip_class(body, i)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            parts.append(body[start:i])
            start = i + 1
        i += 1
    parts.append(body[start:])
    return parts


def _literal_alternatives(body: str) -> list[str] | None:
    """'a|bc|d' made only of literal text -> ['a', 'bc', 'd']; anything else -> None."""
    out = []
    for alt in body.split("|"):
        text = []
        i = 0
        while i < len(alt):
            c = alt[i]
            if c == "\\" and i + 1 < len(alt) and not alt[i + 1].isalnum():
                text.append(alt[i + 1])
                i += 2
            elif c in _META:
                return None
            else:
                text.append(c)
                i += 1
        out.append("".join(text).lower())
    return out


def required_literals(pattern: str) -> list[str]:
    """Literals one of which every match of `pattern` contains; [] when none can be told.

    Looks at the top level only: the longest run of plain characters, or a top-level group that
    is an alternation of plain strings (e.g. "(alpha|beta)" -> ["alpha", "beta"]).
    """
    best: list[str] = []
    best_score = (False, 0)
    run: list[str] = []

    def consider(candidates: list[str]):
        # Prefer literals that are rare in names (not "www." or ".com"), then longer ones.
        nonlocal best, best_score
        shortest = min((len(c) for c in candidates), default=0)
        score = (not any(c in _WEAK_LITERALS for c in candidates), shortest)
        if shortest >= MIN_LITERAL and score > best_score:
            best, best_score = candidates, score

    def end_run():
        if run:
            consider(["".join(run).lower()])
            run.clear()

    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "|":
            return []  # a top-level alternation requires nothing in particular
        if c == "(":
            end_run()
            depth, j = 1, i + 1
            while j < n and depth:
                if pattern[j] == "\\":
                    j += 2
                    continue
                if pattern[j] == "[":
                    j = _skip_class(pattern, j)
                    continue
                depth += {"(": 1, ")": -1}.get(pattern[j], 0)
                j += 1
            body = pattern[i + 1:j - 1]
            after, optional = _skip_quantifier(pattern, j)
            if body.startswith("?:"):
                body = body[2:]
            if not optional and not body.startswith("?"):
                alts = _literal_alternatives(body)
                if alts:
                    consider(alts)
                else:
                    # Each alternative may still require something of its own: then one of
                    # those is required ("(abc[0-9]|de+fgh)" requires "abc" or "fgh").
                    per_alternative = [required_literals(alt) for alt in _split_alternatives(body)]
                    if per_alternative and all(per_alternative):
                        consider(sorted({lit for lits in per_alternative for lit in lits}))
            i = after
            continue
        if c == "[":
            end_run()
            i, _ = _skip_quantifier(pattern, _skip_class(pattern, i))
            continue
        if c == "\\":
            if i + 1 >= n:
                return []
            e = pattern[i + 1]
            if e in "dDwWsSbBAZ":  # a character class or an anchor: not a literal
                end_run()
                i, _ = _skip_quantifier(pattern, i + 2)
                continue
            if e.isalnum():  # \x2e, \u..., \N{...}, octal, backreferences: don't guess
                return []
            atom, i = e, i + 2
        elif c in ".^$":
            end_run()
            i, _ = _skip_quantifier(pattern, i + 1)
            continue
        elif c in "*+?{":
            return []  # a quantifier with nothing before it: leave such patterns alone
        else:
            atom, i = c, i + 1
        after, optional = _skip_quantifier(pattern, i)
        if after != i:
            # "ab+c": 'b' is still required once; "ab*c": it is not. Either way the run ends.
            if not optional:
                run.append(atom)
            end_run()
            i = after
        else:
            run.append(atom)
    end_run()
    return best


_WEAK_LITERALS = frozenset(("www.", ".com", ".net", ".org", "com", "net", "org", "http"))


def prefilter_literals(patterns: list[tuple[int, str]]) -> tuple[list[str], bool]:
    """(every literal some pattern requires, whether a pattern requires none): what a C prefilter
    needs to hand a name to RegexTrails.search exactly when a pattern might match it."""
    literals: set[str] = set()
    always = False
    for _, pattern in patterns:
        found = required_literals(pattern)
        if not found:
            always = True
        literals.update(found)
    return sorted(literals), always


class RegexTrails:
    """Maltrail's leftmost-first search over regex trails, prefiltered by required literals."""

    def __init__(self, patterns: list[tuple[int, str]]):
        self._compiled = [(trail_id, re.compile(p, re.IGNORECASE)) for trail_id, p in patterns]
        self._always: list[int] = []
        automaton = ahocorasick.Automaton()
        keyed: dict[str, set] = {}
        for index, (_, pattern) in enumerate(patterns):
            literals = required_literals(pattern)
            if not literals:
                self._always.append(index)
            for literal in literals:
                keyed.setdefault(literal, set()).add(index)
        for literal, indexes in keyed.items():
            automaton.add_word(literal, tuple(sorted(indexes)))
        self._automaton = None
        if keyed:
            automaton.make_automaton()
            self._automaton = automaton

    def __len__(self) -> int:
        return len(self._compiled)

    def search(self, name: str) -> tuple[int, int, int] | None:
        """(trail_id, start, end) of the leftmost match, earliest-listed trail on ties; or None."""
        if not self._compiled:
            return None
        candidates = set(self._always)
        if self._automaton is not None:
            for _end, indexes in self._automaton.iter(name.lower()):
                candidates.update(indexes)
        best = None
        for index in sorted(candidates):
            trail_id, regex = self._compiled[index]
            m = regex.search(name)
            if m is not None and (best is None or m.start() < best[1]):
                best = (trail_id, m.start(), m.end())
        return best


class ReferenceRegexTrails:
    """Maltrail's way: one alternation with a named group per trail."""

    def __init__(self, patterns: list[tuple[int, str]]):
        self._regex = None
        if patterns:
            self._regex = re.compile("|".join("(?P<g%d>%s)" % (i, p) for i, p in patterns), re.IGNORECASE)

    def __len__(self) -> int:
        return 0 if self._regex is None else self._regex.groups

    def search(self, name: str) -> tuple[int, int, int] | None:
        if self._regex is None:
            return None
        m = self._regex.search(name)
        if m is None:
            return None
        return int(m.lastgroup[1:]), m.start(), m.end()
