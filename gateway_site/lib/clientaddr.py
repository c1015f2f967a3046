"""The client's address: the direct peer, or X-Forwarded-For when the peer is a trusted proxy.

A client can write any X-Forwarded-For it likes, so the header is believed only
when the connection comes from an address in TOLLGATE_TRUSTED_PROXIES (the
reverse proxies), and then read from the right: the first hop that is not a
trusted proxy is the client. The audit log, per-address limits and the /metrics
allow-list all use this one answer.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(values: Iterable[str], *, setting: str = "") -> tuple[Network, ...]:
    """CIDRs (or single addresses) as networks; a bad one raises ImproperlyConfigured naming it."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ImproperlyConfigured(f"{setting or 'network'}: {value!r} is not an IP address or CIDR") from None
    return tuple(networks)


@lru_cache(maxsize=16)
def networks(values: tuple[str, ...]) -> tuple[Network, ...]:
    return parse_networks(values)


def ip(value: str | None) -> IPAddress | None:
    if not value:
        return None
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    # An IPv4 client seen through an IPv6 socket (::ffff:a.b.c.d) is that IPv4 client.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def address_in(address: IPAddress | None, nets: tuple[Network, ...]) -> bool:
    return address is not None and any(address in net for net in nets)


def _trusted() -> tuple[Network, ...]:
    return networks(tuple(settings.TOLLGATE_TRUSTED_PROXIES))


def client_address(meta: Mapping[str, Any]) -> str | None:
    """The client's IP for a request's META (REMOTE_ADDR when no trusted proxy is involved)."""
    peer = meta.get("REMOTE_ADDR")
    if not settings.TOLLGATE_TRUSTED_PROXIES:
        return peer
    forwarded = meta.get("HTTP_X_FORWARDED_FOR")
    trusted = _trusted()
    if not forwarded or not address_in(ip(peer), trusted):
        return peer
    client = peer
    for hop in reversed(forwarded.split(",")):
        address = ip(hop)
        if address is None:
            break  # garbage: believe nothing further left
        client = str(address)
        if not address_in(address, trusted):
            break
    return client


def address_block(address: str) -> str:
    """What per-address counters count: an IPv4 address, or the /64 an IPv6 address lies in.

    One IPv6 subscriber is given a whole /64 (RFC 6177) and may take a new address from it for
    every request, so counting IPv6 per address would count nobody. Anything else is returned as is.
    """
    parsed = ip(address)
    if parsed is None:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((int(parsed) >> 64 << 64, 64)))
    return str(parsed)


def forwarded_by_untrusted(meta: Mapping[str, Any]) -> bool:
    """The request names a forwarded client that we cannot believe (the peer is not a trusted proxy).

    Behind a reverse proxy that is not listed in TOLLGATE_TRUSTED_PROXIES every
    request seems to come from the proxy's (often loopback) address; this is how
    /metrics tells such requests from a scraper that connects directly.
    """
    if "HTTP_X_FORWARDED_FOR" not in meta:
        return False
    return not address_in(ip(meta.get("REMOTE_ADDR")), _trusted())
