"""What a long CLI command tells the person watching it: the engine line, what is loading, and what an
interrupt left behind.

- The engine line is short (`engine: cpu (no CUDA GPU; network engines off)`); the full reason, with the
  order and what each engine before the chosen one lacked, is printed with `echo-os -v` and is always in
  meta.json (`engine.reason`).
- A line printed while a tqdm bar is live clears the bar first and redraws it after, so text and bar never
  share a terminal line.
- Ctrl-C during a render says how many images were saved and that the same command renders the rest
  (every render resumes: an image already saved is not rendered again).
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from echo_os.artifacts.store import ArtifactStore

AUTO_PREFIX = "auto: first available in the order "
NETWORK_OFF = "it sends requests over the network"
_NO_WEIGHTS = re.compile(r"no weights for model '([^']+)'")


def brief_reason(reason: str) -> str:
    """The engine choice's reason in a few words: what the engines before the chosen one lacked, grouped
    (`no CUDA GPU; network engines off`). A reason that is not an `auto` skip list (an engine named with
    --engine, auto moving on after a failure) is short already and kept whole."""
    head, _, skipped = reason.partition("; skipped ")
    if not head.startswith(AUTO_PREFIX):
        return reason
    if not skipped:
        return "auto: first available"
    names = [name.strip() for name in head.removeprefix(AUTO_PREFIX).split(",")]
    alternatives = "|".join(map(re.escape, names))
    entries = re.split(rf"; (?=(?:{alternatives}): )", skipped)
    parts: list[str] = []
    network = False
    for entry in entries:
        _, _, problem = entry.partition(": ")
        if problem.startswith(NETWORK_OFF):
            network = True
            continue
        if problem.startswith("as "):  # the same problem as an engine before it
            continue
        weights = _NO_WEIGHTS.match(problem)
        if weights:
            part = f"no weights for '{weights.group(1)}', see `echo-os models list`"
        else:
            part = re.split(r" \(|; ", problem, maxsplit=1)[0]
        if part not in parts:
            parts.append(part)
    if network:
        parts.append("network engines off")
    return "; ".join(parts)


def draft_hint(name: str, reason: str) -> str | None:
    """When `auto` fell back to draft cards because the model's weights are not here: the one command that
    makes the same render real (`models pull` for a Hugging Face entry), else where to look."""
    if name != "draft":
        return None
    missing = _NO_WEIGHTS.search(reason)
    if missing is None:
        return None
    model = missing.group(1)
    if "not in the local Hugging Face cache" in reason[missing.end():missing.end() + 80]:
        return (f"note: these are draft cards, not renders of '{model}': `echo-os models pull {model}` downloads "
                "its weights, then the same command renders it for real")
    return (f"note: these are draft cards, not renders of '{model}': its weights are not where models.toml "
            "says (see `echo-os models list`)")


def verbose_requested() -> bool:
    """Whether the root command was given -v (read from click's context, so any command can ask)."""
    ctx = click.get_current_context(silent=True)
    state = ctx.find_root().obj if ctx is not None else None
    return bool(getattr(state, "verbose", False))


def echo_beside_bars(text: str) -> None:
    """One line on stderr, with any live tqdm bar cleared first and redrawn after (never on its line)."""
    from tqdm import tqdm

    with tqdm.external_write_mode(file=sys.stderr):
        click.echo(text, err=True)


def engine_line(name: str, reason: str, note: str | None = None, *, verbose: bool | None = None) -> str:
    """`engine: NAME (brief reason; note)`; with verbose (-v) the full reason instead of the brief one."""
    verbose = verbose_requested() if verbose is None else verbose
    why = reason if verbose else brief_reason(reason)
    return f"engine: {name} ({why}; {note})" if note else f"engine: {name} ({why})"


class Saved:
    """Counts the images a store saves while it is attached (as a save listener)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, artifact) -> None:
        self.count += 1


@contextlib.contextmanager
def interrupt_report(store: "ArtifactStore", *, again: bool = False, seed: int | None = None,
                     resumes: bool = True) -> Iterator[Saved]:
    """Around a render: on Ctrl-C, one line saying how many images were saved and that the same command
    renders the rest, then exit 130 (the shell's code for an interrupt). seed: the seed a command without
    --seed drew at random; the same command would draw another, so the line names `--seed SEED`.
    resumes=False (refine: every run is a new variation): the line says only what was saved."""
    saved = Saved()
    store.listeners.append(saved)
    try:
        yield saved
    except KeyboardInterrupt:
        images = "image" if saved.count == 1 else "images"
        command = "the same command" + (f" with --seed {seed}" if seed is not None else "")
        rest = ("the saved ones are kept; the others were not rendered" if not resumes else
                f"run {command} without --again to render the rest" if again else
                f"run {command} again to render the rest (saved images are not rendered again)")
        click.echo(f"\ninterrupted: {saved.count} {images} saved; {rest}", err=True)
        raise click.exceptions.Exit(130) from None
    finally:
        if saved in store.listeners:
            store.listeners.remove(saved)


def nothing_rendered_here(settings) -> bool:
    """True, with one line on stderr, when the workspace folder has no artifacts/ yet: a command that only
    reads (artifacts list, memory search, gallery) then writes nothing there, no catalog.db, no folders."""
    if settings.artifacts_dir.is_dir():
        return False
    click.echo(f"no artifacts in {settings.home} (it has no artifacts/ folder): render in this folder first, "
               "or point at your workspace with --home DIR (or ECHO_OS_HOME)", err=True)
    return True
