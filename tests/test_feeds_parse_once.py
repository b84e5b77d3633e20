"""An update parses each fetched body once (trailsdb/feeds/refresh.py ParsedRows): the rows its
judging parse made are what the build reads, not a second parse of the stored copy.

What this file establishes, over a real local feed server (tests/test_feeds_fetch.py's
FeedServer, HTTP) and a real state directory:
1. the rows handed out for a body accepted now are the rows it was judged by: a stored copy that
   changes on disk after the update (another writer, damage) does not change them;
2. both paths, the judged rows read back and the reference (every stored body parsed again), give
   every declared feed and a custom list the same rows in the same order and the same counts,
   including a feed whose labels hold a tab (which the row file cannot carry: that body is
   parsed again instead);
3. artifacts built from either path (trailsdb.compile.build, as trailsdb/update.py calls it)
   hold the same trails and answer `trails check` (trailsdb.check.explain) the same for every
   row's trail and for names that are not listed.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from matchers import Artifact, TrailMatchers
from tests.test_feeds import NOW_S
from tests.test_feeds_fetch import FeedServer, pki, run, serve, settings_for  # noqa: F401 (fixtures)
from trailsdb.check import IndicatorError, explain
from trailsdb.compile import build
from trailsdb.feeds import FEEDS, Feed, custom_url_feeds
from trailsdb.feeds.parsers import parse
from trailsdb.sources import CUSTOM, Source


@pytest.fixture
def server():
    s = FeedServer()
    yield s
    s.close()


def _tabbed_feed(server: FeedServer) -> Feed:
    """An HTML scrape whose labels hold a tab and a line end inside a cell."""
    page = ("<html><body><table>"
            "<tr><td>tab-one.example</td><td>kit\tone</td></tr>"
            "<tr><td>tab-two.example</td><td>plain label</td></tr>"
            "<tr><td>192.0.2.55</td><td>two\nlines</td></tr>"
            "</table></body></html>").encode()
    server.route("/feeds/tabbed.html", body=page)
    return Feed(name="tabbed", url=server.url("/feeds/tabbed.html"), format="html", info="scraped",
                reference="tabbed.example", marker="<table>",
                options={"pattern": r"<td>(?P<trail>[^<]+)</td><td>(?P<label>[^<]+)</td>"})


def _all_feeds(server: FeedServer) -> list[Feed]:
    feeds = [serve(server, feed, seed=7, rows=30)[0] for feed in FEEDS]
    custom = custom_url_feeds(["http://unused/custom.txt"])[0]
    feeds.append(serve(server, custom, seed=7, rows=30)[0])
    feeds.append(_tabbed_feed(server))
    return feeds


def _rows(result) -> tuple[list, Counter]:
    stats = Counter()
    return list(result.rows(stats)), stats


def _answer(matchers, indicator: str):
    """What `trails check` says about `indicator` (an indicator it cannot read: that error)."""
    try:
        return explain(matchers, indicator, with_provenance=True)
    except IndicatorError as exc:
        return str(exc)


def test_the_rows_of_an_accepted_body_are_the_rows_it_was_judged_by(tmp_path, server, pki):
    feed = custom_url_feeds(["http://unused/custom.txt"])[0]
    server.route("/feeds/list.txt", body=b"judged-one.example\njudged-two.example\n198.51.100.7\n")
    feed = dataclasses.replace(feed, url=server.url("/feeds/list.txt"))
    [result] = run(tmp_path / "feeds", settings_for(None, pki), [feed])
    assert result.status.state == "fresh" and result.status.rows == 3
    # The stored copy changes after the update judged it: what the update hands to the build
    # is still what it judged (3 rows), not a body nobody checked.
    (tmp_path / "feeds" / ("%s.body" % feed.name)).write_bytes(b"other.example\n")
    assert [r.trail for r in result.rows()] == ["judged-one.example", "judged-two.example", "198.51.100.7"]
    assert [r.trail for r in result.rows()] == ["judged-one.example", "judged-two.example", "198.51.100.7"]


def test_the_judged_rows_and_a_second_parse_give_the_same_rows_and_artifact(tmp_path, server, pki):
    feeds = _all_feeds(server)
    settings = settings_for(None, pki)
    once = run(tmp_path / "once", settings, feeds)
    again = run(tmp_path / "again", settings, feeds, keep_parsed=False)
    assert [r.status.state for r in once] == ["fresh"] * len(feeds)
    assert all(r._parsed is not None for r in once if r.feed.name != "tabbed")
    # the tab in a label: that body is parsed again rather than carried in the row file
    assert [r._parsed for r in once if r.feed.name == "tabbed"] == [None]
    assert all(r._parsed is None for r in again)

    for a, b in zip(once, again):
        rows_a, stats_a = _rows(a)
        rows_b, stats_b = _rows(b)
        assert rows_a == rows_b, a.feed.name
        assert stats_a == stats_b, a.feed.name
        assert len(rows_a) == a.status.rows == b.status.rows > 0, a.feed.name
        # and the reference: the stored body parsed as the format says
        with open(tmp_path / "again" / ("%s.body" % b.feed.name), "rb") as f:
            assert rows_b == list(parse(b.feed, f, Counter(), NOW_S)), b.feed.name
    tabbed = {r.trail: r.info for r in once[-1].rows()}
    assert tabbed == {"tab-one.example": "kit\tone", "tab-two.example": "plain label", "192.0.2.55": "two\nlines"}

    answers = []
    for results, name in ((once, "once"), (again, "again")):
        output = str(tmp_path / name / "trails.mtdb")
        catalog = [(r.feed.name, r.rows()) for r in results if r.feed.format != "custom"]
        remote = [Source(r.feed.name, CUSTOM, r.rows()) for r in results if r.feed.format == "custom"]
        report = build(remote, output, feeds=catalog, ip_minimum_feeds=1, now_s=int(NOW_S))
        artifact = Artifact.open(output)
        try:
            matchers = TrailMatchers.load(artifact)
            indicators = sorted({row.trail for r in results for row in r.rows()}) + [
                "not-listed.example", "203.0.113.254"]
            answers.append((report.trails, artifact.trail_count,
                            [_answer(matchers, i) for i in indicators]))
        finally:
            artifact.close()
    assert answers[0][0] > 100
    assert sum(1 for answer in answers[0][2] if isinstance(answer, tuple) and answer[0]) > 100
    assert answers[0] == answers[1]
