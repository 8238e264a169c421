"""The docs stay true to the code: every `echo-os ...` command and option written in README.md and docs/
exists (checked against each command's own `--help`), every route in README's HTTP API table is in the
OpenAPI spec, and every benchmark command in benchmarks/RESULTS.md parses with its script's argparse."""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
from functools import cache
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# A word standing for a value the reader fills in, or an elision: nothing to check past it.
PLACEHOLDER = re.compile(r"^(\.\.\.|…|<.*|\[.*|[A-Z][A-Z0-9_]*(\.\.\.)?|\$.*|\|.*)$")


def code_texts(text: str) -> list[str]:
    """Lines of fenced code blocks (continuations joined) and inline code spans."""
    out: list[str] = []
    fenced = False
    pending = ""
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            pending += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
            if not line.rstrip().endswith("\\"):
                out.append(pending)
                pending = ""
        else:
            out.extend(re.findall(r"`([^`]+)`", line))
    return out


def echo_os_commands(text: str) -> list[str]:
    """Each `echo-os ...` invocation, cut at a comment, pipe or `&&`."""
    found = []
    for code in code_texts(text):
        code = re.sub(r"(^|\s)#.*$", "", code)  # a shell comment
        for match in re.finditer(r"(?:^|[\s(;$])echo-os(\s[^#|;&)]*)?", code):
            found.append(("echo-os" + (match.group(1) or "")).strip())
    return found


@cache
def help_text(path: tuple[str, ...]) -> str:
    from echo_os.cli import cli

    result = CliRunner().invoke(cli, [*path, "--help"], obj=None, catch_exceptions=False)
    assert result.exit_code == 0, (path, result.output)
    return result.output


def options_of(path: tuple[str, ...]) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text(path)))


def subcommands_of(path: tuple[str, ...]) -> set[str] | None:
    """The subcommands a group lists in its --help, None for a command that is not a group."""
    text = help_text(path)
    if "\nCommands:\n" not in text:
        return None
    block = text.split("\nCommands:\n", 1)[1]
    return {line.split()[0] for line in block.splitlines() if line.startswith("  ") and line.split()}


def check_command(command: str) -> list[str]:
    """Problems with one documented invocation (empty when every word exists)."""
    try:
        words = shlex.split(command)[1:]
    except ValueError:
        words = command.split()[1:]
    path: tuple[str, ...] = ()
    problems = []
    root_options = options_of(())
    for index, word in enumerate(words):
        if PLACEHOLDER.match(word):
            if subcommands_of(path) is not None and not word.startswith("-"):
                break  # `echo-os COMMAND`: a placeholder for the command itself
            continue
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            if name not in options_of(path) and name not in root_options:
                problems.append(f"{' '.join(('echo-os', *path))} has no option {name}")
            continue
        commands = subcommands_of(path)
        if commands is not None:
            previous = words[index - 1] if index else ""
            if previous == "--home" or (previous.startswith("-") and "=" not in previous and path == ()):
                continue  # the value of a root option
            if word not in commands:
                problems.append(f"{' '.join(('echo-os', *path))} has no command {word!r}")
                break
            path = (*path, word)
    return problems


def documented_commands() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for command in echo_os_commands(doc.read_text(encoding="utf-8")):
            out.append((doc.relative_to(REPO).as_posix(), command))
    return sorted(set(out))


def test_docs_name_echo_os_commands():
    assert len(documented_commands()) > 50  # the extraction itself works


@pytest.mark.parametrize("where,command", documented_commands(), ids=lambda value: value[:60])
def test_documented_command_exists(where, command):
    assert check_command(command) == [], f"{where}: {command}"


# -- README's HTTP API table against the OpenAPI spec ----------------------------------------------------------


def readme_routes() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    routes = []
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        for method, path in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\[\s]*)", first_cell):
            routes.append((method, path))
        routes.extend(("GET", path) for path in re.findall(r"`GET (/health)`", line))
    return routes


def test_readme_routes_are_in_the_openapi_spec():
    from echo_os.api import create_app
    from echo_os.settings import Settings

    def shape(path: str) -> str:  # the README writes {id} where the code names it {job_id}
        return re.sub(r"\{[^}]*\}", "{}", path)

    spec = {shape(path): methods for path, methods in create_app(Settings(home=Path("unused"))).openapi()["paths"].items()}
    routes = readme_routes()
    assert len(routes) > 10
    missing = [f"{method} {path}" for method, path in routes
               if shape(path) not in spec or method.lower() not in spec[shape(path)]]
    assert missing == []


# -- benchmarks/RESULTS.md -----------------------------------------------------------------------------------------


class _Parsed(Exception):
    pass


def benchmark_commands() -> list[str]:
    text = (REPO / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8")
    joined = re.sub(r"\\\n\s*", " ", text)
    found = re.findall(r"python3? (benchmarks/[\w]+\.py(?: [^`\n]*)?)", joined)
    commands = {re.sub(r"\s#.*$", "", command).strip() for command in found}  # a shell comment
    # "--workers N ..." stands for a family of runs, not one command
    return sorted(c for c in commands if "..." not in c and not re.search(r"\s[A-Z]\b", c))


@pytest.mark.parametrize("command", benchmark_commands())
def test_benchmark_command_parses(command, monkeypatch):
    words = shlex.split(command)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)  # exits 2 on an unknown or malformed option
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", words)
    monkeypatch.syspath_prepend(str(REPO))
    with pytest.raises(_Parsed):
        runpy.run_path(str(REPO / words[0]), run_name="__main__")


def test_the_command_check_finds_drift():
    assert check_command("echo-os render x --no-such-option") == ["echo-os render has no option --no-such-option"]
    assert check_command("echo-os memory serch x") == ["echo-os memory has no command 'serch'"]
    assert check_command("echo-os --home /tmp/w models list --json") == []
