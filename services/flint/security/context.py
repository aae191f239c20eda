"""The tenant of the call being served, set by the auth interceptor for everything the handler runs.

A context variable rather than a parameter: the interceptor wraps every
handler, and tasks a handler spawns (session readers, relays) inherit it.
"""

from __future__ import annotations

import contextvars

_TENANT: contextvars.ContextVar[str] = contextvars.ContextVar("flint_tenant", default="")


def current_tenant() -> str:
    """The authenticated tenant of this call ("" when authentication is off)."""
    return _TENANT.get()


def set_tenant(tenant: str) -> contextvars.Token:
    return _TENANT.set(tenant)


def reset_tenant(token: contextvars.Token) -> None:
    try:
        _TENANT.reset(token)
    except ValueError:  # an async generator closed from another context: that context never saw the set
        pass
