"""`echo-os evolve ID|PROJECT`: vary the best image round after round, keep what scores better
(echo_os/reflect/evolve.py)."""

from __future__ import annotations

import json
import sys

import click

from echo_os.cli import settings_from


def _ask_ratings(artifacts) -> dict[str, int]:
    """Show the images to rate (their files) and read a 1..5 for each from the terminal."""
    click.echo(f"rate {len(artifacts)} image{'s' if len(artifacts) != 1 else ''} (1 poor .. 5 great):", err=True)
    ratings = {}
    for artifact in artifacts:
        click.echo(f"  {artifact.id[:12]}  {artifact.image_path}", err=True)
        ratings[artifact.id] = click.prompt(f"  rating for {artifact.id[:12]}", type=click.IntRange(1, 5), err=True)
    return ratings


def gallery_ratings(settings, poll_s: float = 1.0, out=None):
    """An `ask` for --rate-with gallery: name the images to rate in the gallery that `echo-os serve` serves
    (its rating buttons POST /api/artifacts/{id}/rating), then wait until each has a rating given after the
    question; Ctrl-C stops the loop, and the same command goes on later."""
    import time
    from datetime import datetime, timezone

    from echo_os.artifacts.store import open_catalog

    def ask(artifacts) -> dict[str, int]:
        asked = datetime.now(timezone.utc)
        project = artifacts[0].meta.project
        click.echo(f"rate {len(artifacts)} image{'s' if len(artifacts) != 1 else ''} in the gallery "
                   f"(echo-os serve, then /api/gallery#project={project}): "
                   + ", ".join(a.id[:12] for a in artifacts), err=True, file=out)
        ratings: dict[str, int] = {}
        while len(ratings) < len(artifacts):
            with open_catalog(settings) as catalog:
                for artifact in artifacts:
                    row = catalog.get(artifact.id)
                    rating = (row.meta.get("rating") or {}) if row is not None else {}
                    rated = rating.get("rated_at")
                    if rated and datetime.fromisoformat(rated) >= asked.replace(microsecond=0):
                        ratings[artifact.id] = int(rating["value"])
            if len(ratings) < len(artifacts):
                time.sleep(poll_s)
        return ratings

    return ask


def _parse_strengths(text: str) -> tuple[float, ...]:
    from echo_os.errors import UsageError

    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UsageError(f"--strengths takes numbers separated by commas, e.g. 0.3,0.5,0.7; got {text!r}.") from None


@click.command()
@click.argument("target")
@click.option("--rounds", type=int, default=3, show_default=True, help="Rounds at most.")
@click.option("--per-round", type=int, default=4, show_default=True, help="Variations of the best per round.")
@click.option("--objective", default=None, help="Weights as for --best-of, e.g. alignment=1,aesthetic=2.")
@click.option("--scorer", default=None, help="clip, ratings, or a plugin's scorer (default: clip when a CLIP "
                                              "model is here, else ratings in a terminal).")
@click.option("--min-gain", type=float, default=0.001, show_default=True,
              help="Stop when a round improves the objective by less than this.")
@click.option("--strengths", default="0.3,0.5,0.7", show_default=True, help="Refine strengths to try.")
@click.option("--seed", type=int, default=0, show_default=True, help="Another seed makes other choices (another run).")
@click.option("--rate-with", "rate_with", type=click.Choice(["terminal", "gallery"]), default="terminal",
              show_default=True, help="With --scorer ratings: rate in the terminal, or in the served gallery.")
@click.option("--json", "as_json", is_flag=True, help="Print the run's record as JSON.")
@click.pass_context
def evolve(ctx: click.Context, target: str, rounds: int, per_round: int, objective: str | None, scorer: str | None,
           min_gain: float, strengths: str, seed: int, rate_with: str, as_json: bool) -> None:
    """Evolve TARGET (an artifact id, or a project: its best-scored image) for up to --rounds rounds.

    Each round renders --per-round variations of the current best (new seeds, prompt phrases from the
    project's well-scored prompts and the planner's vocabulary, refines at --strengths, learned styles),
    scores them with the --best-of objective and keeps the best. Prints the improvement per round and
    overall; the record is artifacts/evolve/RUN.json. Interrupted, the same command goes on where it stopped.

    \b
      echo-os evolve 3f2a9c1b7d4e --rounds 3 --per-round 4
    """
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.cli.progress import StageBars
    from echo_os.errors import UsageError
    from echo_os.reflect.evolve import EvolveOptions, find_scorer
    from echo_os.reflect.evolve import evolve as run_evolve
    from echo_os.resonance.story import parse_objective

    settings = settings_from(ctx)
    options = EvolveOptions(rounds=rounds, per_round=per_round, objective=parse_objective(objective),
                            scorer=scorer or "clip", min_gain=min_gain, strengths=_parse_strengths(strengths),
                            seed=seed)
    options.check()
    from echo_os.reflect.evolve import resolve_start

    store = ArtifactStore(settings)
    try:  # the target first: a wrong id or project is the first thing to hear about
        start = resolve_start(settings, store, target, options.objective)
    finally:
        store.close()
    # ratings are read from the terminal; asked for by name they are read from stdin whatever it is
    ask = _ask_ratings if sys.stdin.isatty() or scorer == "ratings" else None
    if rate_with == "gallery":
        if scorer not in (None, "ratings"):
            raise UsageError(f"--rate-with gallery is for --scorer ratings, not --scorer {scorer}.")
        scorer, ask = "ratings", gallery_ratings(settings)
    if scorer is None:
        try:
            chosen = find_scorer(settings, "clip")
        except UsageError as error:
            if ask is None:
                raise
            click.echo(f"note: {error}; asking for your ratings instead", err=True)
            chosen = find_scorer(settings, "ratings", ask)
    else:
        chosen = find_scorer(settings, scorer, ask)
    options = EvolveOptions(**{**options.__dict__, "scorer": chosen.name})
    store = ArtifactStore(settings)

    printed: set[int] = set()
    from echo_os.reflect.evolve import EvolveRun, run_id_of, run_path

    earlier = run_path(settings, run_id_of(start.id, options))
    if earlier.is_file() and not as_json:  # resuming: the rounds already done come first
        done = EvolveRun.from_dict(json.loads(earlier.read_text(encoding="utf-8")))
        for round_, line in zip(done.rounds, done.lines()):
            click.echo(line)
            printed.add(round_.round)

    def on_round(done) -> None:
        printed.add(done.round)
        if not as_json:
            click.echo(done.line())

    try:
        with StageBars(unit="image") as bars:
            run = run_evolve(settings, store, start.id, options, scorer=chosen, progress=bars, on_round=on_round)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(run.as_dict(), ensure_ascii=False, indent=2))
        return
    click.echo(run.lines()[-1])
    click.echo(f"record: {settings.artifacts_dir / 'evolve' / (run.run_id + '.json')}")
