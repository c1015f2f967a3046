"""Keys bound to who may use them: client networks and User-Agent prefixes (issue #17; docs/admin.md).

A consumer and each of its keys may list the client networks (CIDRs, IPv4 and IPv6) and the
User-Agent prefixes (e.g. `claude-cli/`) they may be used from; an empty list allows any. A
request must satisfy every non-empty list, the consumer's and the key's. The address is the one
the gateway works out with TOLLGATE_TRUSTED_PROXIES (gateway_site.lib.clientaddr).

The lists are parsed once, when the key's cached entry is built (selectors.key_info_by_digest),
so the check on the request path is a few comparisons and no parsing.
"""
from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError

from gateway_site.lib.clientaddr import Network, ip

logger = logging.getLogger("tollgate.security")

MAX_ENTRIES = 100
MAX_PATTERN_LENGTH = 200


def networks_problem(value: Any) -> str | None:
    """Why `value` is not a list of client networks, or None."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return 'allowed networks must be a list of CIDRs, e.g. ["10.0.0.0/8", "2001:db8::/32"]'
    if len(value) > MAX_ENTRIES:
        return f"allowed networks: at most {MAX_ENTRIES} entries"
    for entry in value:
        try:
            ipaddress.ip_network(entry.strip(), strict=True)
        except ValueError as exc:
            try:
                wide = ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                return f"allowed networks: {entry!r} is not an IP address or CIDR ({exc})"
            # 10.1.2.3/8 is most likely a typo for 10.0.0.0/8 or for 10.1.2.3/32: ask, do not guess.
            return f"allowed networks: {entry!r} has host bits set; did you mean {wide}?"
    return None


def user_agents_problem(value: Any) -> str | None:
    """Why `value` is not a list of User-Agent prefixes, or None."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return 'allowed user agents must be a list of prefixes, e.g. ["claude-cli/"]'
    if len(value) > MAX_ENTRIES:
        return f"allowed user agents: at most {MAX_ENTRIES} entries"
    for entry in value:
        if not entry.strip() or len(entry) > MAX_PATTERN_LENGTH or not entry.isprintable():
            return (f"allowed user agents: {entry!r} must be a non-empty, printable prefix of at most "
                    f"{MAX_PATTERN_LENGTH} characters")
    return None


def validate_networks(value: Any) -> None:
    problem = networks_problem(value)
    if problem:
        raise ValidationError(problem, code="invalid_networks")


def validate_user_agents(value: Any) -> None:
    problem = user_agents_problem(value)
    if problem:
        raise ValidationError(problem, code="invalid_user_agents")


def _networks(values: Iterable[str], *, owner: str) -> tuple[Network, ...]:
    parsed = []
    for value in values:
        try:
            parsed.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            # Written around validation (an old dump, a raw UPDATE): matches nothing, so the
            # list stays a restriction rather than silently becoming "any".
            logger.warning("%s: ignoring allowed network %r: not a CIDR", owner, value)
    return tuple(parsed)


@dataclass(frozen=True, slots=True)
class ClientBinding:
    """Each non-empty list (the consumer's, the key's) must admit the request."""

    networks: tuple[tuple[Network, ...], ...] = ()
    user_agents: tuple[tuple[str, ...], ...] = ()  # lower-case prefixes

    def refusal(self, address: str | None, user_agent: str) -> str | None:
        """Why the client may not use the key, or None."""
        if self.networks:
            client = ip(address)
            if client is None or not all(any(client in net for net in nets) for nets in self.networks):
                shown = str(client) if client is not None else "an unknown address"
                return (f"This key may not be used from {shown}: it is bound to other client networks. "
                        "Ask your gateway administrator.")
        if self.user_agents:
            agent = user_agent.lower()
            if not all(agent.startswith(prefixes) for prefixes in self.user_agents):
                return ("This key may not be used by this client (its User-Agent is not one the key is bound to). "
                        "Ask your gateway administrator.")
        return None


def binding_build(*, owner: str, networks: Sequence[Sequence[str]],
                  user_agents: Sequence[Sequence[str]]) -> ClientBinding | None:
    """The parsed binding of the non-empty lists; None when nothing is bound (the common case)."""
    nets = tuple(_networks(values, owner=owner) for values in networks if values)
    agents = tuple(tuple(str(p).lower() for p in values) for values in user_agents if values)
    if not nets and not agents:
        return None
    return ClientBinding(networks=nets, user_agents=agents)
