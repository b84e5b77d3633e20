"""GET /api/v1/export: the current view's rows as a download (docs/API.md, "Export").

Owns the export route's parameters (view, format, and the view's own: from, to, q; for threats
also sort and hidden), the three formats (CSV with a header line, a JSON array, and indicators:
the distinct trails, one per line) and their streaming with a cap. Rows are exactly what the
view's own endpoint answers (server/api/v1.py builds them: scope, the store's scope check, custom
trails masked, triage exclusions), fetched page by page and written as they come, so a large
export never sits whole in memory. CSV cells that a spreadsheet would read as a formula (they
begin with = + - @, a tab or a carriage return) are written with a leading apostrophe (OWASP's
CSV-injection advice): a trail or user agent is attacker-controlled text.

Must not know how events are stored or how a user logged in (the Api it is given answers).
"""

from __future__ import annotations

import csv
import io
import json
import re

from aiohttp import web

from server.store import EventQuery, QueryError, StoreError

EXPORT_MAX_EVENTS = 100_000     # rows of view=events in one export (X-Export-Cap says it)
EXPORT_MAX_THREATS = 10_000     # rows of view=threats (the threats list's own paging limit)
PAGE_EVENTS = 1000              # events fetched from the store per call
VIEWS = ("events", "threats")
FORMATS = {"csv": ("text/csv; charset=utf-8", "csv"), "json": ("application/json", "json"),
           "indicators": ("text/plain; charset=utf-8", "txt")}
EXPORT_PARAMS = ("view", "format", "from", "to", "q", "sort", "hidden")
THREAT_COLUMNS = ("src_ip", "trail", "events", "first_seen", "last_seen", "sensors", "severity", "type", "info",
                  "reference", "status", "assignee")     # the last two from the row's triage
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_LINE_BREAKS = re.compile(r"[\r\n\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def neutralised(value) -> str:
    """A CSV cell a spreadsheet shows as text: one that begins like a formula gets a leading '."""
    text = "" if value is None else ";".join(value) if isinstance(value, list) else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def indicator_line(trail: str) -> str:
    """A trail as one line of the indicators list (control characters, which would split or hide
    a line, become spaces)."""
    return _LINE_BREAKS.sub(" ", trail)


class Export:
    """The export route over one v1.Api (its store, pool, scope checks, masking and triage)."""

    def __init__(self, api):
        self.api = api

    async def handle(self, request: web.Request, user) -> web.StreamResponse:
        from server.api.v1 import ParamError, single_params, filter_terms, log, parse_range, threat_sort
        p = single_params(request, EXPORT_PARAMS)
        view = p.get("view", "threats")
        if view not in VIEWS:
            raise ParamError("view", "view=%s: one of %s" % (view[:32], ", ".join(VIEWS)))
        fmt = p.get("format", "csv")
        if fmt not in FORMATS:
            raise ParamError("format", "format=%s: one of %s" % (fmt[:32], ", ".join(FORMATS)))
        if view == "events" and ("sort" in p or "hidden" in p):
            raise ParamError("sort" if "sort" in p else "hidden", "sort and hidden belong to view=threats")
        rng = parse_range(p, self.api.now_s)
        terms = filter_terms(p)
        if view == "threats":
            threat_sort(p)
            _answer, rows = await self.api.threat_rows(user, p, rng, EXPORT_MAX_THREATS)
            if self.api.triage is not None:     # the rows as the threats view shows them
                self.api.triage.annotate(user, rows)
            pages = _once(rows)
            cap = EXPORT_MAX_THREATS
        else:
            pages = self._event_pages(user, rng, terms)
            cap = EXPORT_MAX_EVENTS
            first = await pages.__anext__()         # a store error is still an HTTP error here
            pages = _chain(first, pages)
        content_type, ext = FORMATS[fmt]
        name = "maltrail-%s-%s.%s" % (view, _day_text(rng.since_us), ext)
        response = web.StreamResponse(headers={
            "Content-Type": content_type, "Content-Disposition": 'attachment; filename="%s"' % name,
            "X-Export-Cap": str(cap), "Cache-Control": "no-store"})
        await response.prepare(request)
        writer = _WRITERS[fmt](view)
        try:
            async for rows in pages:
                chunk = writer.rows(rows)
                if chunk:
                    await response.write(chunk.encode())
        except (StoreError, QueryError) as exc:
            # The status line is sent: the download ends short, and the log says why.
            log("!", "an export for %s ended early: %s" % (user.name, exc))
            return response
        await response.write(writer.end().encode())
        await response.write_eof()
        return response

    async def _event_pages(self, user, rng, terms):
        """Lists of event rows (JSON form), newest first, until EXPORT_MAX_EVENTS or the end."""
        cursor, sent = None, 0
        while sent < EXPORT_MAX_EVENTS:
            query = EventQuery(rng, scope=user.scope.store_scope, terms=terms,
                               limit=min(PAGE_EVENTS, EXPORT_MAX_EVENTS - sent), cursor=cursor)
            page = await self.api._query(self.api.store.events, query)
            rows = self.api.event_rows(user, page.events)
            sent += len(page.events)
            yield rows
            if page.next_cursor is None or (not page.events and page.next_cursor == cursor):
                return
            cursor = page.next_cursor


async def _once(rows):
    yield rows


async def _chain(first, rest):
    yield first
    async for rows in rest:
        yield rows


def _day_text(ts_us: int) -> str:
    import time
    return time.strftime("%Y-%m-%d", time.gmtime(ts_us // 1_000_000))


class _Csv:
    def __init__(self, view: str):
        from server.api.v1 import EVENT_FIELDS
        self.columns = EVENT_FIELDS if view == "events" else THREAT_COLUMNS
        self.started = False

    def rows(self, rows: list[dict]) -> str:
        out = io.StringIO()
        w = csv.writer(out, lineterminator="\r\n")
        if not self.started:
            w.writerow(self.columns)
            self.started = True
        for row in rows:
            triage = row.get("triage") or {}
            w.writerow([neutralised(row[c] if c in row else triage.get(c)) for c in self.columns])
        return out.getvalue()

    def end(self) -> str:
        return "" if self.started else self.rows([])


class _Json:
    def __init__(self, view: str):
        self.first = True

    def rows(self, rows: list[dict]) -> str:
        if not rows:
            return ""
        text = ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
        head = "[\n" if self.first else ",\n"
        self.first = False
        return head + text

    def end(self) -> str:
        return "[]\n" if self.first else "\n]\n"


class _Indicators:
    def __init__(self, view: str):
        self.seen: set[str] = set()

    def rows(self, rows: list[dict]) -> str:
        lines = []
        for row in rows:
            line = indicator_line(row.get("trail") or "")
            if line.strip() and line not in self.seen:
                self.seen.add(line)
                lines.append(line + "\n")
        return "".join(lines)

    def end(self) -> str:
        return ""


_WRITERS = {"csv": _Csv, "json": _Json, "indicators": _Indicators}
