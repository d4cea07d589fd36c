"""Where a webhook may go (SSRF): https only, and never to an internal address.

A receiver's URL is the user's to choose, and the request leaves from inside our network: an
address like 169.254.169.254 (the instance metadata service), 10.x or 127.0.0.1 would let a
user make us call our own services. The rules hold for every address the host name resolves to
(one unsafe address refuses the URL: DNS may hand out any of them), checked when the URL is
registered (the API) and again before each attempt (the delivery process), because a name that
resolved to a public address yesterday may resolve to a private one now (DNS rebinding). The
attempt then connects to the very address that was checked (``Target.address``), with the URL's
host name as Host and TLS server name, so a second lookup cannot swap it.

``allow_loopback`` (``PINKSEA_WEBHOOKS_ALLOW_LOOPBACK``, local use and tests, refused outside
``local`` by the settings) admits http URLs and loopback addresses; every other rule stands.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

DNS_TIMEOUT_S = 5.0
ADDRESSES_MAX = 16  # a host name's addresses checked (more: refused, nobody needs them)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Named for the refusal's message; is_global below catches every other special-purpose range.
_RANGES: tuple[tuple[str, str], ...] = (
    ("169.254.169.254/32", "the instance metadata address"),
    ("fd00:ec2::254/128", "the instance metadata address"),
    ("127.0.0.0/8", "a loopback address"),
    ("::1/128", "a loopback address"),
    ("10.0.0.0/8", "a private address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("fc00::/7", "a private address"),
    ("100.64.0.0/10", "a carrier-grade NAT address"),
    ("169.254.0.0/16", "a link-local address"),
    ("fe80::/10", "a link-local address"),
    ("0.0.0.0/8", "an unspecified address"),
    ("::/128", "an unspecified address"),
    ("64:ff9b::/96", "a NAT64 address"),  # reaches an IPv4 address of the translator's choice
)
_NETWORKS = tuple((ipaddress.ip_network(net), why) for net, why in _RANGES)
_LOOPBACK = "a loopback address"


class UnsafeWebhookUrl(ValueError):
    """The URL may not receive webhooks; the message says why, for the user."""


@dataclass(frozen=True)
class Target:
    """A checked URL: where the attempt connects (``address``) and what it asks for."""

    url: str
    scheme: str
    host: str
    port: int
    address: str

    @property
    def request_url(self) -> str:
        """The URL with the checked address in place of the host name."""
        parts = urlsplit(self.url)
        host = f"[{self.address}]" if ":" in self.address else self.address
        return parts._replace(netloc=f"{host}:{self.port}").geturl()

    @property
    def host_header(self) -> str:
        default = {"https": 443, "http": 80}[self.scheme]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def refusal(address: IPAddress, *, allow_loopback: bool) -> str | None:
    """Why ``address`` may not receive webhooks (None: it may)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    for network, why in _NETWORKS:
        if address in network:
            return None if why == _LOOPBACK and allow_loopback else why
    if address.is_multicast:
        return "a multicast address"
    if not address.is_global:
        return "a reserved address"
    return None


def parse(url: str, *, allow_loopback: bool) -> SplitResult:
    """The URL's parts, if its shape is acceptable (before any lookup)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UnsafeWebhookUrl(f"the URL is malformed ({e})") from None
    schemes = ("https", "http") if allow_loopback else ("https",)
    if parts.scheme not in schemes:
        raise UnsafeWebhookUrl("a webhook URL must start with https://")
    if not parts.hostname:
        raise UnsafeWebhookUrl("the URL names no host")
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookUrl("the URL must not carry a user name or password")
    if port == 0:
        raise UnsafeWebhookUrl("port 0 cannot be called")
    return parts


async def resolve(url: str, *, allow_loopback: bool) -> Target:
    """Check ``url`` and every address its host resolves to; the target to connect to.

    Raises UnsafeWebhookUrl (the user's URL is not acceptable, or its host does not resolve)."""
    parts = parse(url, allow_loopback=allow_loopback)
    host = parts.hostname
    assert host is not None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        addresses = await _lookup(host, port)
    for address in addresses:
        why = refusal(address, allow_loopback=allow_loopback)
        if why is not None:
            shown = host if literal is not None else f"{host} ({address})"
            raise UnsafeWebhookUrl(f"{shown} is {why}; webhooks go to public addresses only")
    # IPv4 first: a receiver on 127.0.0.1 is not always listening on ::1 too.
    chosen = min(addresses, key=lambda a: a.version)
    return Target(url=url, scheme=parts.scheme, host=host, port=port, address=str(chosen))


async def _lookup(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), DNS_TIMEOUT_S
        )
    except (OSError, TimeoutError) as e:
        raise UnsafeWebhookUrl(f"{host} does not resolve ({e.__class__.__name__})") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos))
    if not addresses:
        raise UnsafeWebhookUrl(f"{host} has no address")
    if len(addresses) > ADDRESSES_MAX:
        raise UnsafeWebhookUrl(f"{host} has more than {ADDRESSES_MAX} addresses")
    return addresses
