"""Step 1 of the request path: who is calling (DESIGN §1)."""
from __future__ import annotations

import logging
import time

from django.http import HttpRequest
from django.utils import timezone

from budgets.keys import key_digest, key_touch
from budgets.selectors import KeyInfo, key_info_by_digest
from budgets.signals import key_cache
from gateway_site.lib.clientaddr import client_address
from gateway_site.lib.db import run_db
from proxy.errors import GatewayError
from proxy.keywatch import key_seen

logger = logging.getLogger(__name__)
security_logger = logging.getLogger("tollgate.security")

# One message for every kind of bad key, so a caller cannot tell an unknown key
# from a revoked or expired one; nor does it name the product to a scanner.
INVALID_KEY_MESSAGE = "Invalid API key. Use a key issued by your gateway administrator."
MISSING_KEY_MESSAGE = (
    "Missing API key. Send it as 'Authorization: Bearer <key>', 'x-api-key: <key>', 'x-goog-api-key: <key>' "
    "or 'X-App-Key: <key>'."
)
MAX_KEY_LENGTH = 200


def extract_key(request: HttpRequest) -> str | None:
    headers = request.headers
    authorization = headers.get("Authorization")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    for header in ("x-api-key", "x-goog-api-key", "X-App-Key"):
        given = headers.get(header)
        if given and given.strip():
            return given.strip()
    # Google's REST convention (?key=): accepted, and masked in every log line (gateway_site/lib/logs.py).
    query_key = request.GET.get("key")
    if query_key and query_key.strip():
        return query_key.strip()
    return None


class KeyNotAllowed(GatewayError):
    """A valid key used from a network or by a client it is not bound to: a 403 in the caller's shape.
    `key` says whose it was, for whoever records the refusal."""

    def __init__(self, key: KeyInfo, message: str) -> None:
        super().__init__("permission", message, code="permission_denied")
        self.key = key


async def authenticate(request: HttpRequest, address: str | None = None) -> KeyInfo:
    """The caller's key, or GatewayError(401), or KeyNotAllowed(403) when the key is bound elsewhere.

    `address` is the client's as the pipeline worked it out (TOLLGATE_TRUSTED_PROXIES); worked out
    here when not given. A cached key reads nothing from the database.
    """
    raw = extract_key(request)
    if raw is None:
        raise GatewayError("authentication", MISSING_KEY_MESSAGE, code="missing_api_key")
    if len(raw) > MAX_KEY_LENGTH:
        raise GatewayError("authentication", INVALID_KEY_MESSAGE, code="invalid_api_key")
    digest = key_digest(raw)
    # Unknown keys are cached too (bounded LRU), so a flood of bad keys
    # does not become a flood of database reads.
    info = await key_cache.aget_or_load(digest, lambda: run_db(key_info_by_digest, digest))
    if info is None or info.revoked or not info.consumer_active:
        raise GatewayError("authentication", INVALID_KEY_MESSAGE, code="invalid_api_key")
    if info.expires_at is not None and info.expires_at <= timezone.now():
        raise GatewayError("authentication", INVALID_KEY_MESSAGE, code="invalid_api_key")
    if address is None:
        address = client_address(request.META)
    user_agent = request.headers.get("User-Agent", "")
    key_seen(info, address, user_agent)  # refused uses too: a new network alerts either way
    if info.binding is not None:
        refusal = info.binding.refusal(address, user_agent)
        if refusal is not None:
            security_logger.info("key %s of %s refused: used from %s by %r, outside its binding", info.prefix,
                                 info.consumer_name, address, user_agent[:100], extra={"consumer": info.consumer_name})
            raise KeyNotAllowed(info, refusal)
    return info


# key id -> monotonic time of the last last_used_at write from this worker
_last_touch: dict[int, float] = {}
TOUCH_INTERVAL_SECONDS = 60.0


async def key_touch_if_due(key: KeyInfo | None) -> None:
    """Record the key's last use, at most once a minute per key and worker (one UPDATE, no read)."""
    if key is None:
        return
    now = time.monotonic()
    last = _last_touch.get(key.key_id)
    if last is not None and now - last < TOUCH_INTERVAL_SECONDS:
        return
    _last_touch[key.key_id] = now
    try:
        await run_db(key_touch, key_ids=[key.key_id], when=timezone.now())
    except Exception:
        # Last use is informational; never fail a request over it.
        logger.warning("could not record last use of key %s", key.prefix, exc_info=True)
