"""The web UI's files: GET / (the app's page) and GET /static/<name> (its scripts and style sheet).

Owns serving the package data under server/web/: a fixed allow-list of file names, each with its
content type, read into memory once, when the module is imported (before the privilege drop; about
70 KB, and the files belong to the installed package, so they cannot change under a running
server), each with a strong ETag (a SHA-256 prefix of the bytes). `Cache-Control: no-cache` on
every file: the names carry no version (there is no build step to stamp them), so a browser
must revalidate, and the ETag makes that a 304 without a body. A name outside the allow-list is a 404, whatever the file system holds, so no
path a client writes ever reaches open().

No session is needed to load the page: the app asks GET /api/v1/session and shows its login form
when nobody is logged in; every figure it then shows comes from the API, under the session's
scope (the UI adds no check the server lacks). The security headers (the strict CSP:
script-src 'self', style-src 'self'; nosniff; frame denial) are put on these answers by
server/auth/web.py like on every other.

Must not know the API's routes, users or the store.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from aiohttp import web

__all__ = ["FILES", "UiFiles", "setup"]

# name -> content type. index.html is served as "/"; the rest under /static/.
FILES = {
    "index.html": "text/html; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "filters.js": "text/javascript; charset=utf-8",
    "views.js": "text/javascript; charset=utf-8",
    "drawer.js": "text/javascript; charset=utf-8",
}
CACHE_CONTROL = "no-cache"


def load_files(package: str = "server", folder: str = "web") -> dict[str, tuple[bytes, str, str]]:
    """The allow-listed files of server/web/: name -> (bytes, content type, ETag)."""
    files = {}
    root = resources.files(package).joinpath(folder)
    for name, content_type in FILES.items():
        body = root.joinpath(name).read_bytes()
        files[name] = (body, content_type, '"%s"' % hashlib.sha256(body).hexdigest()[:32])
    return files


# Read when the module is imported: the server imports every module of its package before it
# drops privileges (server/process.py _import_before_drop), and an interpreter installed under
# /root is unreadable to the unprivileged account afterwards.
_LOADED = load_files()


class UiFiles:
    """Answers for the allow-listed files."""

    def __init__(self, files: dict[str, tuple[bytes, str, str]] | None = None):
        self.files = _LOADED if files is None else files

    def answer(self, request: web.Request, name: str) -> web.Response:
        found = self.files.get(name)
        if found is None:
            return web.Response(status=404, text="not found\n", content_type="text/plain")
        body, content_type, etag = found
        headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
        asked = request.headers.get("If-None-Match", "")
        if etag in (tag.strip() for tag in asked.split(",")) or asked.strip() == "*":
            return web.Response(status=304, headers=headers)
        response = web.Response(body=body, headers=headers)
        response.content_type, _, charset = content_type.partition("; charset=")
        if charset:
            response.charset = charset
        return response

    async def index(self, request: web.Request) -> web.Response:
        return self.answer(request, "index.html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "index.html":        # only as "/", so the page has one address
            return web.Response(status=404, text="not found\n", content_type="text/plain")
        return self.answer(request, name)

    def setup(self, app: web.Application) -> None:
        app.router.add_get("/", self.index)
        app.router.add_get("/static/{name}", self.static)


def setup(app: web.Application, server) -> UiFiles:
    """Mount the UI on the server's app (server/process.py calls this beside the API's setup)."""
    files = UiFiles()
    files.setup(app)
    server.ui = files
    return files
