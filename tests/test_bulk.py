"""The edge-list parser of ``load-friends``: whole chunks of plain lines at once, every other
line on its own, the same pairs and the same bad-line reports either way."""

from __future__ import annotations

from presenced import bulk


def test_plain_and_other_chunks_give_every_pair_and_each_bad_line_its_number():
    lines = [f"u{i} u{i + 1}\n" for i in range(40_000)]
    specials = {20_000: "Bob u7  # a comment, a capital, two spaces\n",
                20_001: "u5 u5\n",
                35_000: "u1 someone@elsewhere.example\n",
                35_001: "\n",
                39_999: "u9 u8"}  # the last line without its newline
    for index, line in specials.items():
        lines[index] = line
    bad: list[tuple[int, str]] = []
    pairs = list(bulk.parse_edges(lines, "x", lambda number, line, why: bad.append(
        (number, why)), domains={"x"}))
    expected = [(f"u{i}@x", f"u{i + 1}@x") for i in range(40_000) if i not in specials]
    expected.insert(20_000, ("bob@x", "u7@x"))
    expected.append(("u9@x", "u8@x"))
    assert pairs == expected
    assert bad == [(20_002, "a user cannot be their own friend"),
                   (35_001, "a user on a domain this server does not serve")]


def test_a_default_domain_with_capitals_is_the_same_user_on_either_path():
    plain = list(bulk.parse_edges(["a b\n"] * 20_000, "Example.ORG", print))
    other = list(bulk.parse_edges(["a  b\n"] * 20_000, "Example.ORG", print))
    assert plain == other == [("a@example.org", "b@example.org")] * 20_000
