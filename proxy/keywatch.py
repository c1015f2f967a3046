"""A key used from somewhere new raises a security alert (issue #17; docs/admin.md#key-binding).

A leaked key usually shows up from another network or in another program. Per key, the shared
cache remembers the networks (the /24 of an IPv4 client, the /48 of an IPv6 one) and the client
families (the User-Agent's product token, before the first '/') it was used from, each for
TOLLGATE_KEY_SEEN_DAYS after it was last seen. A new one raises one security alert (proxy.alerts:
the log and TOLLGATE_SECURITY_ALERT_WEBHOOK), at most one per key per
TOLLGATE_KEY_ALERT_INTERVAL_SECONDS. A key's first use alerts nothing: there is nothing to compare.
Requests that the key's binding refuses count too: they are the ones most worth an alert.

The request never waits for this. Each worker remembers for an hour which (key, address, family)
it has already passed on; the shared cache and the webhook are reached from one background thread.
"""
from __future__ import annotations

import ipaddress
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings

from budgets.selectors import KeyInfo
from gateway_site.lib.clientaddr import ip
from gateway_site.lib.sharedcache import cache
from proxy.alerts import security_alert_sync

logger = logging.getLogger("tollgate.security")

ALERT = "key_new_client"
_LOCAL_SECONDS = 3600.0
_LOCAL_MAX = 50_000
_local: dict[tuple[int, str, str], float] = {}  # (key id, address, family) -> monotonic time to ask again
# One thread: the work is a few cache calls, and a backlog must not grow threads.
_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tollgate-keywatch")
_FAMILY_UNSAFE = re.compile(r"[^a-z0-9._+-]")


def client_family(user_agent: str) -> str:
    """The User-Agent's product token, lower-cased and made cache-key safe ('-' when none)."""
    product = user_agent.split("/", 1)[0].strip().lower()
    return _FAMILY_UNSAFE.sub("_", product)[:64] or "-"


def client_network(address: str | None) -> str:
    """The /24 (IPv4) or /48 (IPv6) around the address; '' when it is unknown."""
    client = ip(address)
    if client is None:
        return ""
    prefix = 24 if client.version == 4 else 48
    return str(ipaddress.ip_network(f"{client}/{prefix}", strict=False))


def key_seen(key: KeyInfo, address: str | None, user_agent: str) -> None:
    """Note a use of `key` (on the request path: a dictionary look-up, rarely a queued task)."""
    family = client_family(user_agent)
    marker = (key.key_id, address or "", family)
    now = time.monotonic()
    if _local.get(marker, 0.0) > now:
        return
    if len(_local) >= _LOCAL_MAX:
        _local.clear()
    _local[marker] = now + _LOCAL_SECONDS
    try:
        _executor.submit(key_seen_shared, key=key, address=address, family=family, user_agent=user_agent)
    except RuntimeError:  # the interpreter is shutting down
        pass


def _known(name: str, ttl: int) -> bool:
    """Whether `name` was already remembered; either way it is remembered for `ttl` from now."""
    if cache.add(name, 1, timeout=ttl):
        return False
    cache.touch(name, ttl)
    return True


def seen_update(key_id: int, network: str, family: str) -> list[str]:
    """Remember a use in the shared cache; what was new about it, when that deserves an alert now."""
    ttl = settings.TOLLGATE_KEY_SEEN_DAYS * 86400
    base = f"keyseen:{key_id}"
    used_before = _known(f"{base}:used", ttl)
    new = []
    if network and not _known(f"{base}:net:{network}", ttl):
        new.append(f"network {network}")
    if not _known(f"{base}:ua:{family}", ttl):
        new.append(f"client {family}")
    if not used_before or not new:
        return []
    if not cache.add(f"{base}:alerted", 1, timeout=settings.TOLLGATE_KEY_ALERT_INTERVAL_SECONDS):
        logger.info("key %s used from a new %s; alert already sent within the hour", key_id, " and ".join(new))
        return []
    return new


def key_seen_shared(*, key: KeyInfo, address: str | None, family: str, user_agent: str) -> list[str]:
    """The background half of key_seen: update the shared cache, alert when due; returns what was new."""
    try:
        new = seen_update(key.key_id, client_network(address), family)
    except Exception:
        logger.warning("cannot record where key %s was used: the shared cache is unavailable", key.prefix,
                       exc_info=True)
        return []
    if new:
        details: dict[str, Any] = {
            "key": key.prefix, "consumer": key.consumer_name, "new": " and ".join(new),
            "client_ip": address or "", "user_agent": user_agent[:200],
        }
        security_alert_sync(ALERT, details)
    return new
