"""A STIX 2.1 bundle as a feed publishes it, built with the ``stix2`` library."""

from __future__ import annotations

import stix2


def bundle_json(
    address: str = "127.0.0.5", agent: str = "EvilBot/6.6", domain: str = "evil-llm.example"
) -> str:
    feed = stix2.Identity(name="ACME CTI", identity_class="organization")
    indicators = [
        stix2.Indicator(
            name="C2 address",
            pattern=f"[ipv4-addr:value = '{address}'] OR [ipv4-addr:value = '192.0.2.0/24']",
            pattern_type="stix",
            valid_from="2026-01-01T00:00:00Z",
            indicator_types=["malicious-activity"],
            confidence=90,
            created_by_ref=feed.id,
        ),
        stix2.Indicator(
            name="Scanner",
            pattern=(
                f"[network-traffic:extensions.'http-request-ext'.request_header.'User-Agent' = '{agent}']"
            ),
            pattern_type="stix",
            valid_from="2026-01-01T00:00:00Z",
            indicator_types=["anomalous-activity"],
            confidence=60,
            created_by_ref=feed.id,
        ),
        stix2.Indicator(
            name="Phishing LLM proxy",
            pattern=f"[domain-name:value = '{domain}'] OR [url:value = 'https://paste.example/raw/x/']",
            pattern_type="stix",
            valid_from="2026-01-01T00:00:00Z",
            created_by_ref=feed.id,
        ),
        stix2.Indicator(
            name="Poisoned weights",
            pattern="[file:hashes.'SHA-256' = '" + "ef" * 32 + "']",
            pattern_type="stix",
            valid_from="2026-01-01T00:00:00Z",
            confidence=95,
            created_by_ref=feed.id,
        ),
        stix2.Indicator(
            name="Revoked",
            pattern="[ipv4-addr:value = '198.51.100.77']",
            pattern_type="stix",
            valid_from="2026-01-01T00:00:00Z",
            revoked=True,
            created_by_ref=feed.id,
        ),
    ]
    return str(stix2.Bundle(feed, *indicators).serialize(pretty=True))
