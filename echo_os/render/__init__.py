"""The render core: what every host (CLI, HTTP API, story batch, refine, compare, replay, Ray head) goes
through to turn what it was given into images.

    requests.py   RenderRequest: the validated, typed request (the bottom layer; engines read it)
    results.py    RenderResult, RuntimeInfo, ModelInfo, progress events: what crosses back
    styles.py     named styles (styles.toml, built-ins, imports): one layer of request assembly
    scheduler.py  render_requests: the only loop that groups, batches, backs off on OOM, resumes and saves
    ray.py        RayPool and the Ray actors: pipeline calls on other processes or machines

Its modules are layered: requests/results/styles sit below the engines, the scheduler and Ray above them,
so tests/test_import_cycles.py checks this package module by module, not as one unit.
"""
