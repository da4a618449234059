"""Which webhook URLs the platform will POST to: a user-supplied URL is a request the platform makes
on that user's behalf, from inside its network (SSRF). Only http(s), no credentials in the URL, no
IP address spelt in any form but the canonical one, and every address the host resolves to must be
public, unless an admin allowed it (BITINGLIP_WEBHOOK_ALLOW_HOSTS). The connection then goes to the
address that was checked (`Target.pinned_url`), so a DNS answer that changes between the check and
the connection (rebinding) cannot move it, and redirects are never followed."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit, urlunsplit

from bitinglip.errors import InvalidRequest

MAX_URL_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# IPv6 forms that carry an IPv4 address in their last 32 bits (IPv4-compatible, SIIT, local-use NAT64):
# Python calls several of them global, whatever the IPv4 address inside is
_CARRIES_IPV4 = (
    ipaddress.ip_network("::/96"),
    ipaddress.ip_network("::ffff:0:0:0/96"),
    ipaddress.ip_network("64:ff9b:1::/48"),
)
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")  # deprecated, still routed inside some networks
DNS_TIMEOUT_S = 5.0
# Lookups run here, never in the event loop's default pool: a host whose DNS never answers can hold
# these threads (until the resolver gives up), not the ones that check keys and read the database
_DNS_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook-dns")
# a last label that is a number: resolvers and browsers read such a host as an IPv4 address in some
# other spelling (2130706433, 0x7f.1, 127.1, 0177.0.0.1), which a check must not miss
_NUMERIC_LAST_LABEL = re.compile(r"(^|\.)(0x[0-9a-f]*|[0-9]+)\.?$")
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*\.?$")


class WebhookRefused(InvalidRequest):
    """A webhook URL the platform will not call."""

    code = "invalid_webhook"

    def __init__(self, message: str) -> None:
        super().__init__(message, param="webhook")


@dataclass(frozen=True)
class Target:
    """A checked webhook URL and the address its connection must go to."""

    url: str
    parts: SplitResult
    host: str  # as written (lower case, IPv6 without brackets)
    port: int
    address: str  # checked, connected to

    @property
    def pinned_url(self) -> str:
        """The URL with the checked address in place of the host name (the Host header keeps the name)."""
        address = f"[{self.address}]" if ":" in self.address else self.address
        explicit = self.parts.port is not None
        netloc = f"{address}:{self.port}" if explicit else address
        return urlunsplit((self.parts.scheme, netloc, self.parts.path or "/", self.parts.query, ""))

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.parts.port}" if self.parts.port is not None else host


def parse(url: str) -> tuple[SplitResult, str, int]:
    """Syntax alone (no DNS): what the gateway checks before anything else."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookRefused(f"the webhook URL is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7F for c in url):
        raise WebhookRefused("the webhook URL has spaces, control or non-ASCII characters (percent-encode them)")
    try:
        parts = urlsplit(url)
        parts.hostname  # noqa: B018  # raises on a malformed bracketed host
    except ValueError as exc:
        raise WebhookRefused("the webhook URL is malformed") from exc
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused("the webhook URL must be http:// or https://")
    if "@" in parts.netloc:
        raise WebhookRefused("the webhook URL may not carry a user name or password")
    host = (parts.hostname or "").lower()
    if not host:
        raise WebhookRefused("the webhook URL has no host")
    try:
        given = parts.port
    except ValueError as exc:
        raise WebhookRefused("the webhook URL's port is not a number from 1 to 65535") from exc
    port = given if given is not None else (443 if parts.scheme == "https" else 80)
    if port == 0:
        raise WebhookRefused("the webhook URL's port is not a number from 1 to 65535")
    literal = _literal(host)
    if literal is None and (_NUMERIC_LAST_LABEL.search(host) or not _HOST_NAME.match(host)):
        raise WebhookRefused("the webhook URL's host is neither a host name nor an IP address in standard form")
    return parts, host, port


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_public(ip: IPAddress) -> bool:
    """Reachable on the internet: not private, loopback, link-local (cloud metadata), shared, reserved,
    unspecified or multicast, also when an IPv6 address carries an IPv4 one (mapped, 6to4, NAT64)."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _SITE_LOCAL:
            return False
        inner = ip.ipv4_mapped or ip.sixtofour
        if inner is None and (ip in _NAT64 or any(ip in net for net in _CARRIES_IPV4)):
            inner = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if inner is not None:
            return is_public(inner)
    return ip.is_global and not ip.is_multicast


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise WebhookRefused(f"the webhook host {host!r} does not resolve") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check(url: str, allow: Sequence[str] = (), resolver: Resolver = resolve) -> Target:
    """The URL checked, resolved and pinned; WebhookRefused says why not. `allow`: hosts (names or
    addresses, matched as written in the URL) and networks (CIDR: 10.0.0.0/8, matched against every
    address the host resolves to) that may be private anyway."""
    parts, host, port = parse(url)
    names = {entry.lower().strip("[]").rstrip(".") for entry in allow if "/" not in entry}
    networks = [net for entry in allow if "/" in entry and (net := _network(entry)) is not None]
    addresses = [host] if _literal(host) is not None else resolver(host, port)
    if not addresses:
        raise WebhookRefused(f"the webhook host {host!r} does not resolve")
    if host.rstrip(".") not in names:
        for address in addresses:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
            if not is_public(ip) and not any(ip in net for net in networks):
                raise WebhookRefused(
                    f"the webhook host {host!r} is a private, loopback or link-local address; "
                    "an admin may allow it (BITINGLIP_WEBHOOK_ALLOW_HOSTS)"
                )
    return Target(url=url, parts=parts, host=host, port=port, address=addresses[0])


def _network(entry: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return None


async def checked(url: str, allow: Sequence[str], resolver: Resolver = resolve) -> Target:
    """`check` off the event loop, in the lookups' own threads, within DNS_TIMEOUT_S."""
    lookup = asyncio.get_running_loop().run_in_executor(_DNS_POOL, check, url, allow, resolver)
    try:
        return await asyncio.wait_for(lookup, DNS_TIMEOUT_S)
    except TimeoutError:
        raise WebhookRefused(f"the webhook host did not resolve within {DNS_TIMEOUT_S:g} s") from None


async def accept(url: str, events: list[str], allow: Sequence[str]) -> dict[str, object]:
    """At acceptance (the gateway): the job's webhook, checked now as it will be at each delivery."""
    await checked(url, allow)
    return {"url": url, "events": events}
