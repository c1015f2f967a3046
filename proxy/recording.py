"""The recording half of step 8: hand the finished request to the audit log.

Filled in by the audit issue (#5); until then requests are only logged.
"""
from __future__ import annotations

from proxy.context import RequestContext


async def record(ctx: RequestContext) -> None:
    """Write the request's audit event durably; returns once it is stored."""
