"""The outbound URL policy: schemes, address spellings, private/link-local/metadata ranges, allowances."""

from __future__ import annotations

import ipaddress

import pytest

from podkit.core.errors import ConfigError, Forbidden, InvalidRequest
from podkit.core.settings import Settings
from podkit.core.url_policy import (
    UrlPolicy,
    address_kind,
    check_address,
    check_url,
    parse_allow_hosts,
    parse_ip,
)
from podkit.services import url_policy

DEFAULT = UrlPolicy()
ANY = "0.0.0.0"  # noqa: S104 - an address to refuse, not one to bind
PRIVATE_OK = UrlPolicy(allow_private=True)


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/x", "gopher://example.com/", "data:text/plain,hi",
     "javascript:alert(1)", "ws://example.com/", "//example.com/x", "example.com/model.safetensors",
     "jar:http://example.com/x!/", "HTTP:/example.com"],
)  # fmt: skip
def test_only_http_and_https_are_fetched(url: str) -> None:
    with pytest.raises(InvalidRequest):
        check_url(url, PRIVATE_OK)


@pytest.mark.parametrize(
    ("url", "reason"),
    [("http://user:pw@example.com/x", "credentials"), ("https://exa mple.com/", "whitespace"),
     ("https://example.com/\x00", "control"), ("http://example.com:99999/", "malformed"),
     ("http:///nohost", "no host"), ("", "non-empty"), ("https://example.com/" + "a" * 9000, "longer")],
)  # fmt: skip
def test_malformed_urls_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(InvalidRequest, match=reason):
        check_url(url, PRIVATE_OK)


def test_public_urls_pass() -> None:
    for url in (
        "https://huggingface.co/org/m/resolve/main/x",
        "http://93.184.216.34/x",
        "https://[2606:4700::1]/",
    ):
        check_url(url, DEFAULT)


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.8.9.10", "10.0.0.5", "172.16.3.4", "192.168.1.1", "100.64.0.1", "[::1]", "[fd12::1]",
     # spellings a resolver accepts for 127.0.0.1 / 10.0.0.1: decimal, hex, octal, short forms
     "2130706433", "0x7f000001", "0x7f.0.0.1", "0177.0.0.1", "017700000001", "127.1", "127.0.1", "10.1",
     "167772161", "127.0.0.1.", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[64:ff9b::a00:1]", "[2002:a00:1::]",
     "１２７.０.０.１"],
)  # fmt: skip
def test_private_and_loopback_addresses_are_refused_by_default(host: str) -> None:
    with pytest.raises(Forbidden, match="PODKIT_URL_ALLOW_PRIVATE"):
        check_url(f"http://{host}:8080/model.safetensors", DEFAULT)
    check_url(f"http://{host}:8080/model.safetensors", PRIVATE_OK)  # the LAN allowance admits them


@pytest.mark.parametrize(
    "host",
    ["169.254.169.254", "169.254.170.2", "[fe80::1]", "[fe80::1%25eth0]", "[::ffff:169.254.169.254]",
     "2852039166", "0xa9fea9fe", "0251.0376.0251.0376", "[fd00:ec2::254]", "100.100.100.200", "168.63.129.16",
     "[64:ff9b::a9fe:a9fe]"],
)  # fmt: skip
def test_link_local_and_metadata_addresses_stay_refused_with_allow_private(host: str) -> None:
    for policy in (DEFAULT, PRIVATE_OK):
        with pytest.raises(Forbidden, match="link-local or metadata.*PODKIT_URL_ALLOW_HOSTS"):
            check_url(f"http://{host}/latest/meta-data/", policy)


@pytest.mark.parametrize("host", [ANY, "0", "[::]", "224.0.0.1", "255.255.255.255", "240.0.0.1", "[ff02::1]"])
def test_unspecified_multicast_and_reserved_addresses_are_refused(host: str) -> None:
    with pytest.raises(Forbidden, match="reserved"):
        check_url(f"http://{host}/", PRIVATE_OK)


def test_allow_list_admits_hosts_addresses_and_networks() -> None:
    policy = UrlPolicy(frozenset(parse_allow_hosts("models.lan, 169.254.169.254, 10.20.0.0/16, ::1")))
    check_url("http://169.254.169.254/x", policy)  # named explicitly: the only way to reach link-local
    check_url("http://10.20.3.4/x", policy)
    check_url("http://[::1]:8/x", policy)
    check_address("models.lan", "10.99.0.1", policy)  # a listed name, whatever it resolves to
    with pytest.raises(Forbidden):
        check_url("http://10.21.0.1/x", policy)
    with pytest.raises(Forbidden):
        check_address("other.lan", "10.99.0.1", policy)
    assert policy.host_allowed("MODELS.LAN.") and policy.host_allowed("[::1]")


@pytest.mark.parametrize("text", ["*", "*.example.com", "exa mple", "10.0.0.0/33", "bad_host!"])
def test_allow_list_entries_are_validated(text: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_allow_hosts(text)


def test_allow_list_entries_are_normalised() -> None:
    assert parse_allow_hosts(" Models.LAN. ,10.0.0.1/8,, [::1], models.lan") == (
        "models.lan",
        "10.0.0.0/8",
        "::1",
    )


def test_resolved_addresses_are_judged_like_literal_ones() -> None:
    check_address("cdn.example.com", "93.184.216.34", DEFAULT)
    check_address("cdn.example.com", "2606:4700::1", DEFAULT)
    for address, match in [("10.0.0.5", "private"), ("127.0.0.1", "loopback"), ("169.254.169.254", "metadata"),
                           ("::ffff:10.0.0.5", "private"), ("not-an-ip", "not an IP")]:  # fmt: skip
        with pytest.raises(Forbidden, match=match):
            check_address("cdn.example.com", address, DEFAULT)


def test_parse_ip_reads_every_spelling_a_resolver_does() -> None:
    loop = ipaddress.IPv4Address("127.0.0.1")
    for text in ("2130706433", "0x7f000001", "0x7F.1", "0177.0.0.01", "127.0.0.1", "127.1", "0x7f.0x0.0.1"):
        assert parse_ip(text) == loop, text
    assert parse_ip("[::1]") == ipaddress.IPv6Address("::1")
    for text in ("example.com", "1.2.3.4.5", "256.1.1.1", "08.1.1.1", "1.2.3.4294967296", "1.2.65536", ""):
        assert parse_ip(text) is None, text


def test_address_kinds() -> None:
    kinds = {a: address_kind(ipaddress.ip_address(a)) for a in
             ("8.8.8.8", "10.1.1.1", "127.0.0.1", "169.254.1.1", "fe80::1", "::ffff:8.8.8.8", ANY)}  # fmt: skip
    assert kinds == {"8.8.8.8": "global", "10.1.1.1": "private", "127.0.0.1": "loopback",
                     "169.254.1.1": "link_local", "fe80::1": "link_local", "::ffff:8.8.8.8": "global",
                     ANY: "blocked"}  # fmt: skip


def test_settings_carry_the_policy() -> None:
    env = {"PODKIT_URL_ALLOW_HOSTS": "models.lan,10.0.0.0/8", "PODKIT_URL_ALLOW_PRIVATE": "1",
           "PODKIT_VOLUME_DIR": ""}  # fmt: skip
    policy = url_policy(Settings.from_env(env))
    assert policy.allow_private and policy.allow_hosts == frozenset({"models.lan", "10.0.0.0/8"})
    assert url_policy(Settings.from_env({"PODKIT_VOLUME_DIR": ""})) == UrlPolicy()
    with pytest.raises(ConfigError, match="PODKIT_URL_ALLOW_HOSTS"):
        Settings.from_env({"PODKIT_URL_ALLOW_HOSTS": "*", "PODKIT_VOLUME_DIR": ""})
    with pytest.raises(ConfigError, match="PODKIT_URL_ALLOW_PRIVATE"):
        Settings.from_env({"PODKIT_URL_ALLOW_PRIVATE": "maybe", "PODKIT_VOLUME_DIR": ""})
