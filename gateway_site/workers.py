"""The gunicorn worker of the production start (gateway_site/gunicorn_conf.py)."""
from __future__ import annotations

from uvicorn_worker import UvicornWorker


class TollgateWorker(UvicornWorker):
    """uvicorn without its `server: uvicorn` banner: an unauthenticated caller learns no version
    or stack (docs/reliability.md, Probing). uvicorn still adds its `date` header."""

    # proxy_headers off: the client's address comes from TOLLGATE_TRUSTED_PROXIES
    # (gateway_site/lib/clientaddr.py); uvicorn's middleware trusted no one here anyway
    # (forwarded_allow_ips is empty) and cost a layer on every request.
    CONFIG_KWARGS = {**UvicornWorker.CONFIG_KWARGS, "server_header": False, "proxy_headers": False}
