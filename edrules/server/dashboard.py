"""Widgets the dashboards share (imported inside a Voila kernel)."""

from __future__ import annotations

from html import escape

from edrules.server.principal import current_principal


def whoami_widget():
    """An HTML widget naming the signed-in Principal (proves the prelaunch hook reached the kernel)."""
    import ipywidgets as w

    me = current_principal()
    if me is None:
        return w.HTML("<p id='edrules-whoami'>Nobody is signed in.</p>")
    doms = ", ".join(sorted(me.domains))
    return w.HTML(f"<div id='edrules-whoami' style='font-size:1.1rem'><p>Signed in as <b>{escape(me.address)}</b></p>"
                  f"<p>Role: <b>{escape(me.label)}</b></p><p>Domains: {escape(doms)}</p></div>")
