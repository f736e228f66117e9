"""The private-address guard: which addresses it refuses, and that aiohttp honours its answer.

Every connection here goes to 127.0.0.1; `localhost` is resolved from the hosts file.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer

from dispatcher.config import IPNetwork
from dispatcher.guard import (
    BlockedAddressError,
    GuardedResolver,
    blocked_reason,
    check_literal_host,
    find_blocked,
)

LOOPBACK_ONLY: tuple[IPNetwork, ...] = (ip_network("127.0.0.1/32"),)

REFUSED = [
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.255", "carrier-grade NAT"),
    ("169.254.169.254", "cloud metadata"),
    ("169.254.170.2", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("169.254.1.1", "link-local"),
    ("192.0.0.8", "reserved"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.1", "documentation"),
    ("203.0.113.1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::127.0.0.1", "reserved"),
    ("100::1", "reserved"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"),
    ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("fd00:ec2::254", "cloud metadata"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("2001::1", "Teredo"),
    ("64:ff9b:1::1", "reserved"),
    ("::ffff:127.0.0.1", "loopback, IPv4-mapped"),
    ("::ffff:10.0.0.1", "private, IPv4-mapped"),
    ("::ffff:169.254.169.254", "cloud metadata, IPv4-mapped"),
    ("2002:7f00:1::", "loopback, 6to4"),
    ("2002:c0a8:101::1", "private, 6to4"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata, NAT64"),
    ("64:ff9b::10.0.0.1", "private, NAT64"),
]

ALLOWED = [
    "93.184.216.34",
    "1.1.1.1",
    "8.8.8.8",
    "172.15.255.255",
    "172.32.0.0",
    "100.63.255.255",
    "100.128.0.0",
    "2606:4700::1111",
    "2a00:1450:4001:800::200e",
    "::ffff:93.184.216.34",
    "2002:5db8:d822::1",
    "64:ff9b::93.184.216.34",
]


@pytest.mark.parametrize(("address", "reason"), REFUSED)
def test_special_purpose_address_is_refused_with_its_reason(address: str, reason: str) -> None:
    assert blocked_reason(ip_address(address), ()) == reason


@pytest.mark.parametrize("address", ALLOWED)
def test_public_address_is_allowed(address: str) -> None:
    assert blocked_reason(ip_address(address), ()) is None


@pytest.mark.parametrize(
    ("address", "allow", "reason"),
    [
        ("127.0.0.1", "127.0.0.1/32", None),
        ("::ffff:127.0.0.1", "127.0.0.1/32", None),
        ("127.0.0.2", "127.0.0.1/32", "loopback"),
        ("::1", "127.0.0.1/32", "loopback"),
        ("10.1.2.3", "10.0.0.0/8", None),
        ("fd00:ec2::254", "fd00::/8", None),
        ("fd00:ec2::254", "10.0.0.0/8", "cloud metadata"),
    ],
)
def test_allow_list_opens_exactly_its_networks(
    address: str, allow: str, reason: str | None
) -> None:
    assert blocked_reason(ip_address(address), (ip_network(allow),)) == reason


@pytest.mark.parametrize(
    ("host", "refusal"),
    [
        ("127.0.0.1", "refused address 127.0.0.1 (loopback)"),
        ("::1", "refused address ::1 (loopback)"),
        ("[::1]", "refused address ::1 (loopback)"),
        ("169.254.169.254", "refused address 169.254.169.254 (cloud metadata)"),
        ("127.1", "refused address 127.1 (not a valid IP address)"),
        ("2130706433", "refused address 2130706433 (not a valid IP address)"),
    ],
)
def test_literal_host_refusal_names_the_address_and_reason(host: str, refusal: str) -> None:
    message = check_literal_host(host, ())

    assert message is not None
    assert message.startswith(refusal)
    assert "http.allow_networks" in message


@pytest.mark.parametrize("host", ["93.184.216.34", "2606:4700::1111", "localhost", "a.example"])
def test_literal_check_passes_public_literals_and_every_host_name(host: str) -> None:
    assert check_literal_host(host, ()) is None


def test_literal_check_honours_the_allow_list() -> None:
    assert check_literal_host("127.0.0.1", LOOPBACK_ONLY) is None


def _answer(host: str, address: str) -> ResolveResult:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return ResolveResult(hostname=host, host=address, port=443, family=family, proto=0, flags=0)


class FixedResolver(AbstractResolver):
    """Answers every lookup with the same addresses, or raises, without touching DNS."""

    def __init__(self, addresses: Sequence[str] = (), error: OSError | None = None) -> None:
        self.addresses = addresses
        self.error = error
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if self.error is not None:
            raise self.error
        return [_answer(host, address) for address in self.addresses]

    async def close(self) -> None:
        self.closed = True


async def test_resolver_drops_refused_addresses_and_keeps_the_rest() -> None:
    inner = FixedResolver(["10.0.0.1", "93.184.216.34", "::1", "2606:4700::1111"])
    resolver = GuardedResolver((), inner)

    results = await resolver.resolve("mixed.example", 443)

    assert [r["host"] for r in results] == ["93.184.216.34", "2606:4700::1111"]


async def test_resolver_refuses_a_host_with_only_refused_addresses() -> None:
    resolver = GuardedResolver((), FixedResolver(["10.0.0.1", "fd00:ec2::254"]))

    with pytest.raises(BlockedAddressError) as caught:
        await resolver.resolve("internal.example", 443)

    assert caught.value.host == "internal.example"
    assert caught.value.refused == (("10.0.0.1", "private"), ("fd00:ec2::254", "cloud metadata"))
    assert str(caught.value) == (
        "refused every address of internal.example: 10.0.0.1 (private), "
        "fd00:ec2::254 (cloud metadata); http.allow_networks can exempt a network"
    )


async def test_resolver_closes_the_resolver_it_wraps() -> None:
    inner = FixedResolver()

    await GuardedResolver((), inner).close()

    assert inner.closed


async def test_localhost_is_refused_without_an_allow_list() -> None:
    resolver = GuardedResolver()
    try:
        with pytest.raises(BlockedAddressError) as caught:
            await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
    finally:
        await resolver.close()

    assert ("127.0.0.1", "loopback") in caught.value.refused


async def test_localhost_resolves_to_127_0_0_1_when_allowed() -> None:
    resolver = GuardedResolver(LOOPBACK_ONLY)
    try:
        results = await resolver.resolve("localhost", 80, socket.AF_UNSPEC)
    finally:
        await resolver.close()

    # ::1, where the hosts file lists it, stays refused: only 127.0.0.1/32 is allowed.
    assert {r["host"] for r in results} == {"127.0.0.1"}


@dataclass
class Endpoint:
    """A webhook receiver on 127.0.0.1 and the requests that reached it."""

    port: int
    received: list[bytes] = field(default_factory=list)


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    received: list[bytes] = []

    async def receive(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", receive)
    async with TestServer(app, host="127.0.0.1") as server:
        assert server.port is not None
        yield Endpoint(server.port, received)


async def _post(url: str, resolver: AbstractResolver) -> int:
    connector = aiohttp.TCPConnector(resolver=resolver)
    try:
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(url, data=b"{}") as response,
        ):
            return response.status
    finally:
        await resolver.close()


async def test_request_to_a_refused_host_fails_before_connecting(endpoint: Endpoint) -> None:
    with pytest.raises(aiohttp.ClientConnectorError) as caught:
        await _post(f"http://localhost:{endpoint.port}/", GuardedResolver())

    blocked = find_blocked(caught.value)
    assert blocked is not None
    assert blocked.host == "localhost"
    assert ("127.0.0.1", "loopback") in blocked.refused
    assert endpoint.received == []


async def test_request_to_an_allowed_host_succeeds(endpoint: Endpoint) -> None:
    status = await _post(f"http://localhost:{endpoint.port}/", GuardedResolver(LOOPBACK_ONLY))

    assert status == 200
    assert endpoint.received == [b"{}"]


async def test_ip_literal_bypasses_the_resolver_so_the_literal_check_is_needed(
    endpoint: Endpoint,
) -> None:
    url = f"http://127.0.0.1:{endpoint.port}/"

    # aiohttp connects to a literal without asking the resolver: the guard never sees it.
    assert await _post(url, GuardedResolver()) == 200
    assert endpoint.received == [b"{}"]
    assert check_literal_host("127.0.0.1", ()) is not None


async def test_an_ordinary_dns_failure_is_not_mistaken_for_a_refusal(
    endpoint: Endpoint,
) -> None:
    failing = FixedResolver(error=socket.gaierror(socket.EAI_NONAME, "Name or service not known"))

    with pytest.raises(aiohttp.ClientConnectorDNSError) as caught:
        await _post(f"http://missing.invalid:{endpoint.port}/", GuardedResolver((), failing))

    assert find_blocked(caught.value) is None
