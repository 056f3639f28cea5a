"""Go's proxy rules (golang.org/x/net/http/httpproxy, as documented in its package doc and
`Config` comments): the cases its documentation names."""

from __future__ import annotations

import pytest

from imagefactory.harvester.goproxy import ProxyConfig

P = "http://proxy.site:3128"


@pytest.mark.parametrize(("no_proxy", "url", "proxied"), [
    ("", "https://minio.site:9000/b/k", True),
    ("foo.com", "https://foo.com/x", False),          # a name matches itself ...
    ("foo.com", "https://bar.foo.com/x", False),      # ... and its subdomains
    ("foo.com", "https://afoo.com/x", True),          # not a longer name
    (".y.com", "https://x.y.com/x", False),           # a leading dot: subdomains only
    (".y.com", "https://y.com/x", True),
    ("*", "https://anything.example/x", False),
    ("10.0.0.0/8", "https://10.1.2.3/x", False),      # CIDR: addresses
    ("10.0.0.0/8", "https://11.0.0.1/x", True),
    ("1.2.3.4", "https://1.2.3.4:9000/x", False),     # an address
    ("foo.com:443", "https://foo.com/x", False),      # with a port: that port only
    ("foo.com:80", "https://foo.com/x", True),
    (" minio.site , other", "https://MINIO.site/x", False),  # spaces, case
    ("", "https://localhost:9000/x", False),          # never: localhost and loopback
    ("", "https://127.0.0.1:9000/x", False),
    ("", "https://[::1]:9000/x", False),
])
def test_https_urls(no_proxy: str, url: str, proxied: bool) -> None:
    cfg = ProxyConfig(http_proxy="", https_proxy=P, no_proxy=no_proxy)
    assert (cfg.proxy_for(url) == P) is proxied


def test_the_scheme_picks_the_proxy_without_fallback() -> None:
    only_http = ProxyConfig.from_setting({"httpProxy": "proxy.site:3128"})
    assert only_http.proxy_for("http://minio.site/x") == "http://proxy.site:3128"  # no scheme: http://
    assert only_http.proxy_for("https://minio.site/x") is None  # https never falls back to httpProxy
    assert ProxyConfig.from_setting(None).proxy_for("https://minio.site/x") is None
