"""The pyte screen behind :class:`app.widgets.terminal.TerminalWidget`.

pyte 0.8 models a VT220-ish terminal but lacks a few things a modern
full-screen program relies on, so this module fills them in:

* the alternate screen (``?47``, ``?1047``, ``?1049``) used by ``vi``, ``top``,
  ``less``: without it, leaving ``vi`` would leave its last frame on screen and
  the editor's scrolling would pollute the scrollback;
* replies to device status / attribute queries go to a callback, so they reach
  the remote side like a real terminal's answers do;
* scrollback is kept in a deque of compact frozen lines and drawn from there;
  the live screen is never paged (``prev_page``/``next_page`` are not used),
  so the per-event wrapper of :class:`pyte.HistoryScreen` is bypassed for
  speed;
* shrinking the screen pushes the lines above the cursor into the scrollback
  instead of silently dropping them, as xterm does.

No Qt here: the screen is plain data, testable on its own.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable
from itertools import repeat
from typing import Any, Protocol

import pyte
from pyte import modes as mo
from pyte.screens import Char, StaticDefaultDict

#: Private mode numbers that switch to the alternate screen.
_ALT_SCREEN_MODES = frozenset({47, 1047, 1049})
#: DEC application cursor keys (``?1``); pyte stores private modes shifted by 5
#: and has no constant for this one.
APP_CURSOR_KEYS = 1 << 5
#: xterm's bracketed paste mode (``?2004``), shifted the same way.
BRACKETED_PASTE = 2004 << 5

Line = StaticDefaultDict[int, Char]


class CellRow(Protocol):
    """What the view reads from a row: a live screen line or a scrollback line."""

    def __getitem__(self, x: int, /) -> Char: ...

    def __len__(self) -> int: ...


_BLANK = Char(" ", "default", "default")


class FrozenLine:
    """A scrollback line, stored as a plain tuple of cells.

    pyte keeps a line as a dict subclass, which CPython's cyclic GC tracks
    forever: 10,000 of them made each full collection cost ~30 ms on the GUI
    thread. Plain tuples of (shared, immutable) cells are untracked after
    their first collection. Trailing blanks are not stored.
    """

    __slots__ = ("cells",)

    def __init__(self, cells: tuple[Char, ...]) -> None:
        self.cells = cells

    def __getitem__(self, x: int, /) -> Char:
        cells = self.cells
        return cells[x] if x < len(cells) else _BLANK

    def __len__(self) -> int:
        return len(self.cells)


def freeze(line: Line, columns: int) -> tuple[Char, ...]:
    """The cells of ``line`` up to its last non-blank one.

    On the hot path of a scrolling flood (once per line), hence the C-level
    ``map`` over only the columns ever written.
    """
    if not line:
        return ()
    width = min(columns, max(line) + 1)
    cells = list(map(line.get, range(width), repeat(line.default, width)))
    end = width
    while end and cells[end - 1] == _BLANK:
        end -= 1
    return tuple(cells[:end])


#: A charset table that maps nothing (see TermScreen.draw).
_IDENTITY = "".join(map(chr, range(256)))


class TermScreen(pyte.HistoryScreen):
    """A :class:`pyte.HistoryScreen` with an alternate screen and replies."""

    def __init__(
        self,
        columns: int,
        lines: int,
        history: int,
        reply: Callable[[str], None] | None = None,
    ) -> None:
        self._reply = reply
        self._main_buffer: dict[int, Line] | None = None
        self._main_cursor: pyte.screens.Cursor | None = None
        #: Lines ever pushed into the scrollback; never decreases (except on
        #: clear), so it gives lines a stable absolute number for selections.
        self.pushed = 0
        self._scrollback: deque[tuple[Char, ...]] = deque(maxlen=history)
        self._cells: dict[Char, dict[str, Char]] = {}
        super().__init__(columns, lines, history=history)

    # HistoryScreen wraps every event with before/after hooks that page the
    # screen back to the bottom, through a Python-level __getattribute__.
    # Scrollback is rendered from our own deque without paging, so those hooks
    # are pure overhead; assigning object's slot wrapper lets CPython use its
    # C attribute lookup again (a Python override slows every access ~10x).
    __getattribute__ = object.__getattribute__

    def draw(self, data: str) -> None:
        """pyte's draw, with a fast path for printable ASCII under autowrap.

        pyte builds every cell with ``namedtuple._replace`` after a ``wcwidth``
        lookup, about 2 µs a character: a flood of output then parses at well
        under 1 MB/s. Printable ASCII is one cell wide by definition, and cells
        are immutable, so one cell per (character, attributes) is built once
        and shared. Anything else (wide, combining, charset-mapped, insert mode,
        no autowrap) takes pyte's own path, unchanged.
        """
        data = data.translate(self.g1_charset if self.charset else self.g0_charset)
        mode = self.mode
        if not (data.isascii() and data.isprintable()) or mo.IRM in mode or (mo.DECAWM not in mode):
            # Already translated: draw with the identity charset to avoid a
            # second translation.
            saved = self.g0_charset, self.g1_charset
            self.g0_charset = self.g1_charset = _IDENTITY
            try:
                super().draw(data)
            finally:
                self.g0_charset, self.g1_charset = saved
            return
        cursor = self.cursor
        columns = self.columns
        attrs = cursor.attrs
        cells = self._cells.get(attrs)
        if cells is None:
            if len(self._cells) > 256:
                self._cells.clear()
            cells = self._cells[attrs] = {}
        pos, end = 0, len(data)
        while pos < end:
            if cursor.x >= columns:
                cursor.x = columns
                self.dirty.add(cursor.y)
                self.carriage_return()
                self.linefeed()
            line = self.buffer[cursor.y]
            x = cursor.x
            take = min(columns - x, end - pos)
            for char in data[pos : pos + take]:
                cell = cells.get(char)
                if cell is None:
                    cell = cells[char] = attrs._replace(data=char)
                line[x] = cell
                x += 1
            cursor.x = x
            pos += take
        self.dirty.add(cursor.y)

    @property
    def in_alternate_screen(self) -> bool:
        return self._main_buffer is not None

    @property
    def scrollback(self) -> deque[tuple[Char, ...]]:
        """The scrollback lines, oldest first, as tuples of cells (a bounded deque)."""
        return self._scrollback

    def _new_buffer(self) -> dict[int, Line]:
        return defaultdict(lambda: StaticDefaultDict[int, Char](self.default_char))

    def set_mode(self, *modes: int, **kwargs: Any) -> None:
        if kwargs.get("private"):
            alt = [m for m in modes if m in _ALT_SCREEN_MODES]
            if alt and self._main_buffer is None:
                if 1049 in alt:
                    self.save_cursor()
                self._main_buffer = self.buffer
                self._main_cursor = self.cursor
                self.cursor = pyte.screens.Cursor(self.cursor.x, self.cursor.y, self.cursor.attrs)
                self.cursor.hidden = self._main_cursor.hidden
                self.buffer = self._new_buffer()
                self.dirty.update(range(self.lines))
            modes = tuple(m for m in modes if m not in _ALT_SCREEN_MODES)
        super().set_mode(*modes, **kwargs)

    def reset_mode(self, *modes: int, **kwargs: Any) -> None:
        if kwargs.get("private"):
            alt = [m for m in modes if m in _ALT_SCREEN_MODES]
            if alt and self._main_buffer is not None:
                self.buffer = self._main_buffer
                assert self._main_cursor is not None
                hidden = self.cursor.hidden
                self.cursor = self._main_cursor
                self.cursor.hidden = hidden
                self._main_buffer = None
                self._main_cursor = None
                if 1049 in alt:
                    self.restore_cursor()
                self.dirty.update(range(self.lines))
            modes = tuple(m for m in modes if m not in _ALT_SCREEN_MODES)
        super().reset_mode(*modes, **kwargs)

    def index(self) -> None:
        top, bottom = self.margins or pyte.screens.Margins(0, self.lines - 1)
        # As in xterm: lines leaving the top of the screen feed the scrollback
        # (also from a region with a status line below it), lines leaving a
        # region that starts lower down do not, nor does the alternate screen.
        if self.cursor.y == bottom and top == 0 and self._main_buffer is None:
            self._scrollback.append(freeze(self.buffer[top], self.columns))
            self.pushed += 1
        pyte.Screen.index(self)

    def reverse_index(self) -> None:
        # The bottom history is only for paging, which is not used.
        pyte.Screen.reverse_index(self)

    def resize(self, lines: int | None = None, columns: int | None = None) -> None:
        lines = lines or self.lines
        columns = columns or self.columns
        if lines < self.lines:
            # Keep the cursor's line on screen: push what is above it into the
            # scrollback (main screen only) and cut the blank lines below it.
            drop = max(0, self.cursor.y + 1 - lines)
            if self._main_buffer is None:
                for y in range(drop):
                    self._scrollback.append(freeze(self.buffer[y], self.columns))
                    self.pushed += 1
            if drop:
                for y in range(self.lines - drop):
                    self.buffer[y] = self.buffer[y + drop]
                self.cursor.y -= drop
            for y in range(lines, self.lines):
                self.buffer.pop(y, None)
                if self._main_buffer is not None:
                    self._main_buffer.pop(y, None)
            if self._main_cursor is not None:
                self._main_cursor.y = min(self._main_cursor.y, lines - 1)
            # pyte would drop lines from the top itself; it is done above.
            self.lines = lines
        super().resize(lines, columns)
        self.set_margins()
        self.tabstops = set(range(8, self.columns, 8))
        self.dirty.update(range(self.lines))

    def erase_in_display(self, how: int = 0, *args: Any, **kwargs: Any) -> None:
        pyte.Screen.erase_in_display(self, how, *args, **kwargs)
        if how == 3:  # "clear scrollback" (xterm's ED 3, used by `clear`).
            self._scrollback.clear()

    def clear_all(self) -> None:
        """Empty the scrollback and the screen, keeping modes (the app lives on)."""
        self._scrollback.clear()
        self.pushed = 0
        pyte.Screen.erase_in_display(self, 2)
        self.cursor_position()

    def reset(self) -> None:
        # RIS (ESC c) returns to the main screen; pyte alone would leave the
        # alternate buffer active with the main one stranded.
        if self._main_buffer is not None:
            self.buffer = self._main_buffer
            self._main_buffer = None
            self._main_cursor = None
        super().reset()
        # pyte's HistoryScreen empties its history on a full reset; so do we.
        self._scrollback.clear()

    def write_process_input(self, data: str) -> None:
        if self._reply is not None:
            self._reply(data)

    @property
    def application_cursor(self) -> bool:
        return APP_CURSOR_KEYS in self.mode

    @property
    def bracketed_paste(self) -> bool:
        return BRACKETED_PASTE in self.mode
