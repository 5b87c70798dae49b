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


class OwnKernelShutdown(BaseHandler):
    """Voila's page asks to shut its kernel down on unload; only the session that opened it may."""

    def check_session_csrf(self) -> None:
        return None  # sent by Voila's script with the _xsrf header, without our form field

    @web.authenticated
    async def post(self, kernel_id: str) -> None:
        from edrules.server.accounts import sha
        from edrules.server.app import KERNEL_OWNERS

        sid = self.get_cookie("edrules_session")
        if not sid or KERNEL_OWNERS.get(kernel_id) != sha(sid):
            raise web.HTTPError(404)
        await self.kernel_manager.shutdown_kernel(kernel_id)
        self.set_status(204)
        self.finish()


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
    rules.append((url_path_join(base, r"/voila/api/shutdown/(?P<kernel_id>[0-9a-f-]+)"), OwnKernelShutdown))
    rules += [(url_path_join(base, p), Gone) for p in (r"/voila/files/(.*)", r"/voila/api/contents(.*)",
                                                      r"/voila/tree(.*)", r"/voila/?")]
    # Tornado tries host rules in order and Voila registered before us: put ours first so the
    # routes we shadow really are shadowed.
    from tornado.web import _ApplicationRouter  # type: ignore[attr-defined]

    web_app.default_router.rules.insert(0, Rule(HostMatches(".*$"), _ApplicationRouter(web_app, rules)))
    server_app.log.info("edrules: %d pages mounted", len(rules))
