"""The private-address guard: endpoints may not reach loopback, private or metadata addresses.

The guard judges the addresses DNS returned, inside the resolver aiohttp connects with, so a
name that resolves to a refused address fails the attempt at connect time (DNS can change
after start). aiohttp connects to exactly the addresses its resolver returns, in
`TCPConnector._create_direct_connection`, so the addresses judged are the addresses used;
no second lookup happens between the check and the connect.

Two paths do not pass through the resolver and need the caller's care:

- a URL whose host is an IP literal: aiohttp skips the resolver (`TCPConnector._resolve_host`
  returns the literal as is), so the sender calls `check_literal_host` before the request;
- a proxy: the connector would resolve only the proxy's name and leave the endpoint's to the
  proxy, so the session must not use one (`trust_env=False`, the default, and no `proxy=`).

aiohttp's DNS cache stores what this resolver returned, already filtered, and a refusal is
an exception, which it never caches; so caching is safe. A cached entry keeps the allow-list
it was judged under until `ttl_dns_cache` passes, which is why a changed allow-list needs a
new connector (and a new resolver) rather than a patched one.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from dispatcher.config import IPNetwork
from dispatcher.errors import DispatcherError, cause_of_type

IPAddress = IPv4Address | IPv6Address

_ALLOW_HINT = "http.allow_networks can exempt a network"


def _rules(*pairs: tuple[str, str]) -> tuple[tuple[IPv4Network | IPv6Network, str], ...]:
    return tuple((ip_network(cidr), reason) for cidr, reason in pairs)


# Checked in order, first match wins, so a single address comes before the range holding it.
# Named explicitly instead of trusting `is_private`/`is_global` alone: their coverage changes
# between Python releases, and a reason names what the operator is looking at.
_IPV4_RULES = _rules(
    ("169.254.169.254/32", "cloud metadata"),  # AWS, GCP, Azure, OpenStack
    ("169.254.170.2/32", "cloud metadata"),  # AWS ECS task credentials
    ("100.100.100.200/32", "cloud metadata"),  # Alibaba Cloud
    ("0.0.0.0/32", "unspecified"),
    ("0.0.0.0/8", "this network"),
    ("127.0.0.0/8", "loopback"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("169.254.0.0/16", "link-local"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "documentation"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("198.18.0.0/15", "benchmarking"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("240.0.0.0/4", "reserved"),
)

_IPV6_RULES = _rules(
    ("fd00:ec2::254/128", "cloud metadata"),  # AWS
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/8", "reserved"),  # includes the deprecated IPv4-compatible ::a.b.c.d
    ("64:ff9b:1::/48", "reserved"),  # NAT64 for local use: may translate to anything inside
    ("100::/64", "reserved"),  # discard-only
    ("2001::/32", "Teredo"),  # tunnels to an obfuscated IPv4 address
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "private"),  # unique local
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)

# 64:ff9b::/96 carries an IPv4 address in its last 32 bits; a NAT64 gateway connects there.
_NAT64 = IPv6Network("64:ff9b::/96")


class BlockedAddressError(DispatcherError, OSError):
    """The guard refused every address of a host.

    An OSError, as aiohttp expects of a resolver, so aiohttp treats it like any failed
    lookup: it raises `aiohttp.ClientConnectorDNSError` with this error as `__cause__` (and
    `os_error`). Use `find_blocked` to tell it apart from a real DNS failure.
    """

    def __init__(self, host: str, refused: Sequence[tuple[str, str]]) -> None:
        self.host = host
        self.refused = tuple(refused)  # (address, reason) pairs, in resolver order
        addresses = ", ".join(f"{address} ({reason})" for address, reason in self.refused)
        self.message = f"refused every address of {host}: {addresses}; {_ALLOW_HINT}"
        # An errno and strerror make aiohttp's wrapping error print this message too.
        super().__init__(errno.EACCES, self.message)

    def __str__(self) -> str:
        return self.message


def find_blocked(exc: BaseException) -> BlockedAddressError | None:
    """The guard's refusal behind an error raised by an aiohttp request, if it is one."""
    return cause_of_type(exc, BlockedAddressError)


def blocked_reason(ip: IPAddress, allow: Sequence[IPNetwork] = ()) -> str | None:
    """Why the guard refuses `ip`, or None when it may be connected to.

    An address inside a network of `allow` is always allowed. An IPv6 address that carries
    an IPv4 address (IPv4-mapped, 6to4, NAT64) is judged by the IPv4 address it reaches.
    """
    if _is_allowed(ip, allow):
        return None

    if isinstance(ip, IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            inner, via = embedded
            reason = blocked_reason(inner, allow)
            return None if reason is None else f"{reason}, {via}"

    return _rule_reason(ip)


def _is_allowed(ip: IPAddress, allow: Iterable[IPNetwork]) -> bool:
    # `in` is False across IP versions, so a mixed allow-list needs no filtering.
    return any(ip in network for network in allow)


def _embedded_ipv4(ip: IPv6Address) -> tuple[IPv4Address, str] | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, "IPv4-mapped"
    if ip.sixtofour is not None:
        return ip.sixtofour, "6to4"
    if ip in _NAT64:
        return IPv4Address(int(ip) & 0xFFFF_FFFF), "NAT64"
    return None


def _rule_reason(ip: IPAddress) -> str | None:
    rules = _IPV4_RULES if isinstance(ip, IPv4Address) else _IPV6_RULES
    for network, reason in rules:
        if ip in network:
            return reason

    # The safety net for whatever the table misses but the running Python knows to be
    # special-purpose; an address nobody routes publicly is no webhook endpoint.
    return None if ip.is_global else "reserved"


def check_literal_host(host: str, allow: Sequence[IPNetwork] = ()) -> str | None:
    """A refusal message when a URL's host is an IP literal the guard refuses, else None.

    aiohttp connects to an IP literal without calling the resolver, so the sender calls this
    before each request. Returns None for a host name: the resolver judges those.
    """
    literal = host.removeprefix("[").removesuffix("]")
    if not _looks_like_ip_literal(literal):
        return None

    try:
        ip = ip_address(literal)
    except ValueError:
        # aiohttp would not resolve it either, and a number the socket layer reads its
        # own way (127.1, 2130706433) must not slip through.
        return f"refused address {host} (not a valid IP address); {_ALLOW_HINT}"

    reason = blocked_reason(ip, allow)
    return None if reason is None else f"refused address {ip} ({reason}); {_ALLOW_HINT}"


def _looks_like_ip_literal(host: str) -> bool:
    # The same test aiohttp uses to decide whether to skip the resolver, so every host that
    # skips it is judged here.
    return ":" in host or host.replace(".", "").isdigit()


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver with the refused addresses removed from every answer.

    Give it to `aiohttp.TCPConnector(resolver=...)`. The connector does not close a
    resolver it was given, so the owner calls `close()` after closing the connector.
    Like the connector, it must be created while the event loop runs.
    """

    def __init__(
        self, allow: Sequence[IPNetwork] = (), inner: AbstractResolver | None = None
    ) -> None:
        self._allow = tuple(allow)
        self._inner = DefaultResolver() if inner is None else inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """The addresses of `host` the guard allows; BlockedAddressError when none remain."""
        results = await self._inner.resolve(host, port, family)

        kept: list[ResolveResult] = []
        refused: list[tuple[str, str]] = []
        for result in results:
            reason = self._reason(result["host"])
            if reason is None:
                kept.append(result)
            else:
                refused.append((result["host"], reason))

        if refused and not kept:
            raise BlockedAddressError(host, refused)
        return kept

    def _reason(self, address: str) -> str | None:
        try:
            ip = ip_address(address)
        except ValueError:
            # A resolver answers with numeric addresses; anything else cannot be judged.
            return "not a valid IP address"
        return blocked_reason(ip, self._allow)

    async def close(self) -> None:
        await self._inner.close()
