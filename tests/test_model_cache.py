"""The one model cache (echo_os/render/cache.py): LRU over a memory budget, eviction that frees, release,
the budget's settings; and API compare releasing each model as the CLI does."""

from __future__ import annotations

import gc
import weakref

import pytest

from echo_os.render.cache import GIB, CacheKey, ModelCache, configured_budget, model_bytes, model_cache


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def cache():
    """The process's model cache, empty, with its budget restored afterwards."""
    cache = model_cache()
    cache.clear()
    budget, entries = cache.budget_bytes, cache.max_entries
    yield cache
    cache.budget_bytes, cache.max_entries = budget, entries
    cache.clear()


def _linear(features: int):
    import torch

    return torch.nn.Linear(features, features)  # (features + 1) * features float32 parameters


def test_entries_are_sized_by_their_tensors_each_counted_once():
    import torch

    layer = _linear(8)
    assert model_bytes(layer) == (8 * 8 + 8) * 4
    shared = torch.nn.Sequential(layer, layer)  # the same weights twice, like an img2img view of a pipeline
    assert model_bytes((layer, shared, {"again": layer})) == (8 * 8 + 8) * 4
    layer.register_buffer("running", torch.zeros(16, dtype=torch.float64))
    assert model_bytes(layer) == (8 * 8 + 8) * 4 + 16 * 8


def test_least_recently_used_goes_first_when_over_the_budget():
    cache = ModelCache(budget_bytes=2 * model_bytes(_linear(64)) + 100)
    loads = []

    def loader(name):
        def load():
            loads.append(name)
            return _linear(64)
        return load

    a, b = CacheKey("t", "a"), CacheKey("t", "b")
    cache.get(a, loader("a"))
    cache.get(b, loader("b"))
    cache.get(a, loader("a"))  # a is now the more recently used
    cache.get(CacheKey("t", "c"), loader("c"))
    assert cache.keys() == [a, CacheKey("t", "c")] and cache.evictions == 1
    assert cache.get(a, loader("a")) is cache.peek(a) and loads == ["a", "b", "c"]
    # the estimate makes room before loading: a 3-layer estimate leaves only the new entry
    cache.get(CacheKey("t", "d"), loader("d"), estimate_bytes=2 * model_bytes(_linear(64)))
    assert cache.keys() == [CacheKey("t", "d")]
    # max_entries (a Ray actor's max_models) caps the count whatever the budget
    big = ModelCache(budget_bytes=GIB, max_entries=1)
    big.get(a, loader("a"))
    big.get(b, loader("b"))
    assert big.keys() == [b]


def test_stats_answer_while_a_model_loads_and_two_threads_load_it_once():
    """A Ray actor answers GET /api/workers (stats) while it loads a model; a second thread asking for the
    same model waits for that load instead of loading it again."""
    import threading

    cache = ModelCache(budget_bytes=GIB)
    loading, go, loads = threading.Event(), threading.Event(), []

    def slow():
        loads.append(1)
        loading.set()
        go.wait(10)
        return _linear(4)

    key = CacheKey("t", "slow")
    threads = [threading.Thread(target=cache.get, args=(key, slow)) for _ in range(2)]
    threads[0].start()
    assert loading.wait(10)
    threads[1].start()
    answered = []
    reader = threading.Thread(target=lambda: answered.append(cache.stats()))
    reader.start()
    reader.join(5)
    assert answered and answered[0].labels == ()  # not blocked by the load
    go.set()
    for thread in threads:
        thread.join(10)
    assert loads == [1] and cache.keys() == [key]


def test_an_entry_larger_than_the_budget_is_kept_alone_and_vram_and_ram_are_separate():
    cache = ModelCache(budget_bytes=10)
    gpu = CacheKey("t", "g", "cuda")
    cache.get(CacheKey("t", "a"), lambda: _linear(4))
    cache._entries[gpu] = type(cache._entries[CacheKey("t", "a")])(gpu, _linear(4), "g", 0)  # no GPU here
    cache.get(CacheKey("t", "b"), lambda: _linear(4))
    assert set(cache.keys()) == {gpu, CacheKey("t", "b")}  # the RAM entry made room; the VRAM one stayed


def test_an_evicted_pipeline_is_really_freed(cache, tiny_workspace):
    """The regression of issue 23: evicting must drop the only reference, so the pipeline (and the img2img
    view over its modules) is collected, not kept alive by a second table."""
    from echo_os.engines.sdxl import CPUEngine, img2img_pipeline, loaded_pipelines
    from echo_os.render.requests import RenderRequest

    engine = CPUEngine(tiny_workspace)
    request = RenderRequest(prompt="x", model="tiny", width=64, height=64, steps=2, engine="cpu", dtype="float32")
    first = engine.loaded(request)
    pipe_ref, unet_ref = weakref.ref(first.pipe), weakref.ref(first.pipe.unet)
    view_ref = weakref.ref(img2img_pipeline(first))
    size = model_bytes(first)
    assert size == model_bytes(first.pipe) > 0  # the img2img view adds no bytes: it shares the modules
    del first
    cache.budget_bytes = int(size * 1.2)  # room for the float32 pipeline, not for a bfloat16 one beside it
    second = engine.loaded(request.model_copy(update={"dtype": "bfloat16"}))
    gc.collect()
    assert pipe_ref() is None and unet_ref() is None and view_ref() is None
    assert loaded_pipelines() == [second] and cache.evictions >= 1


def test_release_frees_the_pipeline_and_its_refiner(cache, tiny_workspace, tiny_sdxl_dir):
    """engine.release (compare, one model at a time) drops the model's pipelines and the refiner it used;
    before the one cache, release() forgot the refiners, which stayed loaded for the life of the process."""
    from echo_os.engines.sdxl import CPUEngine, load_refiner
    from echo_os.render.requests import RefinerInput, RenderRequest

    engine = CPUEngine(tiny_workspace)
    request = RenderRequest(prompt="x", model="tiny", width=64, height=64, steps=2, engine="cpu",
                            refiner=RefinerInput(model="tiny"))
    pipe_ref = weakref.ref(engine.loaded(request).pipe)
    refiner_ref = weakref.ref(load_refiner(tiny_workspace, "tiny", "cpu", "float32"))
    assert {key.kind for key in cache.keys()} == {"sdxl", "sdxl-refiner"}
    engine.release(request)
    gc.collect()
    assert pipe_ref() is None and refiner_ref() is None and cache.keys() == []


def test_the_budget_comes_from_the_env_var_else_echo_os_toml(workspace, monkeypatch):
    from echo_os.errors import UsageError
    from echo_os.settings import load_settings

    assert configured_budget(load_settings(workspace.home)) is None
    (workspace.home / "echo-os.toml").write_text("[model_cache]\nmax_gb = 1.5\n")
    settings = load_settings(workspace.home)
    assert settings.model_cache_gb == 1.5 and configured_budget(settings) == int(1.5 * GIB)
    monkeypatch.setenv("ECHO_OS_MODEL_CACHE_GB", "0.25")
    assert configured_budget(settings) == int(0.25 * GIB)
    cache = ModelCache()
    cache.get(CacheKey("t", "a"), lambda: _linear(4), settings=settings)
    assert cache.stats().budget["ram"] == int(0.25 * GIB)
    monkeypatch.setenv("ECHO_OS_MODEL_CACHE_GB", "lots")
    with pytest.raises(UsageError, match="ECHO_OS_MODEL_CACHE_GB must be a number"):
        configured_budget(settings)
    monkeypatch.delenv("ECHO_OS_MODEL_CACHE_GB")
    for bad in ("max_gb = -1", "max_gb = \"big\"", "size = 3"):
        (workspace.home / "echo-os.toml").write_text(f"[model_cache]\n{bad}\n")
        with pytest.raises(UsageError, match=r"\[model_cache\]"):
            load_settings(workspace.home)


def test_without_a_setting_the_budget_is_a_share_of_the_machines_memory():
    import torch

    from echo_os.render.cache import BUDGET_FRACTION, total_memory

    assert ModelCache().budget("ram") == int(total_memory("ram") * BUDGET_FRACTION["ram"]) > 0
    # stats name both budgets, on a machine without a GPU too (a Ray actor's GET /api/workers answer)
    stats = ModelCache().stats()
    assert stats.budget["ram"] > 0 and (stats.budget["vram"] > 0) == torch.cuda.is_available()


@pytest.mark.anyio
async def test_api_compare_renders_one_model_at_a_time(cache, tiny_workspace, tiny_sdxl_dir, monkeypatch):
    """POST /api/compare over two models releases the first model's pipeline before the second loads, as
    `echo-os compare` does (before: the worker kept every model of the compare loaded)."""
    from echo_os.engines import sdxl
    from tests.api_helpers import api_client, wait_job
    from tests.conftest import register_model

    register_model(tiny_workspace, "tiny-b", tiny_sdxl_dir)
    loads = []
    real = sdxl.load_sdxl_pipeline

    def counting(*args, **kwargs):
        assert not sdxl.loaded_pipelines(), "a second pipeline loaded while the first was still kept"
        loads.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(sdxl, "load_sdxl_pipeline", counting)
    body = {"prompt": "a harbour", "models": ["tiny", "tiny-b"], "size": "64x64", "steps": [2], "seeds": [1],
            "engines": ["cpu"]}
    async with api_client(tiny_workspace) as (client, _):
        response = await client.post("/api/compare", json=body)
        assert response.status_code == 202, response.text
        job = await wait_job(client, response.json()["job_id"], timeout=300)
    assert job["status"] == "succeeded", job
    assert len(job["artifact_ids"]) == 3  # two cells and the grid
    assert len(loads) == 2 and not sdxl.loaded_pipelines()
