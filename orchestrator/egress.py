"""Egress policy for tenant provider endpoints: no requests to internal addresses (SSRF).

A tenant admin chooses ``api_endpoint``; without a policy a config pointing at
``169.254.169.254``, ``127.0.0.1:5432`` or ``[::1]`` makes the service a proxy into our own network
(and ``/usage``'s error codes and latencies a port scanner). The policy refuses every address that
is not globally routable: loopback, private (RFC 1918, ULA), link-local, carrier-grade NAT, shared,
reserved, multicast, unspecified, documentation ranges, IPv4-mapped/6to4/NAT64 forms of those.

It is checked twice:

- when a config is saved (``check_endpoint``): the host must parse; a literal address in any
  spelling the resolver accepts (``0x7f000001``, ``2130706433``, ``0177.0.0.1``, ``127.1``,
  ``[::ffff:127.0.0.1]``) is normalised with ``inet_aton``/``ipaddress`` and refused when internal;
- at connect time, by the HTTP client (``allowed_address``) on every address the name RESOLVED to,
  and the connection goes to that checked address, so DNS cannot rebind a public name to an
  internal address between the check and the connect.

``ACCUTE_EGRESS_ALLOW`` (comma-separated CIDRs or host names) lets self-hosted providers through,
e.g. ollama on ``10.0.0.5`` or a test provider on ``127.0.0.1``. A host name on the list is
allowed whatever it resolves to. The platform fallback, configured by the operator, is exempt.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Globally routable by ``is_global`` but not somewhere a provider lives.
_EXTRA_BLOCKED: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("100.64.0.0/10"),  # carrier-grade NAT (is_global is False, listed for clarity)
    ipaddress.ip_network("192.0.0.0/24"),
    ipaddress.ip_network("198.18.0.0/15"),
    ipaddress.ip_network("224.0.0.0/4"),
    ipaddress.ip_network("240.0.0.0/4"),
    ipaddress.ip_network("ff00::/8"),
)


class EgressError(ValueError):
    """The endpoint is not allowed (its message says why and what to do)."""


def parse_address(host: str) -> IPAddress | None:
    """``host`` as an address if it is one in any spelling a resolver would accept, else None."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    if text and all(c in "0123456789abcdefxABCDEFX." for c in text):
        try:  # inet_aton accepts hex, octal, and 1- to 3-part forms (0x7f000001, 127.1, 2130706433)
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    return None


def is_internal(address: IPAddress) -> bool:
    """Whether ``address`` is anything but a globally routable unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return is_internal(mapped)
        if address in ipaddress.ip_network("64:ff9b::/96"):
            return is_internal(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        if address.teredo is not None:
            return True
    if not address.is_global or address.is_multicast or address.is_unspecified or address.is_reserved:
        return True
    return any(address in network for network in _EXTRA_BLOCKED if network.version == address.version)


@dataclass(frozen=True)
class EgressPolicy:
    """Which internal destinations are allowed anyway (``ACCUTE_EGRESS_ALLOW``)."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, allow: str) -> EgressPolicy:
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for item in (part.strip() for part in allow.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(tuple(networks), frozenset(hosts))

    def allowed_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.hosts

    def allowed_address(self, address: IPAddress) -> bool:
        if not is_internal(address):
            return True
        return any(address.version == n.version and address in n for n in self.networks)

    def check_endpoint(self, url: str) -> None:
        """Refuse an endpoint whose host is an internal address literal (names are checked at connect)."""
        host = urlsplit(url).hostname or ""
        if self.allowed_host(host):
            return
        address = parse_address(host)
        if address is not None and not self.allowed_address(address):
            raise EgressError(
                f"api_endpoint points at an internal address ({address}); providers must be on the "
                "public internet, or the operator lists the address in ACCUTE_EGRESS_ALLOW"
            )
