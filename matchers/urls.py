"""URL trail matching with Maltrail's candidate forms.

Owns which strings an HTTP request is looked up as: Maltrail builds a short list of "checks"
from the path (the path without trailing slash, without query, up to the first '=', with
parameter values blanked, the last segment, the parent directory, ...), and each check is tried
bare (a path trail such as "/malicious-login.php") and prefixed with the host (a "host/path"
trail). The first hit wins. A `host/` trail (any request to that host) is tried last; Maltrail
reports such a hit as the trail alone ("185.98.87.185/", not the path requested), hence `whole_host`.

`NativeUrlTable` looks keys up in the artifact's hash table (C); `ReferenceUrlTable` in a dict.

Must not know about packets or HTTP parsing: it is handed the host, the lower-cased path and the
lower-cased, URL-decoded POST body (or None).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from matchers import _native
from matchers.artifact import KIND_PATH, KIND_URL, S_STRINGS, S_TRAILS, S_URLS

_PARAM_VALUES = re.compile(r"(\w+=)[^&=]+")


class UrlHit(NamedTuple):
    trail_id: int
    check: str          # the string that matched (a path, or host + path)
    post_form: bool     # matched the "path?body" form built from a POST body
    whole_host: bool = False    # matched as "host/", after every candidate missed


def url_checks(path: str, post_data: str | None) -> list[tuple[str, bool]]:
    """Maltrail's candidate list for `path` (already lower-case, '//' collapsed)."""
    checks = [(path.rstrip("/"), False)]
    if "?" in path:
        checks.append((path.split("?")[0].rstrip("/"), False))
        if "=" in path:
            checks.append((path[:path.index("=") + 1], False))
        blanked = _PARAM_VALUES.sub(r"\g<1>", path)
        if blanked not in [c for c, _ in checks]:
            checks.append((blanked, False))
            if blanked.count("/") > 1:
                checks.append(("/" + blanked.split("/")[-1], False))
    elif post_data:
        checks.append(("%s?%s" % (path, post_data), True))
    last = checks[-1][0]
    if last.count("/") > 1:
        checks.append((last[:last.rfind("/")], False))
        first = checks[0][0]
        checks.append((first[first.rfind("/"):].split("?")[0], False))
    return [(c, post) for c, post in checks if c]


class UrlMatcher:
    def __init__(self, table):
        self.table = table

    def match(self, host: str, path: str, post_data: str | None = None) -> UrlHit | None:
        for check, post in url_checks(path, post_data):
            for candidate in (check, host + check):
                trail_id = self.table.find(candidate)
                if trail_id is not None:
                    return UrlHit(trail_id, candidate, post)
        trail_id = self.table.find(host + "/")
        if trail_id is not None:
            return UrlHit(trail_id, host + "/", False, True)
        return None


class NativeUrlTable:
    def __init__(self, artifact):
        self._table = _native.Table(artifact.section(S_URLS), artifact.section(S_TRAILS),
                                    artifact.section(S_STRINGS))

    def find(self, key: str) -> int | None:
        trail_id = self._table.find(key.encode("utf-8", "surrogateescape"))
        return trail_id if trail_id >= 0 else None


class ReferenceUrlTable:
    def __init__(self, urls: dict[str, int]):
        self._urls = urls

    def find(self, key: str) -> int | None:
        return self._urls.get(key)


def load_url_matcher(artifact) -> UrlMatcher:
    return UrlMatcher(NativeUrlTable(artifact) if artifact.has(S_URLS) else ReferenceUrlTable({}))


def reference_url_matcher(trails) -> UrlMatcher:
    urls: dict[str, int] = {}
    for trail_id, kind, key in sorted(trails):
        if kind in (KIND_URL, KIND_PATH):
            urls.setdefault(key, trail_id)
    return UrlMatcher(ReferenceUrlTable(urls))
