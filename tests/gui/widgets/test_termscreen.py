"""TermScreen (no Qt): its fast ASCII draw path must leave exactly the cells
stock pyte would, and its additions (alternate screen, scrollback on resize)
behave like xterm's."""

from __future__ import annotations

import pyte
from hypothesis import given, settings
from hypothesis import strategies as st

from app.widgets._termscreen import TermScreen

PIECES = [
    b"hello world ",
    b"x" * 30,
    b"\r\n",
    b"\n",
    b"\r",
    b"\t",
    b"\x08",
    b"\x1b[31m",
    b"\x1b[1;44m",
    b"\x1b[0m",
    b"\x1b[38;5;208m",
    b"\x1b[7m",
    b"\x1b[H",
    b"\x1b[5;10H",
    b"\x1b[2J",
    b"\x1b[K",
    b"\x1b[4h",  # insert mode (pyte's own path)
    b"\x1b[4l",
    b"\x1b[?7l",  # no autowrap (pyte's own path)
    b"\x1b[?7h",
    b"\x1b(0lqqk\x1b(B",  # line drawing charset
    "héllo 日本".encode(),
    b"\x1b[3;6r",
    b"\x1b[r",
    b"\x1bM",
    b"\x1b[2@",
    b"\x1b[3P",
]


def cells(screen: pyte.Screen) -> list[list[tuple[object, ...]]]:
    return [
        [tuple(screen.buffer[y][x]) for x in range(screen.columns)] for y in range(screen.lines)
    ]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=80))
def test_fast_draw_matches_pyte(parts: list[bytes]) -> None:
    data = b"".join(parts)
    ours = TermScreen(40, 8, history=100)
    stock = pyte.Screen(40, 8)
    pyte.ByteStream(ours).feed(data)
    pyte.ByteStream(stock).feed(data)
    assert cells(ours) == cells(stock)
    assert (ours.cursor.x, ours.cursor.y) == (stock.cursor.x, stock.cursor.y)


def test_scrollback_only_from_full_screen_scrolls() -> None:
    screen = TermScreen(20, 5, history=100)
    stream = pyte.ByteStream(screen)
    stream.feed(b"\r\n".join(b"l%d" % i for i in range(8)))
    assert screen.pushed == 3
    # A region from the top (status line kept below it) feeds the scrollback,
    # as in xterm...
    stream.feed(b"\x1b[1;4r\x1b[4;1H\n\n\x1b[r")
    assert screen.pushed == 5
    # ...a region starting lower down does not.
    stream.feed(b"\x1b[2;4r\x1b[4;1H\n\n\n\x1b[r")
    assert screen.pushed == 5


def test_alternate_screen_keeps_scrollback_clean() -> None:
    screen = TermScreen(20, 5, history=100)
    stream = pyte.ByteStream(screen)
    stream.feed(b"prompt\r\n\x1b[?1049h")
    stream.feed(b"\r\n".join(b"app %d" % i for i in range(20)))
    assert screen.pushed == 0
    stream.feed(b"\x1b[?1049l")
    assert screen.display[0].rstrip() == "prompt"
    assert (screen.cursor.x, screen.cursor.y) == (0, 1)


def test_shrink_pushes_lines_above_cursor() -> None:
    screen = TermScreen(20, 6, history=100)
    stream = pyte.ByteStream(screen)
    stream.feed(b"\r\n".join(b"r%d" % i for i in range(6)))
    screen.resize(3, 20)
    assert [line.rstrip() for line in screen.display] == ["r3", "r4", "r5"]
    assert screen.pushed == 3
    assert screen.cursor.y == 2
    screen.resize(6, 20)
    assert screen.display[2].rstrip() == "r5"


def test_scrollback_lines_are_compact_and_faithful() -> None:
    screen = TermScreen(20, 2, history=100)
    stream = pyte.ByteStream(screen)
    stream.feed("ab\x1b[41m  \x1b[0m日\r\nx\r\ny".encode())
    first = screen.scrollback[0]
    assert type(first) is tuple  # plain tuples: untracked by the cyclic GC
    assert [c.data for c in first] == ["a", "b", " ", " ", "日", ""]
    assert first[2].bg == "red"  # coloured blanks are content, kept
    assert len(screen.scrollback[0]) == 6  # trailing default blanks not stored
