"""Which webhook URLs the platform will call, checked without HTTP: every way to spell an address on
the platform's own network (loopback, private, link-local cloud metadata, IPv4 inside IPv6, numbers a
resolver reads as addresses) is refused unless an admin allowed it, and the connection is pinned to
the address that was checked."""

from __future__ import annotations

import asyncio
import ipaddress
import time

import pytest

from bitinglip.webhooks import urls
from bitinglip.webhooks.urls import MAX_URL_LENGTH, WebhookRefused, check, is_public, parse

HOSTILE = [
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_FLUSHALL",
    "ftp://example.com/x",
    "javascript:alert(1)",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://metadata.google.internal./computeMetadata/v1/",  # does not resolve here: refused either way
    "http://localhost:8001/api/v1/users",
    "http://localhost./",
    "http://LOCALHOST/",
    "http://127.0.0.1/",
    "http://127.0.0.2:4200/api/",
    "http://[::1]/",
    "http://[::]/",
    "http://0.0.0.0:8001/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[fe80::1%25eth0]/",
    "http://[fd00::1]/",
    "http://2130706433/",  # 127.0.0.1 as one decimal number
    "http://0x7f000001/",
    "http://017700000001/",
    "http://0177.0.0.1/",
    "http://0x7f.0.0.1/",
    "http://127.1/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",  # carrier-grade NAT
    "http://224.0.0.1/",  # multicast
    "http://255.255.255.255/",
    "http://user:pass@93.184.215.14/",  # credentials would show on the job
    "http://93.184.215.14@127.0.0.1/",
    "http://93.184.215.14:99999/",
    "http://93.184.215.14:0/",
    "http://exa mple.com/",
    "http://example.com/\r\nX-Injected: 1",
    "http://ex\u00e4mple.com/",
    "http:///nohost",
    "http://[::1/",
    "http://[not-an-address]/",
    "http://-bad-.example/",
    "http://" + "a" * MAX_URL_LENGTH + ".com/",
]


@pytest.mark.parametrize("url", HOSTILE)
def test_hostile_webhook_urls_are_refused(url: str) -> None:
    with pytest.raises(WebhookRefused) as refused:
        check(url)
    assert refused.value.status_code == 400 and refused.value.param == "webhook"
    assert refused.value.code == "invalid_webhook"


@pytest.mark.parametrize(
    ("url", "pinned", "host"),
    [
        ("https://93.184.215.14/hooks?x=1", "https://93.184.215.14/hooks?x=1", "93.184.215.14"),
        ("http://93.184.215.14:8080", "http://93.184.215.14:8080/", "93.184.215.14:8080"),
        ("http://[2606:4700::1111]:81/h", "http://[2606:4700::1111]:81/h", "[2606:4700::1111]:81"),
    ],
)
def test_public_addresses_are_accepted_and_pinned(url: str, pinned: str, host: str) -> None:
    target = check(url)
    assert (target.pinned_url, target.host_header) == (pinned, host)


def test_every_resolved_address_must_be_public() -> None:
    """A name that resolves to a public and a private address (or rebinds) is refused, and one that
    passes is connected to by the address that was checked, never resolved again."""
    with pytest.raises(WebhookRefused):
        check("https://hooks.example.com/x", resolver=lambda host, port: ["93.184.215.14", "169.254.169.254"])
    target = check("https://hooks.example.com/x", resolver=lambda host, port: ["93.184.215.14"])
    assert target.pinned_url == "https://93.184.215.14/x"
    assert (target.host, target.host_header) == ("hooks.example.com", "hooks.example.com")


def test_an_unresolvable_host_is_refused() -> None:
    with pytest.raises(WebhookRefused, match="does not resolve"):
        check("http://no-such-host.invalid/")


def test_the_allow_list_opens_exactly_what_it_names() -> None:
    """Hosts match as written in the URL; networks match the resolved addresses."""
    assert check("http://127.0.0.1:9/h", ["127.0.0.1"]).pinned_url == "http://127.0.0.1:9/h"
    assert check("http://[::1]:9/h", ["[::1]"]).pinned_url == "http://[::1]:9/h"
    assert check("http://127.0.0.2:9/", ["127.0.0.0/8"]).address == "127.0.0.2"
    local = check("http://localhost:9/h", ["localhost"])
    assert local.address in {"127.0.0.1", "::1"} and local.host_header == "localhost:9"
    for url, allow in [
        ("http://localhost:9/", ["127.0.0.1"]),  # a name for an allowed address is not that address
        ("http://2130706433:9/", ["127.0.0.1"]),  # nor is another spelling of it
        ("http://127.0.0.2:9/", ["127.0.0.1"]),
        ("http://169.254.169.254/", ["10.0.0.0/8"]),
        ("file:///etc/passwd", ["127.0.0.1"]),  # only http(s), whatever is allowed
        ("http://u:p@127.0.0.1:9/", ["127.0.0.1"]),
    ]:
        with pytest.raises(WebhookRefused):
            check(url, allow)


def test_parse_reports_the_port() -> None:
    assert parse("https://93.184.215.14/")[1:] == ("93.184.215.14", 443)
    assert parse("http://hooks.example.com/")[1:] == ("hooks.example.com", 80)


@pytest.mark.parametrize(
    "address",
    ["::7f00:1", "::ffff:0:7f00:1", "64:ff9b:1::a9fe:a9fe", "64:ff9b::a9fe:a9fe", "fec0::1", "::ffff:169.254.169.254"],
)
def test_ipv6_forms_carrying_a_private_ipv4_address_are_not_public(address: str) -> None:
    """Python's `is_global` calls several of these global (IPv4-compatible, SIIT, local NAT64, site-local)."""
    assert not is_public(ipaddress.ip_address(address))
    with pytest.raises(WebhookRefused):
        check(f"http://[{address}]/hook")


def test_a_host_whose_dns_never_answers_is_refused_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(urls, "DNS_TIMEOUT_S", 0.2)

    def hanging(host: str, port: int) -> list[str]:
        time.sleep(1)
        return ["93.184.216.34"]

    with pytest.raises(WebhookRefused, match="did not resolve within"):
        asyncio.run(urls.checked("https://slow.example.com/hook", (), hanging))
