"""Matching against the in-memory threat index: addresses, ranges, domains, URLs, agents, hashes."""

from __future__ import annotations

import pytest

from orchestrator.security import threat_intel
from orchestrator.security.threat_index import ThreatIndex
from schema.errors import InvalidInputError

ROWS = [
    ("ip", "203.0.113.9", "high"),
    ("ip", "198.51.100.0/24", "medium"),
    ("ip", "198.51.100.128/25", "critical"),
    ("ip", "10.20.0.0/16", "low"),
    ("ip", "2001:db8::/32", "high"),
    ("domain", "evil.example", "high"),
    ("url", "https://cdn.example.org/payload", "medium"),
    ("user_agent", "sqlmap/1.7", "high"),
    ("hash", "ab" * 32, "critical"),
    ("email", "mallory@mail.example", "high"),
    ("email", "@spam.example", "medium"),
]


def test_addresses_and_ranges() -> None:
    index = ThreatIndex(ROWS)
    assert index.match_ip("203.0.113.9").indicator == "ip:203.0.113.9"  # type: ignore[union-attr]
    assert index.match_ip("203.0.113.10") is None
    assert index.match_ip("198.51.100.7").severity == "critical"  # type: ignore[union-attr]  # merged, worst kept
    assert index.match_ip("10.20.255.255") is not None and index.match_ip("10.21.0.0") is None
    assert index.match_ip("2001:db8:1::5") is not None and index.match_ip("2001:db9::1") is None
    assert index.match_ip("::ffff:10.20.1.1") is not None
    assert index.match_ip(None) is None and index.match_ip("not-an-address") is None


def test_domains_urls_agents_and_hashes() -> None:
    index = ThreatIndex(ROWS)
    assert index.match_domain("api.Evil.Example.") is not None
    assert index.match_domain("notevil.example") is None
    assert index.match_url("https://llm.evil.example/v1") is not None
    assert index.match_url("https://CDN.example.org/payload/v1/chat") is not None
    assert index.match_url("https://cdn.example.org/other") is None
    assert index.match_url("http://10.20.3.4:8080/v1") is not None
    assert index.match_agent("sqlmap/1.7") is not None and index.match_agent("curl/8") is None
    assert index.match_hash("AB" * 32) is not None and index.match_hash("cd" * 32) is None


def test_an_empty_index_matches_nothing() -> None:
    index = ThreatIndex()
    assert index.match_ip("203.0.113.9") is None and index.match_url("https://evil.example") is None


def test_email_addresses_and_mail_domains() -> None:
    index = ThreatIndex(ROWS)
    # The whole address, case-insensitively; another address at the same domain is not listed.
    assert index.match_email(" Mallory@Mail.Example ").indicator == "email:mallory@mail.example"  # type: ignore[union-attr]
    assert index.match_email("alice@mail.example") is None
    # A listed mail domain covers its subdomains; a listed domain covers addresses there.
    assert index.match_email("bob@eu.spam.example").indicator == "email:@spam.example"  # type: ignore[union-attr]
    assert index.match_email("carol@mx.evil.example").indicator == "domain:evil.example"  # type: ignore[union-attr]
    assert index.match_email("dave@notspam.example") is None
    assert index.match_email("not-an-address") is None and index.match_email(None) is None


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("Mallory@Mail.Example.", "mallory@mail.example"),
        ("mailto:eve@x.example", "eve@x.example"),
        ("@Spam.Example", "@spam.example"),
        ("spam.example", "@spam.example"),
    ],
)
def test_email_indicators_are_normalised(written: str, stored: str) -> None:
    assert threat_intel.normalize("email", written) == stored


@pytest.mark.parametrize("written", ["a@@b.example", "a b@c.example", "a@", "x@.example", "<a@b.example>"])
def test_malformed_email_indicators_are_refused(written: str) -> None:
    with pytest.raises(InvalidInputError, match="email indicator"):
        threat_intel.normalize("email", written)
