"""The renderer's own rules (echo_os.render.scheduler.render_requests), on a test engine that draws draft
cards, so each test takes well under a second: batch groups and splitting by seed, saving order, the
out-of-memory back-off (halve, then VAE tiling, then one line), concurrent calls saved in call order, and
resume. Story, API and Ray tests check that their hosts use these rules; this module checks the rules.

The out-of-memory error is torch's own (the scheduler recognises CUDA out-of-memory by its type).
"""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest

from echo_os.artifacts.store import ArtifactStore
from echo_os.engines.draft import DraftEngine
from echo_os.render.requests import RenderRequest
from echo_os.render.scheduler import OutOfMemoryError, render_requests


class CardEngine(DraftEngine):
    """Draft cards, with what a GPU engine has: a batch limit that raises CUDA out-of-memory above `fits`
    images per call (or without VAE tiling), VAE tiling per call (`vae_tiling=`), and optionally calls at
    once."""

    capabilities = dataclasses.replace(DraftEngine.capabilities, tiled_decode=True)

    def __init__(self, fits: int = 64, needs_tiling: bool = False, concurrent_calls: int = 1, slow_first: float = 0.0):
        super().__init__(None, "test engine")
        self.name = "draft"
        self.fits, self.needs_tiling, self.slow_first = fits, needs_tiling, slow_first
        self.concurrent_calls = concurrent_calls
        self.calls: list[tuple[int, bool]] = []
        self.peak = 0
        self._running = 0
        self._lock = threading.Lock()

    def render(self, requests, *, vae_tiling: bool = False, **kwargs):
        import torch

        with self._lock:
            images = sum(r.count for r in requests)
            first = not self.calls
            self.calls.append((images, vae_tiling))
            self._running += 1
            self.peak = max(self.peak, self._running)
            tiling = vae_tiling
        try:
            if first and self.slow_first:
                time.sleep(self.slow_first)
            if images > self.fits or (self.needs_tiling and not tiling):
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            results = super().render(requests, **kwargs)
            return [dataclasses.replace(r, runtime=dataclasses.replace(r.runtime, vae_tiling=tiling))
                    for r in results]
        finally:
            with self._lock:
                self._running -= 1


def _request(prompt: str = "a red buoy", **fields) -> RenderRequest:
    values = dict(prompt=prompt, seed=10, width=64, height=64, steps=1, engine="draft", project="rules")
    values.update(fields)
    return RenderRequest(**values)


@pytest.fixture
def store(workspace):
    store = ArtifactStore(workspace)
    yield store
    store.close()


def test_requests_that_share_a_batch_key_share_calls_and_a_big_one_splits_by_seed(workspace, store):
    engine = CardEngine()
    requests = [_request("a", count=3), _request("b", width=128, height=128), _request("c", count=2)]
    done = []
    outcome = render_requests(workspace, requests, store=store, engine=engine, batch_size=4, on_image=done.append)
    # a and c (64x64) share calls of at most 4 images; b (128x128) is a group of its own, after them
    assert engine.calls == [(4, False), (1, False), (1, False)]
    assert [(d.source, d.index, d.artifact.meta.seed) for d in done] == [
        (0, 0, 10), (0, 1, 11), (0, 2, 12), (2, 0, 10), (2, 1, 11), (1, 0, 10)]
    assert [a.meta.prompt for a in outcome.artifacts] == ["a", "a", "a", "c", "c", "b"]
    folders = [a.path.name for a in outcome.artifacts]
    assert folders == sorted(folders)  # saved in that order


def test_out_of_memory_halves_the_batch_and_loses_nothing(workspace, store):
    engine = CardEngine(fits=2)
    outcome = render_requests(workspace, [_request(count=5)], store=store, engine=engine, batch_size=4)
    assert engine.calls == [(4, False), (2, False), (2, False), (1, False)]
    assert [a.meta.seed for a in outcome.artifacts] == [10, 11, 12, 13, 14]
    assert outcome.notes == ["out of GPU memory with 4 images per call; retrying with 2"]


def test_out_of_memory_at_one_image_turns_on_vae_tiling_for_that_group_only(workspace, store):
    engine = CardEngine(needs_tiling=True)
    outcome = render_requests(workspace, [_request(count=2)], store=store, engine=engine, batch_size=2)
    assert engine.calls == [(2, False), (1, False), (1, True), (1, True)]
    assert [a.meta.vae_tiling for a in outcome.artifacts] == [True, True]
    assert outcome.notes[-1] == "out of GPU memory with 1 image per call; retrying with VAE tiling"


def test_out_of_memory_with_tiling_stops_with_one_line_keeping_what_was_saved(workspace, store):
    engine = CardEngine(fits=0)
    with pytest.raises(OutOfMemoryError, match="even with VAE tiling.*run the same command again"):
        render_requests(workspace, [_request(count=2)], store=store, engine=engine, batch_size=2)
    assert engine.calls == [(2, False), (1, False), (1, True)]
    assert store.catalog.count() == 0


def test_concurrent_calls_run_at_once_and_are_saved_in_call_order(workspace, store):
    engine = CardEngine(concurrent_calls=2, slow_first=0.3)
    outcome = render_requests(workspace, [_request(count=5)], store=store, engine=engine, batch_size=2)
    assert engine.peak == 2 and sorted(engine.calls) == [(1, False), (2, False), (2, False)]
    assert [a.meta.seed for a in outcome.artifacts] == [10, 11, 12, 13, 14]
    folders = [a.path.name for a in outcome.artifacts]
    assert folders == sorted(folders)  # the later calls ended first, and still waited for the first


def test_a_call_out_of_memory_among_concurrent_ones_goes_again_before_the_later_ones_are_saved(workspace, store):
    engine = CardEngine(fits=2, concurrent_calls=2)
    outcome = render_requests(workspace, [_request(count=5)], store=store, engine=engine, batch_size=4)
    assert sorted(engine.calls) == [(1, False), (2, False), (2, False), (4, False)]
    assert [a.meta.seed for a in outcome.artifacts] == [10, 11, 12, 13, 14]
    assert outcome.notes == ["out of GPU memory with 4 images per call; retrying with 2"]


def test_resume_renders_only_the_images_the_project_lacks(workspace, store):
    requests = [_request("a fox"), _request("a hare", count=2), _request("a heron")]
    first = render_requests(workspace, requests, store=store, engine=CardEngine(), resume=True)
    assert len(first.artifacts) == 4 and not first.resumed
    victim = first.artifacts[2]  # the hare's second image, seed 11
    for child in victim.path.iterdir():
        child.unlink()
    victim.path.rmdir()
    store.reindex()
    engine, done = CardEngine(), []
    second = render_requests(workspace, requests, store=store, engine=engine, resume=True, on_image=done.append)
    assert engine.calls == [(1, False)]  # only the missing image
    assert [(a.meta.prompt, a.meta.seed) for a in second.artifacts] == [("a hare", 11)]
    assert sorted(a.id for a in second.resumed) == sorted(a.id for a in first.artifacts if a.id != victim.id)
    assert sorted((d.source, d.index, d.resumed) for d in done) == [
        (0, 0, True), (1, 0, True), (1, 1, False), (2, 0, True)]
    third = render_requests(workspace, requests, store=store, engine=CardEngine(), resume=True)
    assert not third.artifacts and len(third.resumed) == 4  # nothing twice


def test_without_resume_the_same_request_renders_again(workspace, store):
    render_requests(workspace, [_request()], store=store, engine=CardEngine())
    again = render_requests(workspace, [_request()], store=store, engine=CardEngine())
    assert len(again.artifacts) == 1 and not again.resumed
