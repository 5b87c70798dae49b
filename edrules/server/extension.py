"""The Jupyter Server extension: mounts the edrules pages (ours and every registered module's) and
shadows the Voila routes that would expose the dashboards folder raw."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from jupyter_server.utils import url_path_join
from tornado import web
from tornado.routing import HostMatches, Rule

from edrules.server.handlers import BaseHandler, registered_handlers


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "edrules.server.extension"}]


class Gone(BaseHandler):
    """Voila's raw file and contents routes, and its folder listing: nobody needs them here."""

    def prepare(self) -> None:  # type: ignore[override]
        raise web.HTTPError(404)


def _all_handlers() -> list[tuple[str, type]]:
    import edrules.server as pkg
    from edrules.server import account, login, oidc

    handlers: list[tuple[str, type]] = [*login.HANDLERS, *oidc.HANDLERS, *account.HANDLERS]
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("pages_"):
            mod = importlib.import_module(f"edrules.server.{info.name}")
            handlers.extend(getattr(mod, "HANDLERS", ()))
    handlers.extend(registered_handlers())
    return handlers


def _load_jupyter_server_extension(server_app: Any) -> None:
    web_app = server_app.web_app
    base = web_app.settings["base_url"]
    rules: list[tuple[str, type]] = [(url_path_join(base, p), h) for p, h in _all_handlers()]
    rules += [(url_path_join(base, p), Gone) for p in (r"/voila/files/(.*)", r"/voila/api/contents(.*)",
                                                      r"/voila/tree(.*)", r"/voila/?")]
    # Tornado tries host rules in order and Voila registered before us: put ours first so the
    # routes we shadow really are shadowed.
    from tornado.web import _ApplicationRouter  # type: ignore[attr-defined]

    web_app.default_router.rules.insert(0, Rule(HostMatches(".*$"), _ApplicationRouter(web_app, rules)))
    server_app.log.info("edrules: %d pages mounted", len(rules))
