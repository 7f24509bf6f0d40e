"""User-facing errors: one line naming the file, the problem and the fix.

A message names the caller's parameters as ``{name}`` placeholders. ``str(err)`` renders them as
the Python parameter names a library caller passed; the CLI renders them as its flags
(``err.render({"input_norm": "--input-norm"})``), so neither is told about the other's spelling.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

_PLACEHOLDER = re.compile(r"\{([a-z][a-z0-9_]*)\}")
# private copy -> the path the user gave (fileio.PrivateFolder): messages name the user's file, not the copy
_ALIASES: dict[str, str] = {}


def name_copy(copy: str, original: str | None) -> None:
    """Messages that mention ``copy`` name ``original`` instead (None: forget ``copy``)."""
    if original is None:
        _ALIASES.pop(copy, None)
    else:
        _ALIASES[copy] = original


class DfkdError(Exception):
    """An error caused by the user's input (bad file, bad option), not by a bug.

    The CLI prints it on one line and exits with ``exit_code``; no traceback.
    """

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None):
        super().__init__(message)
        self.template = message
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def params(self) -> list[str]:
        """The parameter names the message refers to."""
        return _PLACEHOLDER.findall(self.template)

    def render(self, names: Mapping[str, str] | None = None) -> str:
        """The message with each ``{param}`` spelled as ``names[param]`` (default: the parameter name)."""
        names = names or {}
        return self.render_copies(_PLACEHOLDER.sub(lambda m: names.get(m.group(1), m.group(1)), self.template))

    @staticmethod
    def render_copies(text: str) -> str:
        """``text`` with every live private copy's path replaced by the path of the file it copies."""
        for copy in sorted(_ALIASES, key=len, reverse=True):
            if copy in text:
                text = text.replace(copy, _ALIASES[copy])
        return text

    def __str__(self) -> str:
        return self.render()


class UsageError(DfkdError):
    """Bad invocation or an input path that cannot be used at all (exit 2)."""

    exit_code = 2


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def shown(text: str) -> str:
    """``text`` safe to print: control and format characters (ANSI escapes, CR, bidi overrides, line and
    paragraph separators) written as ``\\x1b``-style escapes, so text read from a file can neither move the
    cursor, colour, hide nor forge lines in a terminal or a CI log. Newlines are escaped too: callers print
    file content on one line."""
    import unicodedata

    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or (ch == " ") else
                   (ch if unicodedata.category(ch) == "Zs" else _escape_char(ch)) for ch in text)


def shown_deep(value):
    """``shown`` applied to every string (keys included) inside dicts, lists and tuples."""
    if isinstance(value, str):
        return shown(value)
    if isinstance(value, dict):
        return {shown_deep(k): shown_deep(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(shown_deep(v) for v in value)
    return value
