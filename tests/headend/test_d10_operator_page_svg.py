"""D10: the operator page's SVG builders (pure): empty data, one point, many, scaling."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from headend.web import svg

NS = "{http://www.w3.org/2000/svg}"
_, TOP, _, INNER_H = svg._box()


def parsed(markup: str) -> ET.Element:
    """The markup as XML (it must be well-formed to be inline SVG)."""
    return ET.fromstring(markup)


def ys(root: ET.Element) -> list[float]:
    out = [float(r.get("y", "0")) for r in root.iter(f"{NS}rect")]
    for p in root.iter(f"{NS}polyline"):
        out += [float(pt.split(",")[1]) for pt in (p.get("points") or "").split()]
    return out


@pytest.mark.req("D10")
@pytest.mark.timeout(10)
def test_d10_scale_maps_values_into_the_box() -> None:
    assert svg.scale(0, 10, 200) == 200
    assert svg.scale(10, 10, 200) == 0
    assert svg.scale(5, 10, 200) == 100
    assert svg.scale(50, 10, 200) == 0  # clamped: never above the box
    assert svg.scale(-5, 10, 200) == 200
    assert svg.scale(3, 0, 200) == 200


@pytest.mark.req("D10")
@pytest.mark.timeout(10)
def test_d10_empty_plots_say_no_data() -> None:
    for markup in (svg.bars("b", [], [], []), svg.lines("l", [], {}), svg.lines("l", ["d"], {})):
        root = parsed(markup)
        assert [t.text for t in root.iter(f"{NS}text") if t.get("class") == "empty"] == ["no data"]
        assert not list(root.iter(f"{NS}polyline"))


@pytest.mark.req("D10")
@pytest.mark.timeout(10)
def test_d10_one_point_is_a_dot_and_one_bar_fills_the_box() -> None:
    root = parsed(svg.lines("one", ["2024-03-09"], {"missing": [4]}))
    (dot,) = root.iter(f"{NS}circle")
    assert float(dot.get("cy", "-1")) == pytest.approx(TOP)
    root = parsed(svg.bars("one", ["g"], [2], [2]))
    rects = list(root.iter(f"{NS}rect"))
    assert [r.get("class") for r in rects] == ["bar expected", "bar done"]
    assert all(float(r.get("y", "-1")) == pytest.approx(TOP) for r in rects)
    assert all(float(r.get("height", "0")) == pytest.approx(INNER_H) for r in rects)


@pytest.mark.req("D10")
@pytest.mark.timeout(10)
def test_d10_many_values_scale_into_the_box_and_gaps_cut_lines() -> None:
    labels = [f"d{i}" for i in range(30)]
    values: list[float | None] = [float(i * 1000) for i in range(30)]
    values[10] = None
    root = parsed(svg.lines("many", labels, {"a": values, "b": [1.0] * 30}, "Wh"))
    assert len(list(root.iter(f"{NS}polyline"))) == 3  # "a" cut in two at the gap, "b"
    assert all(TOP - 0.05 <= y <= TOP + INNER_H + 0.05 for y in ys(root))
    assert min(ys(root)) == pytest.approx(TOP)  # the largest value touches the top
    root = parsed(svg.bars("many", labels, list(range(30)), [40] * 30))
    assert len(list(root.iter(f"{NS}rect"))) == 60
    assert all(TOP - 0.05 <= y <= TOP + INNER_H + 0.05 for y in ys(root))


@pytest.mark.req("D10")
@pytest.mark.timeout(10)
def test_d10_labels_are_escaped() -> None:
    markup = svg.bars('<b>"x"</b>', ["<script>"], [1], [1])
    parsed(markup)
    assert "<script>" not in markup and "<b>" not in markup
    assert re.search(r"&lt;script&gt;", markup)
