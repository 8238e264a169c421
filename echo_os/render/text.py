"""The rules of prompt text, whoever writes it (a prompt, a negative prompt, a style, a planner's answer):
a length limit and no control characters. Below requests and styles, which both apply them.
"""

from __future__ import annotations

import re

# One limit for the text of a prompt, negative prompt or style, whoever sends it (CLI, API, OpenAI route,
# story planner): long enough for any prompt a person writes (SDXL reads 77 tokens of each encoder anyway),
# short enough that a request cannot fill the queue database or the PNG text chunks.
MAX_PROMPT_CHARS = 20_000
# Control characters are refused in prompt text, not stripped (a silently changed prompt would not replay
# as written): C0 except tab and newline, DEL, and C1. They would otherwise reach the terminal and the PNG
# `parameters` chunk raw (a NUL ends a C string in other tools' readers, a CR rewrites a terminal line).
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def check_prompt_text(value: str) -> str:
    """ValueError naming the first control character in `value` and where it is."""
    match = _CONTROL_RE.search(value)
    if match:
        raise ValueError(f"contains the control character U+{ord(match.group()):04X} at position {match.start()}; "
                         "prompts are plain text (tab and newline allowed)")
    return value
