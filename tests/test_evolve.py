"""`echo-os evolve` (issue 28): three rounds on draft cards with a deterministic scorer plugin; the
recorded gains are checked against the scores the plugin gives, exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import run_cli as run
from tests.scorer_plugin import fixed_alignment, registered_fixed_scorer


@pytest.fixture
def fixed_scorer():
    with registered_fixed_scorer() as scorer:
        yield scorer


def _start(home: str) -> str:
    code, out, err = run("--home", home, "render", "a lighthouse on a cliff at dusk", "--engine", "draft",
                         "--seed", "7", "--size", "256x256", "--project", "Evo", "--json")
    assert code == 0, err
    return json.loads(out)[0]["id"]


def objective(artifact_id: str) -> float:
    return round(fixed_alignment(artifact_id) / 100.0, 6)  # default weights: 1 x alignment/100


def test_three_rounds_record_what_the_scores_say(workspace, fixed_scorer):
    home = str(workspace.home)
    start = _start(home)
    code, out, err = run("--home", home, "evolve", start, "--rounds", "3", "--per-round", "3", "--scorer", "fixed",
                         "--min-gain", "0", "--json")
    assert code == 0, err
    run_ = json.loads(out)
    assert run_["start"] == start and run_["start_score"] == objective(start)
    assert len(run_["rounds"]) == 3
    parent = start
    for number, round_ in enumerate(run_["rounds"], start=1):
        assert round_["round"] == number and round_["parent"] == parent
        assert round_["parent_score"] == objective(parent)
        assert len(round_["candidates"]) == 3
        for candidate in round_["candidates"]:
            assert candidate["score"] == objective(candidate["id"])
        best = max(round_["candidates"], key=lambda c: c["score"])
        expected_best = best["id"] if best["score"] > objective(parent) else parent
        assert round_["best"] == expected_best
        assert round_["gain"] == round(objective(expected_best) - objective(parent), 6)
        if objective(parent):
            assert round_["gain_pct"] == round(100 * round_["gain"] / objective(parent), 4)
        parent = expected_best
    assert run_["best"] == parent
    assert run_["gain"] == round(objective(parent) - objective(start), 6)
    assert run_["gain_pct"] == round(100 * run_["gain"] / objective(start), 4)
    assert run_["stopped"] == "3 rounds"

    # the operators took turns; every candidate is an artifact whose parent is its round's parent
    ops = [c["operator"] for c in run_["rounds"][0]["candidates"]]
    assert ops == ["seed", "prompt", "seed"]  # draft cards cannot refine (no img2img), no learned style yet
    from echo_os.artifacts.store import open_catalog

    with open_catalog(workspace) as catalog:
        for round_ in run_["rounds"]:
            for candidate in round_["candidates"]:
                row = catalog.get(candidate["id"])
                assert row.parent_id == round_["parent"]
                assert row.meta["evolve"]["round"] == round_["round"]
                assert row.meta["evolve"]["run"] == run_["run_id"]
    prompt_candidate = run_["rounds"][0]["candidates"][1]
    with open_catalog(workspace) as catalog:
        assert catalog.get(prompt_candidate["id"]).prompt == "a lighthouse on a cliff at dusk, " + prompt_candidate["detail"]

    # artifacts tree shows the rounds under the start
    code, out, err = run("--home", home, "artifacts", "tree", start)
    assert code == 0, err
    assert "round 1" in out and all(c["id"][:12] in out for c in run_["rounds"][0]["candidates"])

    # the same command again: the record is complete, nothing renders, the same figures come back
    scored = len(fixed_scorer.calls)
    code, out2, err = run("--home", home, "evolve", start, "--rounds", "3", "--per-round", "3", "--scorer", "fixed",
                          "--min-gain", "0", "--json")
    assert code == 0, err
    assert json.loads(out2) == run_ and len(fixed_scorer.calls) == scored
    record = Path(workspace.artifacts_dir / "evolve" / f"{run_['run_id']}.json")
    assert json.loads(record.read_text())["gain"] == run_["gain"]


def test_text_output_prints_each_round_and_overall(workspace, fixed_scorer):
    home = str(workspace.home)
    start = _start(home)
    code, out, err = run("--home", home, "evolve", start, "--rounds", "2", "--per-round", "2", "--scorer", "fixed",
                         "--min-gain", "0")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("round 1: ") and lines[1].startswith("round 2: ")
    assert lines[2].startswith(f"overall: {objective(start):.4f} -> ")
    assert lines[3].startswith("record: ")
    code, again, err = run("--home", home, "evolve", start, "--rounds", "2", "--per-round", "2", "--scorer", "fixed",
                           "--min-gain", "0")
    assert code == 0 and again == out  # a finished run prints its rounds again, in order


def test_resume_after_an_interrupted_round_renders_only_what_is_missing(workspace, fixed_scorer):
    """Ctrl-C in round 2: the rerun keeps round 1's record and finds round 2's images already on disk."""
    from echo_os.artifacts.store import ArtifactStore
    from echo_os.reflect.evolve import EvolveOptions, evolve, run_path

    home = str(workspace.home)
    start = _start(home)
    options = EvolveOptions(rounds=2, per_round=2, scorer="fixed", min_gain=0)
    store = ArtifactStore(workspace)
    try:
        first = evolve(workspace, store, start, options, scorer=fixed_scorer)
    finally:
        store.close()
    record = json.loads(run_path(workspace, first.run_id).read_text())
    record["rounds"], record["stopped"] = record["rounds"][:1], ""  # as it was after round 1
    run_path(workspace, first.run_id).write_text(json.dumps(record))
    before = len(list(workspace.artifacts_dir.glob("*/evo/*/image.png")))
    store = ArtifactStore(workspace)
    try:
        again = evolve(workspace, store, start, options, scorer=fixed_scorer)
    finally:
        store.close()
    assert len(list(workspace.artifacts_dir.glob("*/evo/*/image.png"))) == before  # found, not rendered again
    assert again.as_dict() == {**first.as_dict(), "created": again.created}


def test_no_scorer_says_so_and_bad_input_exits_2(workspace):
    home = str(workspace.home)
    start = _start(home)
    for args, expected in (((start,), "no scorer on this machine"),
                           ((start, "--scorer", "nope"), "--scorer 'nope' is no scorer here"),
                           ((start, "--rounds", "0"), "--rounds must be from 1 to 100"),
                           ((start, "--per-round", "0"), "--per-round must be from 1 to 64"),
                           ((start, "--objective", "beauty=2"), "unknown term 'beauty'"),
                           ((start, "--strengths", "0.3,x"), "--strengths takes numbers"),
                           (("Nobody",), "neither an artifact id nor a project")):
        code, out, err = run("--home", home, "evolve", *args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1 and expected in err, (args, err)
    assert not (workspace.artifacts_dir / "evolve").exists()


def test_rating_each_round_instead_of_a_scorer(workspace, monkeypatch):
    """--scorer ratings: the start and each round's candidates are shown and rated; the best rating wins."""
    import io

    home = str(workspace.home)
    start = _start(home)
    # start 3; round 1: 2 and 5 (the second wins); round 2: 4 and 5 (5 does not beat 5: kept, gain 0, stop)
    monkeypatch.setattr("sys.stdin", io.StringIO("3\n2\n5\n4\n5\n"))
    code, out, err = run("--home", home, "evolve", start, "--rounds", "3", "--per-round", "2", "--scorer", "ratings",
                         "--json")
    assert code == 0, err
    run_ = json.loads(out)
    assert err.count("rate 2 images") == 2 and err.count("rate 1 image") == 1
    assert run_["start_score"] == 0.0  # (3 - 3) / 2
    assert [c["score"] for c in run_["rounds"][0]["candidates"]] == [-0.5, 1.0]
    assert run_["rounds"][0]["best"] == run_["rounds"][0]["candidates"][1]["id"] and run_["rounds"][0]["gain"] == 1.0
    assert [c["score"] for c in run_["rounds"][1]["candidates"]] == [0.5, 1.0]
    assert run_["rounds"][1]["gain"] == 0.0 and len(run_["rounds"]) == 2
    assert run_["stopped"].startswith("round 2 gained +0.0000, less than --min-gain 0.001")
    assert run_["gain"] == 1.0 and run_["gain_pct"] is None  # from 0 a percentage means nothing
    from echo_os.artifacts.store import open_catalog

    with open_catalog(workspace) as catalog:
        assert catalog.get(start).meta["rating"]["value"] == 3


def test_evolve_as_an_api_job_with_progress(workspace, fixed_scorer):
    """POST /api/evolve queues the loop; the worker runs it (progress events, each round's candidates saved
    as the job's images); its record is at record_url and says what `echo-os evolve` says."""
    import asyncio

    from tests.api_helpers import api_client, parse_sse, wait_job

    start = _start(str(workspace.home))

    async def go():
        async with api_client(workspace) as (client, _):
            for body, field in (({"target": start, "rounds": 0}, "rounds"), ({"target": start, "scorer": "ratings"}, "scorer"),
                                ({"target": start, "scorer": "nope"}, "scorer"),
                                ({"target": start, "objective": "beauty=1"}, "objective"),
                                ({"target": start, "strengths": [0.0]}, "strengths"),
                                ({"target": "Nobody here"}, "target")):
                scorer = {"scorer": "fixed"} if "scorer" not in body else {}
                response = await client.post("/api/evolve", json={**body, **scorer})
                assert response.status_code == 422 and field in json.dumps(response.json()), (body, response.text)
            response = await client.post("/api/evolve", json={"target": start, "rounds": 2, "per_round": 2,
                                                               "scorer": "fixed", "min_gain": 0})
            assert response.status_code == 202, response.text
            submitted = response.json()
            assert submitted["start"] == start
            events = parse_sse((await client.get(submitted["events_url"])).text)  # until the job ends
            job = await wait_job(client, submitted["job_id"], timeout=120)
            assert job["status"] == "succeeded", job
            assert job["kind"] == "evolve" and job["progress"]["images_total"] == 4
            record = (await client.get(submitted["record_url"])).json()
            assert job["artifact_ids"] == [c["id"] for r in record["rounds"] for c in r["candidates"]]
            names = [name for name, _ in events]
            assert names[-1] == "succeeded" and names.count("artifact") <= 4, names
            done = [data["images_done"] for name, data in events if name == "progress"]
            assert done == sorted(done) and all(0 < d <= 4 for d in done)
            assert {data["images_total"] for name, data in events if name == "progress"} <= {4}
            assert (await client.get("/api/evolve/0123456789abcdef")).status_code == 404
            return record

    record = asyncio.run(go())
    code, out, err = run("--home", str(workspace.home), "evolve", start, "--rounds", "2", "--per-round", "2",
                         "--scorer", "fixed", "--min-gain", "0", "--json")
    assert code == 0, err
    assert json.loads(out) == record  # the same run: the CLI finds the API's record


def test_rating_in_the_served_gallery(workspace):
    """--rate-with gallery: the loop names the images and waits; ratings posted to the API's rating route
    (what the gallery's buttons do) are what it scores with."""
    import asyncio
    import threading

    from echo_os.artifacts.store import open_catalog
    from tests.api_helpers import api_client

    home = str(workspace.home)
    start = _start(home)
    stop = threading.Event()
    posted: dict[str, int] = {}

    def value(artifact_id: str) -> int:
        return 2 + int(artifact_id[:2], 16) % 4

    async def rate_what_appears():
        async with api_client(workspace, start_worker=False) as (client, _):
            while not stop.is_set():
                with open_catalog(workspace) as catalog:
                    waiting = [row.id for row in catalog.query(project="Evo") if row.id not in posted]
                for artifact_id in waiting:
                    response = await client.post(f"/api/artifacts/{artifact_id}/rating", json={"rating": value(artifact_id)})
                    assert response.status_code == 200, response.text
                    posted[artifact_id] = value(artifact_id)
                await asyncio.sleep(0.2)

    rater = threading.Thread(target=lambda: asyncio.run(rate_what_appears()))
    rater.start()
    try:
        code, out, err = run("--home", home, "evolve", start, "--rounds", "2", "--per-round", "2", "--rate-with",
                             "gallery", "--min-gain", "0", "--json")
    finally:
        stop.set()
        rater.join(timeout=30)
    assert code == 0, err
    assert "in the gallery (echo-os serve, then /api/gallery#project=Evo)" in err
    run_ = json.loads(out)
    assert run_["scorer"] == "ratings" and run_["start_score"] == (value(start) - 3) / 2
    for round_ in run_["rounds"]:
        for candidate in round_["candidates"]:
            assert candidate["score"] == (value(candidate["id"]) - 3) / 2

    code, out, err = run("--home", home, "evolve", start, "--rate-with", "gallery", "--scorer", "fixed")
    assert code == 2 and "--rate-with gallery is for --scorer ratings" in err
