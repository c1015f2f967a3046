"""Security alerts: a WARNING on "tollgate.security" and a JSON POST to TOLLGATE_SECURITY_ALERT_WEBHOOK.

One channel for every security alert (probing, keys used from somewhere new). The log
formatter keeps only known fields (gateway_site/lib/logs.py), so the details go in the message.
The request path posts through proxy.upstream (aiohttp); work off the request path (a
background thread) posts with httpx.
"""
from __future__ import annotations

import logging
from typing import Any

import httpx
import orjson
from django.conf import settings

from proxy.upstream import Timeouts
from proxy.upstream import post as upstream_post

logger = logging.getLogger("tollgate.security")
_TIMEOUT_SECONDS = 5.0


def _log(kind: str, details: dict[str, Any]) -> bytes:
    shown = ", ".join(f"{name}={value}" for name, value in details.items())
    logger.warning("security alert: %s (%s)", kind, shown, extra={"alert": kind, **details})
    return orjson.dumps({"alert": kind, **details})


async def security_alert(kind: str, details: dict[str, Any]) -> None:
    """Log a security alert and POST it to TOLLGATE_SECURITY_ALERT_WEBHOOK (never raises)."""
    payload = _log(kind, details)
    url = settings.TOLLGATE_SECURITY_ALERT_WEBHOOK
    if not url:
        return
    try:
        await upstream_post(url, content=payload, headers={"content-type": "application/json"},
                            timeouts=Timeouts(read=_TIMEOUT_SECONDS, connect=_TIMEOUT_SECONDS))
    except Exception:
        logger.warning("could not send the security alert to the webhook", exc_info=True)


def security_alert_sync(kind: str, details: dict[str, Any]) -> None:
    """security_alert() for code outside the event loop (never raises)."""
    payload = _log(kind, details)
    url = settings.TOLLGATE_SECURITY_ALERT_WEBHOOK
    if not url:
        return
    try:
        httpx.post(url, content=payload, headers={"content-type": "application/json"},
                   timeout=_TIMEOUT_SECONDS).raise_for_status()
    except Exception:
        logger.warning("could not send the security alert to the webhook", exc_info=True)
