"""Text from artifacts (prompts, projects, paths, imported chunks) made safe to print on a terminal.

A prompt can hold anything an imported PNG or an older version wrote: BEL rings, CR rewrites the line, ESC
starts a terminal control sequence, U+202E reverses what follows on screen. What the CLI prints shows each
such character as a visible escape instead (`\\x07`, `\\r`, `\\u202e`); JSON output uses JSON's own
`\\uXXXX` escapes, so it still parses to the exact text.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys

# C0 and C1 controls, DEL, and the Unicode bidirectional controls (marks, embeddings, overrides, isolates).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# What json.dumps(ensure_ascii=False) leaves raw inside strings (it escapes C0 itself; newlines outside
# strings are the layout).
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def for_terminal(text: object) -> str:
    """`text` on one line with every control and bidi-override character shown as an escape."""
    return _UNSAFE.sub(_escape, str(text))


def lines_for_terminal(text: object) -> str:
    """Like for_terminal, but line breaks stay (for messages that are several lines by design)."""
    return "\n".join(for_terminal(line) for line in str(text).split("\n"))


def json_for_terminal(data: object, *, indent: int | None = 2) -> str:
    """json.dumps keeping non-ASCII letters readable but escaping what json.dumps leaves raw (DEL, C1,
    bidi controls) as \\uXXXX, which JSON readers turn back into the same characters."""
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    return _UNSAFE_IN_JSON.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


@contextlib.contextmanager
def only_json_on_stdout():
    """While a command whose stdout is a JSON document (`--json`) works, everything else printed goes to
    stderr: Ray's driver prints the raylet's messages ("(raylet) A worker died ...") to sys.stdout even with
    log_to_driver=False, from a thread of its own. On the way out Ray, when the command connected to it, is
    disconnected (its printing thread stops), so nothing of it can follow the document; the caller prints
    the JSON after this block."""

    def ray_connected() -> bool:
        ray = sys.modules.get("ray")
        return ray is not None and ray.is_initialized()

    connected_before = ray_connected()
    with contextlib.redirect_stdout(sys.stderr):
        try:
            yield
        finally:
            if not connected_before and ray_connected():
                sys.modules["ray"].shutdown()
