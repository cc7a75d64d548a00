"""Text rules shared by every input and every terminal output: control and bidi characters."""

from __future__ import annotations

import re

# C0 controls and DEL; C1 controls (U+0080-U+009F) steer terminals too (CSI is U+009B).
CONTROL_CHARS = "\x00-\x1f\x7f-\x9f"
# Bidirectional embeddings, overrides and isolates: they make a stored name display as another
# ("Trojan Source", CVE-2021-42574).
BIDI_CONTROLS = "\u202a-\u202e\u2066-\u2069"
CONTROL_RE = re.compile(f"[{CONTROL_CHARS}]")
BIDI_RE = re.compile(f"[{BIDI_CONTROLS}]")
UNSAFE_RE = re.compile(f"[{CONTROL_CHARS}{BIDI_CONTROLS}]")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""A spreadsheet runs a cell that starts with one of these as a formula (OWASP CSV injection)."""


def text_problem(value: str) -> str | None:
    """Why a stored text field (a name, a reason, a user) may not hold VALUE, or None."""
    m = UNSAFE_RE.search(value)
    if m is None:
        return None
    c = m.group()
    if BIDI_RE.fullmatch(c):
        return f"contains a bidirectional control character (U+{ord(c):04X})"
    return f"contains a control character (U+{ord(c):04X})"


def formula_safe(cell: object) -> str:
    """A CSV cell a spreadsheet will not run: text starting with = + - @ tab or CR gets a
    leading apostrophe (OWASP CSV injection); None is empty."""
    if cell is None:
        return ""
    text = str(cell)
    return "'" + text if text.startswith(FORMULA_START) else text


def plural(n: int, word: str, words: str | None = None) -> str:
    """ "1 device", "2 devices": N with WORD, or WORDS (default WORD + "s") when N is not 1."""
    return f"{n:,} {word if n == 1 else (words or word + 's')}"


def escape_control(text: str) -> str:
    """TEXT safe to print on a terminal: control and bidi characters shown as escapes.

    Stored and user-supplied values are echoed through this, so that a newline cannot forge an
    output line and an escape sequence never reaches the terminal raw.
    """
    return UNSAFE_RE.sub(_escape, text)


def _escape(m: re.Match[str]) -> str:
    c = m.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    if c in named:
        return named[c]
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
