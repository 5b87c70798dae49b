"""`edrules serve`: Jupyter Server + Voila behind the edrules login, locked down.

Wiring, all through Jupyter's own hooks (no hand-rolled HTTP server):
- `EdrulesIdentityProvider` (ServerApp.identity_provider_class): the user is whoever holds a
  signed-in edrules session cookie; its login/logout handlers are ours.
- `EdrulesAuthorizer` (ServerApp.authorizer_class): the whole Jupyter REST API (contents,
  kernels, sessions, kernelspecs, nbconvert, files, terminals, config ...) is refused to every
  role; the one permission granted is reading and opening the channels of a kernel, and only of
  a kernel that this same session started by opening a dashboard.
- Voila's prelaunch hook (`prelaunch_hook`): refuses a page to a role the notebook does not list
  in `metadata.edrules.roles`, records the opening session as the kernel's owner, and prepends a
  hidden cell that hands the signed-in Principal to the kernel (`current_principal()`).
- Kernels accept only widget/comm, kernel_info and shutdown messages: the browser cannot run
  code in them. Terminals are off. Idle kernels of abandoned pages are culled.
"""

from __future__ import annotations

import contextvars
import json
import os
from pathlib import Path
from typing import Any

import nbformat
from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.auth.identity import IdentityProvider, User
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado import web
from traitlets.config import Config

from edrules.server.accounts import sha
from edrules.server.handlers import SESSION_COOKIE, ServerContext
from edrules.server.login import LoginHandler, LogoutHandler
from edrules.server.principal import ROLES, Principal

# The session that is opening a dashboard right now (set by the prelaunch hook, read by the
# kernel manager a few awaits later in the same request task).
_OPENING: contextvars.ContextVar[str | None] = contextvars.ContextVar("edrules_opening_session", default=None)
KERNEL_OWNERS: dict[str, str] = {}  # kernel id -> session id hash

ALLOWED_KERNEL_MESSAGES = ["comm_open", "comm_msg", "comm_close", "comm_info_request",
                           "kernel_info_request", "shutdown_request"]


class EdrulesIdentityProvider(IdentityProvider):
    login_handler_class = LoginHandler
    logout_handler_class = LogoutHandler

    @property
    def auth_enabled(self) -> bool:
        return True

    def get_user(self, handler: web.RequestHandler) -> User | None:
        ctx: ServerContext | None = handler.settings.get("edrules")
        if ctx is None:
            return None
        s = ctx.accounts.session(handler.get_cookie(SESSION_COOKIE))
        if s is None or s.stage != "ok":
            return None
        return User(username=s.address, name=s.address, display_name=s.address)

    def get_handlers(self) -> list[tuple[str, object]]:
        return [(r"/login", self.login_handler_class), (r"/logout", self.logout_handler_class)]

    def validate_security(self, app: Any, ssl_options: dict | None = None) -> None:
        return None  # the base class warns about tokens we do not use


class EdrulesAuthorizer(Authorizer):
    """Nothing of Jupyter's REST API, except a dashboard's own kernel channels."""

    def is_authorized(self, handler: web.RequestHandler, user: User, action: str, resource: str) -> bool:
        # Voila's page reads its kernel's model and opens its channels; nothing else is granted.
        if resource != "kernels" or action not in ("execute", "read"):
            return False
        kernel_id = (getattr(handler, "path_kwargs", None) or {}).get("kernel_id") or getattr(handler, "kernel_id", None)
        sid = handler.get_cookie(SESSION_COOKIE)
        return bool(kernel_id and sid and KERNEL_OWNERS.get(kernel_id) == sha(sid))


class EdrulesKernelManager(AsyncMappingKernelManager):
    """Records which session opened each kernel (see EdrulesAuthorizer)."""

    async def start_kernel(self, *args: Any, **kwargs: Any) -> str:
        owner = _OPENING.get()
        if owner is None:
            raise web.HTTPError(403, "kernels start only for a dashboard page")
        kernel_id = await super().start_kernel(*args, **kwargs)
        KERNEL_OWNERS[kernel_id] = owner
        return kernel_id

    def remove_kernel(self, kernel_id: str) -> Any:
        KERNEL_OWNERS.pop(kernel_id, None)
        return super().remove_kernel(kernel_id)


def page_roles(notebook: Any) -> tuple[str, ...]:
    """The roles a dashboard admits: `metadata.edrules.roles`, all signed-in roles when absent."""
    roles = ((notebook.get("metadata") or {}).get("edrules") or {}).get("roles")
    return tuple(r for r in roles if r in ROLES) if roles else ROLES


def prelaunch_hook(req: web.RequestHandler, notebook: Any, cwd: str) -> Any:
    ctx: ServerContext = req.settings["edrules"]
    s = ctx.accounts.session(req.get_cookie(SESSION_COOKIE))
    acc = ctx.accounts.get(s.address) if s is not None and s.stage == "ok" else None
    if acc is None or acc.disabled:
        # Voila's own @authenticated already sent anonymous users to the login page; a session
        # revoked in between lands there too.
        base = req.settings.get("base_url", "/")
        req.redirect(f"{base}login")
        raise web.Finish()
    principal = acc.principal
    if principal.role not in page_roles(notebook):
        ctx.accounts.audit(principal.address, "page.refused", req.request.path, principal.role, req.request.remote_ip)
        raise web.HTTPError(403)
    _OPENING.set(sha(req.get_cookie(SESSION_COOKIE)))
    notebook.cells.insert(0, nbformat.v4.new_code_cell(principal_cell(principal)))
    return notebook


def principal_cell(principal: Principal) -> str:
    return ("import edrules.server.principal as _edrules_principal\n"
            f"_edrules_principal._install({json.dumps(principal.to_json())})\n"
            "del _edrules_principal")


def server_config(ctx: ServerContext, *, host: str, port: int) -> Config:
    c = Config()
    c.ServerApp.ip = host
    c.ServerApp.port = port
    c.ServerApp.port_retries = 50
    c.ServerApp.open_browser = False
    c.ServerApp.root_dir = str(ctx.dashboards)
    # With a support site (STATE/support.yaml), sign-ins land on /support: the quarantine
    # report, or the policy wizard at a domain admin's first login.
    c.ServerApp.default_url = "/support" if (ctx.state_dir / "support.yaml").exists() else "/home"
    c.ServerApp.identity_provider_class = EdrulesIdentityProvider
    c.ServerApp.authorizer_class = EdrulesAuthorizer
    c.ServerApp.kernel_manager_class = EdrulesKernelManager
    c.ServerApp.terminals_enabled = False
    c.ServerApp.allow_remote_access = False
    c.IdentityProvider.token = ""  # no Jupyter token URLs: only an edrules session signs in
    c.ServerApp.runtime_dir = str(ctx.state_dir / "jupyter-runtime")
    c.ServerApp.allow_root = True  # CI runs as root; nobody runs code in a kernel here anyway
    c.ServerApp.allow_unauthenticated_access = False
    c.ServerApp.cookie_secret_file = str(ctx.state_dir / "server-cookie-secret")
    c.ServerApp.jpserver_extensions = {
        "voila": True, "edrules.server.extension": True,
        # Installed in the same venv, never served: the lab, classic notebook and terminals.
        "jupyterlab": False, "notebook": False, "nbclassic": False, "notebook_shim": False,
        "jupyter_server_terminals": False, "jupyter_lsp": False, "jupyterlab_server": False,
    }
    c.ServerApp.tornado_settings = {
        "edrules": ctx,
        "xsrf_cookie_kwargs": {"secure": True, "httponly": False, "samesite": "Strict", "path": "/"},
        "headers": {"Content-Security-Policy": "frame-ancestors 'none'", "X-Frame-Options": "DENY"},
    }
    c.MappingKernelManager.allowed_message_types = ALLOWED_KERNEL_MESSAGES
    c.MappingKernelManager.cull_idle_timeout = 900
    c.MappingKernelManager.cull_interval = 60
    c.MappingKernelManager.cull_connected = False
    c.VoilaConfiguration.prelaunch_hook = prelaunch_hook
    c.VoilaConfiguration.show_tracebacks = False
    c.VoilaConfiguration.preheat_kernel = False
    return c


def bound_ports(server_app: Any) -> list[int]:
    """The ports the HTTP server really listens on (Jupyter may have moved off a busy one)."""
    ports = []
    for sock in getattr(server_app.http_server, "_sockets", {}).values():
        ports.append(sock.getsockname()[1])
    return sorted(set(ports)) or [server_app.port]


def run(ctx: ServerContext, *, host: str, port: int, echo=print) -> None:
    """Start the server, print the URL it actually listens on, serve until interrupted."""
    from jupyter_server.serverapp import ServerApp

    if ctx.db is not None:
        os.environ["EDRULES_DB"] = str(Path(ctx.db).resolve())  # kernels inherit it
    os.environ["EDRULES_STATE"] = str(ctx.state_dir.resolve())
    app = ServerApp(config=server_config(ctx, host=host, port=port))
    app.initialize(argv=[], find_extensions=False)
    actual = bound_ports(app)[0]
    shown = f"[{host}]" if ":" in host else host
    echo(f"edrules: serving the dashboards on http://{shown}:{actual}/ (Ctrl-C stops)")
    if actual != port and port:
        echo(f"edrules: port {port} was busy; listening on {actual} instead")
    app.start()
