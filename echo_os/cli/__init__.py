"""The `echo-os` command.

Commands are loaded lazily from COMMANDS so `echo-os --help` and the light commands never import torch.
One error boundary (`main`) turns EchoError into one line and its exit code; anything else becomes one
line naming the log file, unless ECHO_OS_DEBUG is set, in which case it is re-raised.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import traceback
from dataclasses import dataclass

import click

from echo_os import __version__
from echo_os.errors import EchoError
from echo_os.settings import Settings, load_settings

# name -> "module:attribute". One module per command group.
COMMANDS = {
    "render": "echo_os.cli.render:render",
    "replay": "echo_os.cli.render:replay",
    "artifacts": "echo_os.cli.artifacts:artifacts",
    "models": "echo_os.cli.models:models",
    "batch": "echo_os.cli.batch:batch",
    "memory": "echo_os.cli.memory:memory",
    "gallery": "echo_os.cli.gallery:gallery",
    "serve": "echo_os.cli.serve:serve",
    "animatic": "echo_os.cli.animatic:animatic",
    "animate": "echo_os.cli.animatic:animate",
    "soundtrack": "echo_os.cli.animatic:soundtrack",
    "lift": "echo_os.cli.lift:lift",
    "score": "echo_os.cli.score:score",
    "rate": "echo_os.cli.score:rate",
    "texture-check": "echo_os.cli.texture:texture_check",
    "plan": "echo_os.cli.plan:plan",
    "styles": "echo_os.cli.styles:styles",
    "style": "echo_os.cli.styles:style_group",
    "refine": "echo_os.cli.refine:refine",
    "compare": "echo_os.cli.compare:compare",
    "bundle": "echo_os.cli.bundle:bundle",
    "commit": "echo_os.cli.versions:commit",
    "log": "echo_os.cli.versions:log",
    "diff": "echo_os.cli.versions:diff",
    "checkout": "echo_os.cli.versions:checkout",
    "evolve": "echo_os.cli.evolve:evolve",
    "resonance": "echo_os.cli.resonance:resonance",
    "suggest": "echo_os.cli.resonance:suggest",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        return getattr(importlib.import_module(module_name), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--home", type=click.Path(file_okay=False), envvar="ECHO_OS_HOME",
              help="Workspace folder (models.toml, artifacts/). Default: the current directory.")
@click.option("-v", "--verbose", is_flag=True,
              help="Say more: the full reason for the engine choice (what each engine before it lacked).")
@click.version_option(__version__, prog_name="echo-os")
@click.pass_context
def cli(ctx: click.Context, home: str | None, verbose: bool) -> None:
    """echo-os: render images with Stable Diffusion XL, keep every image as a reproducible artifact."""
    state = ctx.ensure_object(CliState)
    state.settings = load_settings(home)
    state.verbose = verbose


@dataclass
class CliState:
    """What the root command parsed, handed to every command through click's context object."""

    settings: Settings | None = None
    verbose: bool = False  # -v: the full engine reason (echo_os.cli.feedback)


def settings_from(ctx: click.Context) -> Settings:
    """The Settings parsed by the root command."""
    settings = ctx.find_root().ensure_object(CliState).settings
    if settings is None:  # the root command sets them before any command runs
        raise RuntimeError("no settings: a command ran without echo-os's root command")
    return settings


def _log_exception(settings: Settings | None) -> str:
    settings = settings or load_settings()
    try:
        settings.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(settings.log_path, "a", encoding="utf-8") as log:
            log.write(traceback.format_exc())
            log.write("\n")
        return str(settings.log_path)
    except OSError:
        return "(no log: the workspace is not writable)"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    debug = os.environ.get("ECHO_OS_DEBUG", "") not in ("", "0", "false", "no")
    state = CliState()
    try:
        code = cli.main(args=argv, prog_name="echo-os", standalone_mode=False, obj=state)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.UsageError as error:
        # One line: what was wrong, and where the help is.
        command = error.ctx.command_path if error.ctx else "echo-os"
        click.echo(f"Error: {error.format_message()} (see `{command} --help`)", err=True)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        click.echo(f"Error: {error.format_message()}", err=True)
        sys.exit(error.exit_code)
    except EchoError as error:
        if debug:
            raise
        from echo_os.cli.terminal import lines_for_terminal

        click.echo(f"Error: {lines_for_terminal(error)}", err=True)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except Exception as error:  # the boundary for unexpected errors
        if debug:
            raise
        from echo_os.errors import disk_full

        full = disk_full(error)
        if full is not None:  # not a bug: one line, and no log file written to the full disk
            click.echo(f"Error: {full}", err=True)
            sys.exit(full.exit_code)
        where = _log_exception(state.settings)
        click.echo(f"Error: {type(error).__name__}: {error} (details in {where})", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)

