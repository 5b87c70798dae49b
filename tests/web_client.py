"""A tiny HTTP client for the server tests that plays a browser's cookie jar.

httpx's jar (http.cookiejar) never sends a `Secure` cookie over plain http, but browsers treat
http://127.0.0.1 as a secure context and do; the server sets every cookie Secure, so the tests
keep the jar themselves (and check the flags on the way).
"""

from __future__ import annotations

import re
from http.cookies import SimpleCookie

import httpx


class Browserish:
    def __init__(self, base: str):
        self.base = base.rstrip("/")
        self.cookies: dict[str, str] = {}
        self.set_cookie_headers: list[str] = []
        self.http = httpx.Client(follow_redirects=False, timeout=30)

    def close(self) -> None:
        self.http.close()

    def _absorb(self, r: httpx.Response) -> None:
        for raw in r.headers.get_list("set-cookie"):
            self.set_cookie_headers.append(raw)
            c = SimpleCookie()
            c.load(raw)
            for name, morsel in c.items():
                if morsel["max-age"] == "0" or "1970" in (morsel["expires"] or "") or morsel.value in ("", '""'):
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value

    def request(self, method: str, path: str, *, follow: bool = True, **kw) -> httpx.Response:
        url = path if path.startswith("http") else self.base + path
        for _ in range(10):
            headers = dict(kw.pop("headers", {}) or {})
            if self.cookies:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            r = self.http.request(method, url, headers=headers, **kw)
            self._absorb(r)
            if not follow or r.status_code not in (301, 302, 303, 307):
                return r
            url = str(r.next_request.url) if r.next_request else r.headers["location"]
            method, kw = "GET", {}
        return r

    def get(self, path: str, **kw) -> httpx.Response:
        return self.request("GET", path, **kw)

    def form_fields(self, html: str) -> dict[str, str]:
        """The hidden anti-forgery fields of the first form on a page."""
        out = {}
        for name in ("_xsrf", "csrf"):
            m = re.search(rf'name="{name}" value="([^"]*)"', html)
            if m:
                out[name] = m.group(1).replace("&amp;", "&")
        return out

    def post(self, path: str, data: dict[str, str] | None = None, *, page: str | None = None, follow: bool = True,
             **kw) -> httpx.Response:
        """POST a form; `page` is the HTML the form came from (its hidden fields are sent too)."""
        fields = self.form_fields(page) if page is not None else {}
        if "_xsrf" not in fields and "_xsrf" in self.cookies:
            fields["_xsrf"] = self.cookies["_xsrf"]
        return self.request("POST", path, data={**fields, **(data or {})}, follow=follow, **kw)
