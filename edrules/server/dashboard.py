"""Widgets the dashboards share (imported inside a Voila kernel)."""

from __future__ import annotations

from html import escape

from edrules.server.principal import current_principal


def nav_bar(base: str = "/"):
    """The server's header links for a Voila page: back to the dashboards, the account, sign out."""
    import ipywidgets as w

    me = current_principal()
    who = escape(me.address) if me else "not signed in"
    return w.HTML(f"<div style='background:#17324d;color:#fff;padding:.5rem 1rem;border-radius:6px;"
                  f"display:flex;gap:1.2rem;font-size:1rem'><b>edrules</b>"
                  f"<a style='color:#fff' href='{base}home'>Dashboards</a>"
                  f"<a style='color:#fff;margin-left:auto' href='{base}account'>{who}</a>"
                  f"<a style='color:#fff' href='{base}logout'>Sign out</a></div>")


def whoami_widget():
    """An HTML widget naming the signed-in Principal (proves the prelaunch hook reached the kernel)."""
    import ipywidgets as w

    me = current_principal()
    if me is None:
        return w.VBox([nav_bar(), w.HTML("<p id='edrules-whoami'>Nobody is signed in.</p>")])
    doms = ", ".join(sorted(me.domains))
    return w.VBox([nav_bar(), w.HTML(
        f"<div id='edrules-whoami' style='font-size:1.1rem'><p>Signed in as <b>{escape(me.address)}</b></p>"
        f"<p>Role: <b>{escape(me.label)}</b></p><p>Domains: {escape(doms)}</p></div>")])
