"""Issue 24's friction list: what a new user should not have to ask (help texts, short engine line, read-only
commands that write nothing, clear listings, ratings that can be cleared, ...)."""

from __future__ import annotations

import click

from echo_os.cli import COMMANDS, cli


def _walk(command: click.Command, path: str, ctx: click.Context):
    yield path, command
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            yield from _walk(command.get_command(ctx, name), f"{path} {name}", ctx)


def test_every_option_of_every_command_has_help_text() -> None:
    ctx = click.Context(cli)
    seen = list(_walk(cli, "echo-os", ctx))
    assert len([p for p, _ in seen if p.count(" ") == 1]) == len(COMMANDS)
    missing = [f"{path} {'/'.join(param.opts)}" for path, command in seen for param in command.params
               if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()]
    assert missing == []
