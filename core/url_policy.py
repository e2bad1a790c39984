"""Outbound URL policy: which URLs and which resolved addresses PodKit may fetch from.

Only ``http``/``https``. Private (RFC 1918, CGNAT, IPv6 ULA), loopback, link-local (including the
cloud metadata address 169.254.169.254) and other non-global addresses are refused by default,
because a URL in a download request or manifest must not reach the pod's own services or the
provider's metadata endpoint. The check runs twice: :func:`check_url` on every URL (the first one
and each redirect) and :func:`check_address` on every address DNS returns for a host
(``backends/url_guard.py`` wires both into aiohttp), so a public name that resolves to a private
address, or a redirect to one, is refused too.

Two explicit allowances: ``allow_private`` (tests, pods that mirror models on the LAN) admits
private, loopback and shared addresses but never link-local/metadata, unspecified (``0.0.0.0``),
multicast or reserved ones; ``allow_hosts`` names hosts, addresses or networks (``10.0.0.0/8``)
admitted whatever they resolve to, the only way to reach a link-local address.

:func:`redact_url` is the other half of URL hygiene: what a log line, an event or an error may show
of a URL (no token, no signature, no password).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from .errors import Forbidden, InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})
MAX_URL_LENGTH = 8192
_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*\.?$"
)
_LEGACY_PART_RE = re.compile(r"^(0x[0-9a-f]*|0[0-7]*|[1-9][0-9]*)$")
#: Shared address space (RFC 6598) is not ``is_private`` in every Python version; treat it as private.
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
#: Cloud metadata and host-agent endpoints outside 169.254.0.0/16: AWS's IPv6 IMDS (in the ULA range),
#: Alibaba's (in the shared range) and Azure's wire server (a global address). They are refused like
#: link-local addresses, so ``allow_private`` never opens them; only ``allow_hosts`` can.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "168.63.129.16")
)

_SECRET_QUERY_KEYS = frozenset(
    {"token", "api_key", "apikey", "key", "access_token", "auth", "signature", "sig",
     "x-amz-signature", "x-amz-credential", "x-amz-security-token", "policy", "key-pair-id"}
)  # fmt: skip


@dataclass(frozen=True)
class UrlPolicy:
    """What outbound fetches may reach.

    ``allow_hosts`` holds lower-case host names, IP addresses or CIDR networks (as text) that are
    admitted whatever addresses they resolve to; ``allow_private`` admits private and loopback
    addresses for every host.
    """

    allow_hosts: frozenset[str] = frozenset()
    allow_private: bool = False

    def host_allowed(self, host: str) -> bool:
        """Whether ``host`` (a name or an address) is on the allow-list."""
        host = host.strip("[]").rstrip(".").lower()
        if host in self.allow_hosts:
            return True
        address = parse_ip(host)
        return address is not None and any(address in net for net in self._networks())

    def _networks(self) -> Iterable[IPNetwork]:
        for entry in self.allow_hosts:
            if "/" in entry:
                yield ipaddress.ip_network(entry, strict=False)


def parse_allow_hosts(text: str) -> tuple[str, ...]:
    """Parse a comma-separated allow-list of host names, addresses and CIDR networks.

    Raises:
        InvalidRequest: an entry is a wildcard (``*``), or not a host name, address or network.
    """
    entries: list[str] = []
    for raw in text.split(","):
        entry = raw.strip().lower().rstrip(".")
        if not entry:
            continue
        if "*" in entry:
            raise InvalidRequest(
                f"allow-list entry {raw.strip()!r}: wildcards are not allowed; name each host"
            )
        if "/" in entry:
            try:
                entry = str(ipaddress.ip_network(entry, strict=False))
            except ValueError as e:
                raise InvalidRequest(f"allow-list entry {raw.strip()!r} is not a network: {e}") from e
        elif parse_ip(entry.strip("[]")) is not None:
            entry = str(parse_ip(entry.strip("[]")))
        elif not _HOSTNAME_RE.match(entry):
            raise InvalidRequest(f"allow-list entry {raw.strip()!r} is not a host name, address or network")
        entries.append(entry)
    return tuple(dict.fromkeys(entries))


def parse_ip(host: str) -> IPAddress | None:
    """``host`` as an IP address, accepting every spelling a resolver would accept, else None.

    Besides the normal forms this reads the legacy ``inet_aton`` spellings that ``getaddrinfo``
    honours (``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``127.1``), so a policy check cannot
    be sidestepped by writing an address differently than Python's ``ipaddress`` expects.
    """
    host = host.strip("[]").rstrip(".").lower()
    if not host:
        return None
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_LEGACY_PART_RE.match(p) for p in parts):
        return None
    try:
        values = [_legacy_int(p) for p in parts]
    except ValueError:
        return None
    limits = [2**32, 2**24, 2**16, 2**8][len(parts) - 1]
    *head, last = values
    if any(v > 255 for v in head) or last >= limits:
        return None
    number = 0
    for v in head:
        number = number * 256 + v
    number = (number << (8 * (4 - len(head)))) | last if head else last
    return ipaddress.IPv4Address(number)


def _legacy_int(part: str) -> int:
    """One part of a legacy ``inet_aton`` address: hex (``0x7f``), octal (``0177``) or decimal."""
    if part.startswith("0x"):
        return int(part[2:] or "0", 16)
    if part.startswith("0") and part != "0":
        return int(part, 8)
    return int(part)


def address_kind(address: IPAddress) -> str:
    """Classify ``address``: ``global``, ``private``, ``loopback``, ``link_local``, or ``blocked``.

    IPv4-mapped and NAT64/6to4-embedded IPv6 addresses are classified by the IPv4 address inside.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in ipaddress.ip_network("64:ff9b::/96"):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return address_kind(embedded)
    if address in METADATA_ADDRESSES:
        return "link_local"
    if address.is_loopback:  # before is_reserved: ::1 lies in the reserved ::/8
        return "loopback"
    if address.is_unspecified or address.is_multicast or address.is_reserved:
        return "blocked"
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address("255.255.255.255"):
        return "blocked"
    if address.is_link_local:
        return "link_local"
    if address.is_private or (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT):
        return "private"
    if not address.is_global:
        return "blocked"
    return "global"


def check_address(host: str, address: str, policy: UrlPolicy) -> None:
    """Refuse connecting to ``address`` (what ``host`` resolved to) unless the policy admits it.

    Raises:
        Forbidden: the address is not global and neither allowance covers it; the message names
            the host, the address and the setting that would admit it.
    """
    ip = parse_ip(address)
    if ip is None:
        raise Forbidden(f"{host!r} resolved to {address!r}, which is not an IP address")
    kind = address_kind(ip)
    if kind == "global" or policy.host_allowed(host) or policy.host_allowed(str(ip)):
        return
    if kind in ("private", "loopback") and policy.allow_private:
        return
    label = {"link_local": "a link-local or metadata", "blocked": "a reserved"}.get(kind, f"a {kind}")
    hint = (
        "add the host to PODKIT_URL_ALLOW_HOSTS"
        if kind in ("link_local", "blocked")
        else "set PODKIT_URL_ALLOW_PRIVATE=1 or add the host to PODKIT_URL_ALLOW_HOSTS"
    )
    raise Forbidden(f"refusing {host!r}: {ip} is {label} address ({hint})")


def split_url(url: object) -> SplitResult:
    """Check ``url``'s shape (not its host's addresses) and return it split.

    Raises:
        InvalidRequest: not a URL, another scheme (``file:``, ``ftp:``, ``data:``…), no host,
            credentials in the URL, whitespace/control characters, or an over-long URL.
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidRequest("url must be a non-empty string")
    if len(url) > MAX_URL_LENGTH:
        raise InvalidRequest(f"url is longer than {MAX_URL_LENGTH} characters")
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise InvalidRequest(f"url {url[:80]!r} contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as e:
        raise InvalidRequest(f"url {url[:80]!r} is malformed: {e}") from e
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        shown = scheme or "no scheme"
        raise InvalidRequest(f"url {url[:80]!r}: only http and https are fetched ({shown} is not)")
    if not parts.hostname:
        raise InvalidRequest(f"url {url[:80]!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidRequest("url must not carry credentials (user:password@); use the token settings")
    return parts


def check_url(url: str, policy: UrlPolicy) -> None:
    """Refuse ``url`` unless it is an ``http(s)`` URL whose host the policy admits.

    Host names are checked again after DNS resolution (:func:`check_address`); here only
    addresses written in the URL itself (in any spelling) can be judged.

    Raises:
        InvalidRequest: what :func:`split_url` refuses.
        Forbidden: the URL names a refused address.
    """
    host = split_url(url).hostname or ""
    ip = parse_ip(_ascii_host(host))
    if ip is not None:
        check_address(host, str(ip), policy)


def _ascii_host(host: str) -> str:
    """``host`` as the HTTP client will send it: IDNA maps ``１２７.０.０.１`` to ``127.0.0.1``."""
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as e:
        raise InvalidRequest(f"host {host[:80]!r} is not a valid international domain name") from e


def redact_url(url: str) -> str:
    """``url`` with credential-like query values (``token=``, signatures) replaced by ``REDACTED``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid url>"
    if not parts.query and parts.password is None:
        return url
    query = [
        (k, "REDACTED" if k.lower() in _SECRET_QUERY_KEYS else v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
    ]
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="/:"), parts.fragment))
