"""The console's pure pieces: SVG charts drawn on the server, and the sealed session cookie."""

from __future__ import annotations

import math
import re
from pathlib import Path
from xml.etree import ElementTree

import pytest

from orchestrator.keys import LocalFileKek
from orchestrator.web import charts
from orchestrator.web.session import WebSession, new_session, seal, unseal

SVG = "{http://www.w3.org/2000/svg}"


def _points(svg: str) -> list[tuple[float, float]]:
    root = ElementTree.fromstring(svg)
    line = root.find(f"{SVG}polyline")
    assert line is not None
    return [tuple(map(float, p.split(","))) for p in line.attrib["points"].split()]  # type: ignore[misc]


def test_line_chart_is_well_formed_svg_with_the_points_in_order_and_the_cap_above_them() -> None:
    # Execute
    svg = charts.line_chart(
        [(2, 0.5), (1, 0.2), (3, 0.9)], title="eps <&>", x_label="event", y_label="epsilon", reference=2.0
    )

    # Assert: parses as XML (text escaped), x increases, higher epsilon is higher on screen (smaller y).
    root = ElementTree.fromstring(svg)
    points = _points(svg)
    assert [x for x, _ in points] == sorted(x for x, _ in points)
    assert points[0][1] > points[1][1] > points[2][1]
    cap = root.find(f"{SVG}line")
    assert cap is not None and cap.attrib["class"] == "reference"
    assert float(cap.attrib["y1"]) < min(y for _, y in points)  # the cap is drawn above the curve
    assert root.find(f"{SVG}title") is not None and root.find(f"{SVG}title").text == "eps <&>"  # type: ignore[union-attr]
    assert "style=" not in svg  # the console's CSP allows no inline style


def test_line_chart_draws_inf_at_the_top_and_handles_one_point_and_no_points() -> None:
    # Execute
    infinite = charts.line_chart(
        [(1, 0.3), (2, math.inf)], title="t", x_label="x", y_label="y", reference=1.0
    )
    single = charts.line_chart([(1, 5.0)], title="t", x_label="x", y_label="y")
    empty = charts.line_chart([], title="t", x_label="x", y_label="y", reference=8.0)

    # Assert: every coordinate is a finite number; inf is marked.
    for svg in (infinite, single, empty):
        ElementTree.fromstring(svg)
        numbers = re.findall(r' (?:x|y|x1|y1|x2|y2|cx|cy)="([^"]+)"', svg)
        assert all(math.isfinite(float(n)) for n in numbers)
    assert ">inf<" in infinite and _points(infinite)[1][1] == 16.0
    assert len(_points(single)) == 1
    assert "no data yet" in empty


@pytest.mark.parametrize(
    ("spent", "cap", "share"),
    [(0.0, 8.0, 0.0), (4.0, 8.0, 0.5), (9.0, 8.0, 1.0), (math.inf, 8.0, 1.0), (-1.0, 8.0, 0.0)],
)
def test_share_bar_fills_spent_over_cap_clamped(spent: float, cap: float, share: float) -> None:
    # Execute
    svg = charts.share_bar(spent, cap, "ok", width=100)

    # Assert
    fill = ElementTree.fromstring(svg).find(f"{SVG}rect[@class='fill']")
    assert fill is not None and float(fill.attrib["width"]) == pytest.approx(share * 100)


def test_a_sealed_session_opens_only_unchanged_unexpired_and_under_its_kek(tmp_path: Path) -> None:
    # Prepare
    kek = LocalFileKek(tmp_path / "kek.json")
    other = LocalFileKek(tmp_path / "other.json")
    session = new_session("header.payload.signature", expires_at=2_000_000_000.0)

    # Execute
    value = seal(kek, session)
    version, _, body = value.partition(".")
    flipped = f"{version}.{body[:-2]}{'A' if body[-2] != 'A' else 'B'}{body[-1]}"

    # Assert: the token is not readable in the cookie; tampering, another KEK, expiry all fail.
    assert "header" not in value and "signature" not in value
    assert unseal(kek, value, now=1_900_000_000.0) == session
    assert unseal(kek, flipped, now=1_900_000_000.0) is None
    assert unseal(other, value, now=1_900_000_000.0) is None
    assert unseal(kek, value, now=2_000_000_000.0) is None
    assert unseal(kek, None) is None and unseal(kek, "garbage") is None and unseal(kek, "9.@@@") is None
    assert unseal(kek, "1." + "A" * 5000) is None


def test_a_kek_rotation_keeps_sessions_open(tmp_path: Path) -> None:
    # Prepare
    kek = LocalFileKek(tmp_path / "kek.json")
    value = seal(kek, new_session("t", expires_at=2_000_000_000.0))

    # Execute
    kek.rotate()

    # Assert
    assert unseal(kek, value, now=1.0) is not None
    assert seal(kek, new_session("t", 2e9)).startswith("2.")


def test_csrf_check_is_exact() -> None:
    # Prepare
    session = WebSession("t", "abc", 1.0)

    # Assert
    assert session.csrf_ok("abc")
    assert not session.csrf_ok(None) and not session.csrf_ok("") and not session.csrf_ok("abd")
    assert new_session("t", 1.0).csrf != new_session("t", 1.0).csrf
