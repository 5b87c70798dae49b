"""Web access to the dashboards: `edrules serve` (Jupyter Server + Voila) behind edrules accounts.

For pages and dashboards built on this server:

- `Principal(address, role, domains)` and `can_access(principal, recipient)` (edrules.server.principal)
  are the whole authorisation model: ask `can_access` for every recipient you show or act on.
- Tornado pages / POST endpoints: subclass `edrules.server.handlers.BaseHandler`; decorate methods
  with `edrules.server.handlers.authenticated`; `self.principal` is the signed-in Principal;
  forms include `self.forms()` (the anti-forgery fields every POST must carry). Mount them with
  `HANDLERS = [(r"/path", Handler)]` in a module `edrules/server/pages_<name>.py` (imported when the
  server starts) or `register_handlers([...])`. `self.ctx` has the state dir, the DuckDB path and
  the account store (`self.accounts`, e.g. `self.accounts.policy(domain).secure_release`).
- Voila dashboards (dashboards/*.ipynb): `from edrules.server.principal import current_principal`
  then `me = current_principal()` in a cell. The server's Voila prelaunch hook puts the Principal
  of the request that opened the page into the page's own kernel; outside the server it is None
  (or EDRULES_PRINCIPAL as JSON, for tests). Which roles may open a notebook: its metadata,
  `"edrules": {"roles": ["domain_admin", "provider"]}` (absent = every signed-in role).
  Kernels inherit `EDRULES_STATE` (the state directory) and `EDRULES_DB` (the dataset) from the
  server; `edrules.server.dashboard.nav_bar()` draws the header links.
"""

from edrules.server.principal import Principal, can_access, current_principal

__all__ = ["Principal", "can_access", "current_principal"]
