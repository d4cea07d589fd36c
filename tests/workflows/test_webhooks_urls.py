"""The SSRF rules of webhook URLs, after DNS resolution (workflows/webhooks/urls.py)."""

from __future__ import annotations

import pytest

from workflows.webhooks.urls import UnsafeWebhookUrl, resolve


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://127.0.0.1/h", "loopback"),
        ("https://localhost/h", "loopback"),  # a host name resolving to loopback
        ("https://10.1.2.3/h", "private"),
        ("https://192.168.0.1/h", "private"),
        ("https://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://169.254.10.10/h", "link-local"),
        ("https://100.64.0.1/h", "carrier-grade NAT"),
        ("https://[::1]/h", "loopback"),
        ("https://[fd00:ec2::254]/h", "metadata"),
        ("https://[::ffff:10.0.0.1]/h", "private"),
        ("https://0.0.0.0/h", "unspecified"),
        ("http://93.184.215.14/h", "https://"),
        ("https://user:pw@93.184.215.14/h", "user name"),
        ("ftp://93.184.215.14/h", "https://"),
        ("https://no-such-host.invalid/h", "does not resolve"),
    ],
)
async def test_refused(url: str, why: str) -> None:
    with pytest.raises(UnsafeWebhookUrl, match=why):
        await resolve(url, allow_loopback=False)


async def test_loopback_http_only_when_allowed() -> None:
    target = await resolve("http://127.0.0.1:8123/h?x=1", allow_loopback=True)
    assert target.address == "127.0.0.1" and target.request_url == "http://127.0.0.1:8123/h?x=1"
    assert target.host_header == "127.0.0.1:8123"
    with pytest.raises(UnsafeWebhookUrl, match="private"):
        await resolve("http://10.0.0.1/h", allow_loopback=True)  # loopback only, not private
    with pytest.raises(UnsafeWebhookUrl, match="metadata"):
        await resolve("http://169.254.169.254/", allow_loopback=True)


async def test_a_public_address_is_accepted_and_pinned() -> None:
    target = await resolve("https://93.184.215.14/hook", allow_loopback=False)
    assert target.address == "93.184.215.14" and target.port == 443
    assert target.host_header == "93.184.215.14"
