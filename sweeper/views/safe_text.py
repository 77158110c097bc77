"""The one way out of the queue onto a terminal: values as text, never as markup or control codes.

Everything a job, a worker or a grid file put in the queue (results, progress messages, errors,
worker host names, descriptions, artifact names) can hold bytes a terminal acts on: ESC starts
a control sequence (`ESC[2J` clears the screen, an OSC sequence retitles the window or hides a
hyperlink), C1 codes do the same in one byte, bidi overrides (U+202E) reorder what is shown,
and `[link=...]` or `[/]` is Rich markup when printed as a string. So what is printed goes
through here first:

* `visible()` replaces control characters (C0, DEL, C1) and bidi controls by visible escapes
  (`\\x1b`, `\\u202e`); newline and tab stay where a value may span lines (`lines=True`);
* `text()` makes a rich `Text` of it: a Text is never parsed as markup, so `[cuda]` prints as is;
* `markup()` is for the few places that build a markup string around a value: escaped too.

`--json` does not come through here: JSON escapes control characters itself and must stay exact.
"""

from __future__ import annotations

import re
from typing import Any

# C0 (but newline and tab, handled below), DEL, C1, and the bidi controls: embeddings and
# overrides U+202A-U+202E, isolates U+2066-U+2069, and the marks U+200E, U+200F, U+061C.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_LINE_BREAKS = re.compile("[\n\t]")


def _escape(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(value: Any, *, lines: bool = False) -> str:
    """`value` as a string a terminal shows as it is: control and bidi characters made visible.

    With lines=True newline and tab are kept (a traceback, a multi-line message); otherwise they
    are escaped too, so a value stays on its own line of a table.
    """
    s = "" if value is None else value if isinstance(value, str) else str(value)
    s = _UNSAFE.sub(_escape, s)
    if not lines:
        s = _LINE_BREAKS.sub(_escape, s)
    return s


def text(value: Any, style: str = "", *, lines: bool = False) -> Any:
    """A rich Text of `value`, never parsed as markup, control characters made visible."""
    from rich.text import Text

    return Text(visible(value, lines=lines), style=style)


def markup(value: Any, *, lines: bool = False) -> str:
    """`value` for a Rich markup string: control characters made visible and markup escaped."""
    from rich.markup import escape

    return escape(visible(value, lines=lines))


def is_clean(s: str) -> bool:
    """True if `s` holds no character visible() would escape (newline and tab allowed)."""
    return _UNSAFE.search(s) is None
