"""`GET /dashboard`: the dashboard's static files (HTML, JS, CSS, icon), packaged with switchllm
and served by the server itself. They hold no data: the page reads `GET /v1/stats` with the
client key the user types once (kept in the tab's sessionStorage), so the files need no key.

Every file is sent with a strict Content-Security-Policy (scripts, styles and fetches from this
origin only; no inline code, no eval, no framing) and is read once from the package.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
     b"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-cache"),
]

# URL path -> (file under switchllm/serving/static, content type)
ASSETS: dict[str, tuple[str, bytes]] = {
    "/dashboard": ("dashboard.html", b"text/html; charset=utf-8"),
    "/dashboard/": ("dashboard.html", b"text/html; charset=utf-8"),
    "/dashboard/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    "/dashboard/app.css": ("app.css", b"text/css; charset=utf-8"),
    "/dashboard/favicon.svg": ("favicon.svg", b"image/svg+xml"),
}


@cache
def _read(name: str) -> bytes:
    return (resources.files("switchllm.serving") / "static" / name).read_bytes()


def asset(path: str) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    """The body and headers of the dashboard file at URL `path`, or None if there is none."""
    entry = ASSETS.get(path)
    if entry is None:
        return None
    name, content_type = entry
    return _read(name), [(b"content-type", content_type), *SECURITY_HEADERS]
