"""HTML for the sign-in and account pages: one small layout, every value escaped.

No template engine: the pages are few and short, and `html.escape` on every interpolated
value (via `e()`) is easy to review.
"""

from __future__ import annotations

from html import escape

CSS = """
*{box-sizing:border-box} body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:#1d2430;background:#eef1f5} header{background:#17324d;color:#fff;padding:.7rem 1.5rem;display:flex;
align-items:center;gap:1rem} header a{color:#fff;text-decoration:none} header .brand{font-weight:700;font-size:1.15rem}
header nav{margin-left:auto;display:flex;gap:1rem;align-items:center} header form{margin:0}
header button{background:none;border:1px solid #9db3c9;color:#fff;padding:.25rem .7rem;border-radius:4px;cursor:pointer}
main{max-width:880px;margin:2rem auto;padding:0 1rem} .card{background:#fff;border-radius:8px;padding:1.5rem 1.8rem;
box-shadow:0 1px 3px rgba(0,0,0,.12);margin-bottom:1.3rem} .narrow{max-width:460px;margin-left:auto;margin-right:auto}
h1{font-size:1.5rem;margin:0 0 1rem} h2{font-size:1.15rem;margin:0 0 .8rem} label{display:block;font-weight:600;margin:.8rem 0 .25rem}
input[type=text],input[type=email],input[type=password],input[type=number]{width:100%;padding:.55rem .7rem;font-size:1rem;
border:1px solid #b7c0cc;border-radius:5px} input.code{font-size:1.4rem;letter-spacing:.25em;font-family:ui-monospace,monospace}
button,.button{display:inline-block;background:#1f6feb;color:#fff;border:0;border-radius:5px;padding:.6rem 1.2rem;font-size:1rem;
cursor:pointer;margin-top:1rem;text-decoration:none} button.secondary,.button.secondary{background:#e4e9f0;color:#1d2430}
button.danger{background:#c62828} .error{background:#fdecea;color:#8a1c1c;border:1px solid #f5c2c0;padding:.7rem 1rem;border-radius:5px}
.notice{background:#e8f4ea;color:#1e5b2a;border:1px solid #bfe0c6;padding:.7rem 1rem;border-radius:5px}
.muted{color:#5b6675;font-size:.92rem} table{border-collapse:collapse;width:100%} th,td{text-align:left;padding:.45rem .5rem;
border-bottom:1px solid #e3e7ed;vertical-align:top} th{font-size:.85rem;color:#5b6675;text-transform:uppercase;letter-spacing:.03em}
.secret{font-family:ui-monospace,monospace;font-size:1.25rem;letter-spacing:.08em;background:#f4f6f9;padding:.6rem .8rem;
border-radius:5px;display:inline-block} .codes{columns:2;font-family:ui-monospace,monospace;font-size:1.1rem}
.or{margin:1.2rem 0 .4rem;color:#5b6675;text-align:center} .providers form{display:inline} .qr{display:block;margin:.5rem 0}
details summary{cursor:pointer;color:#1f6feb;margin-top:.6rem} .pill{display:inline-block;background:#e4ecf7;color:#17324d;
border-radius:999px;padding:.05rem .6rem;font-size:.85rem;margin-right:.3rem} ul.pages{padding-left:1.2rem} ul.pages li{margin:.35rem 0}
"""


def e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def layout(title: str, body: str, *, who: str | None = None, csrf: str = "", xsrf: str = "",
           base: str = "/") -> str:
    nav = ""
    if who:
        nav = (f'<nav><a href="{e(base)}">Dashboards</a><a href="{e(base)}account">{e(who)}</a>'
               f'<form method="post" action="{e(base)}logout">{hidden(csrf, xsrf)}'
               '<button type="submit">Sign out</button></form></nav>')
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width,initial-scale=1">'
            f"<title>{e(title)} · edrules</title><style>{CSS}</style></head><body>"
            f'<header><a class=brand href="{e(base)}">edrules</a><span class=muted style="color:#c9d6e3">mail '
            f"security workbench</span>{nav}</header><main>{body}</main></body></html>")


def hidden(csrf: str = "", xsrf: str = "") -> str:
    """The two anti-forgery fields: tornado's `_xsrf` (double-submit cookie, every POST) and the
    session-bound `csrf` (POSTs made while signed in)."""
    out = f'<input type="hidden" name="_xsrf" value="{e(xsrf)}">' if xsrf else ""
    if csrf:
        out += f'<input type="hidden" name="csrf" value="{e(csrf)}">'
    return out


def message(error: str | None = None, notice: str | None = None) -> str:
    out = f'<p class="error" role="alert">{e(error)}</p>' if error else ""
    return out + (f'<p class="notice" role="status">{e(notice)}</p>' if notice else "")


def table(headers: list[str], rows: list[list[str]]) -> str:
    """`rows` cells are HTML already (callers escape with e())."""
    head = "".join(f"<th>{e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
