"""Echo Memory search benchmark: build time, memory, single-query latency and recall@10 of VectorIndex.

    PYTHONPATH=. python benchmarks/memory_search.py --sizes 10k,100k --datasets uniform,clustered
    PYTHONPATH=. python benchmarks/memory_search.py --sizes 1m --datasets uniform --json out.json

For each dataset and size: n random L2-normalised 512-d vectors are added to a `VectorIndex` (the shipped
code path: exact IndexFlatIP up to 200,000 vectors, HNSW above, efSearch calibrated at build time), then
`--queries` fresh query vectors (not in the index) are searched one at a time with k=10. Recall@10 is
measured against exact search (faiss.knn, inner product) over the same vectors.

Datasets (say which one a figure comes from):
- uniform:   i.i.d. Gaussian directions, i.e. uniform on the 512-d sphere. No structure at all: the
             hardest case for any graph index, since a point's nearest neighbours are barely nearer than
             the rest (top-1 cosine about 0.17 against a typical 0 +- 0.04).
- clustered: synthetic, and easier on purpose: 1,000 clusters, each a random 16-d subspace of the 512-d
             space plus 5% isotropic noise, so the intrinsic dimension is low the way real embedding sets'
             is. It is not real CLIP data; it shows how the same index behaves on structured vectors.

Each (dataset, size) runs in its own child process so the RSS delta of the build is not muddied by earlier
runs. Threads: faiss.omp_set_num_threads(--threads), 2 by default (the target machine).
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DIM = 512
K = 10
SEED = 1234


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale != 1 else text) * scale)


def size_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


# -- data ----------------------------------------------------------------------------------------------


def uniform_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    import faiss

    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - start), DIM), dtype=np.float32)
        faiss.normalize_L2(block)
        out[start:start + len(block)] = block
    return out


def clustered_vectors(n: int, rng: np.random.Generator, clusters: int = 1000, latent: int = 16,
                      noise: float = 0.05) -> np.ndarray:
    import faiss

    centers = rng.standard_normal((clusters, DIM), dtype=np.float32) / np.sqrt(DIM)
    labels = rng.integers(0, clusters, n)
    out = np.empty((n, DIM), dtype=np.float32)
    for cluster in range(clusters):
        rows = np.flatnonzero(labels == cluster)
        basis = rng.standard_normal((latent, DIM), dtype=np.float32) / np.sqrt(DIM)
        z = rng.standard_normal((len(rows), latent), dtype=np.float32) * 1.5
        eps = rng.standard_normal((len(rows), DIM), dtype=np.float32) * (noise / np.sqrt(DIM))
        out[rows] = centers[cluster] + z @ basis + eps
    faiss.normalize_L2(out)
    return out


def make_dataset(name: str, n: int, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """(base vectors, query vectors): the queries come from the same distribution, not from the base."""
    rng = np.random.default_rng(SEED)
    make = uniform_vectors if name == "uniform" else clustered_vectors
    both = make(n + queries, rng)
    order = np.random.default_rng(SEED + 1).permutation(n + queries)
    return np.ascontiguousarray(both[order[:n]]), np.ascontiguousarray(both[order[n:]])


# -- measuring -----------------------------------------------------------------------------------------


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def time_queries(index, queries: np.ndarray, truth: np.ndarray, allowed=None) -> dict:
    latencies = np.empty(len(queries))
    hits = 0
    for i, query in enumerate(queries):
        started = time.perf_counter()
        results = index.search(query, K, allowed_ids=allowed)
        latencies[i] = time.perf_counter() - started
        hits += len({r[0] for r in results} & set(truth[i].tolist()))
    return {
        "queries": len(queries),
        "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 3),
        "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 3),
        "recall_at_10": round(hits / (len(queries) * K), 4),
    }


def faiss_file_bytes(index, workdir: Path) -> int:
    import faiss

    path = workdir / "size-probe.faiss"
    faiss.write_index(index._get_faiss(), str(path))
    size = path.stat().st_size
    path.unlink()
    return size


def build(memory_dir: Path, base: np.ndarray, threshold: int):
    from echo_os.memory.index import VectorIndex

    index = VectorIndex(memory_dir, "bench", DIM, hnsw_threshold=threshold)
    before = rss_bytes()
    started = time.perf_counter()
    index.add(np.arange(len(base), dtype=np.int64), base)
    seconds = time.perf_counter() - started
    return index, {
        "kind": index.kind,
        "build_s": round(seconds, 2),
        "rss_delta_mb": round((rss_bytes() - before) / 2**20, 1),
        "ef_search": index.ef_search if index.kind == "hnsw" else None,
        "calibrated_recall": index.calibrated_recall,
        "answers_exactly": index.answers_exactly,
    }


def run_one(dataset: str, n: int, args: argparse.Namespace) -> dict:
    import faiss

    from echo_os.memory import index as index_module
    from echo_os.memory import knn

    faiss.omp_set_num_threads(args.threads)
    if args.ef_construction:
        knn.HNSW_EF_CONSTRUCTION = args.ef_construction
    started = time.perf_counter()
    base, queries = make_dataset(dataset, n, args.queries)
    result: dict = {"dataset": dataset, "n": n, "dim": DIM, "threads": args.threads,
                    "ef_construction": knn.HNSW_EF_CONSTRUCTION, "hnsw_m": knn.HNSW_M,
                    "generate_s": round(time.perf_counter() - started, 1)}
    started = time.perf_counter()
    top, truth = faiss.knn(queries, base, K, metric=faiss.METRIC_INNER_PRODUCT)
    result["ground_truth_s"] = round(time.perf_counter() - started, 1)
    result["nn_cosine_top1_mean"] = round(float(top[:, 0].mean()), 3)
    result["nn_cosine_top10_mean"] = round(float(top[:, -1].mean()), 3)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        configs = [("shipped", index_module.DEFAULT_HNSW_THRESHOLD)]
        if n <= index_module.DEFAULT_HNSW_THRESHOLD and args.compare:
            configs.append(("hnsw (forced)", 0))
        if n > index_module.DEFAULT_HNSW_THRESHOLD and args.compare:
            configs.append(("flat (forced)", 2**62))
        result["configs"] = []
        for label, threshold in configs:
            index, stats = build(workdir / label.split()[0], base, threshold)
            stats["config"] = label
            stats["index_file_mb"] = round(faiss_file_bytes(index, workdir) / 2**20, 1)
            # Exact search over 1M vectors takes ~100 ms a query: time fewer of them.
            count = args.queries if index.kind == "hnsw" or n <= 200_000 else min(args.queries, 200)
            stats.update(time_queries(index, queries[:count], truth[:count]))
            if index.kind == "hnsw" and args.ef_sweep:
                # The graph itself at each efSearch, even where the shipped index would answer exactly.
                knn.EXACT_WHEN_RECALL_MISSED = False
                sweep = []
                chosen = index.ef_search
                for ef in knn.EF_SEARCH_LADDER:
                    index.ef_search = ef
                    row = {"ef_search": ef, **time_queries(index, queries[:args.sweep_queries],
                                                           truth[:args.sweep_queries])}
                    sweep.append(row)
                    print(f"    {dataset} {size_label(n)} {label} ef={ef}: {row}", flush=True)
                index.ef_search = chosen
                knn.EXACT_WHEN_RECALL_MISSED = True
                stats["ef_sweep"] = sweep
            if args.filtered:
                # A catalog filter letting 10% of the ids through (a project, a model, a date range).
                allowed = np.random.default_rng(SEED + 2).choice(n, size=n // 10, replace=False).astype(np.int64)
                _, sub = faiss.knn(queries[:args.sweep_queries], base[np.sort(allowed)], K,
                                   metric=faiss.METRIC_INNER_PRODUCT)
                sub_truth = np.sort(allowed)[sub]
                stats["filtered_10pct"] = time_queries(index, queries[:args.sweep_queries], sub_truth, allowed)
            if args.persist and label == "shipped":
                started = time.perf_counter()
                index.save()
                stats["save_s"] = round(time.perf_counter() - started, 2)
                started = time.perf_counter()
                index_module.VectorIndex.open(index.memory_dir, "bench", DIM)
                stats["open_verify_s"] = round(time.perf_counter() - started, 2)
            shown = stats if not args.ef_sweep else {k: v for k, v in stats.items() if k != 'ef_sweep'}
            print(f"  {dataset} {size_label(n)} {label}: {shown}", flush=True)
            result["configs"].append(stats)
            del index
            gc.collect()
    return result


def _child(dataset: str, n: int, args: argparse.Namespace, queue) -> None:
    try:
        queue.put(run_one(dataset, n, args))
    except BaseException as error:  # noqa: BLE001 - report to the parent, which prints it
        queue.put({"dataset": dataset, "n": n, "error": f"{type(error).__name__}: {error}"})


def environment(threads: int) -> dict:
    import faiss
    import psutil

    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores visible, "
                   f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM",
        "cpu": _cpu_model(),
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown(results: list[dict]) -> str:
    lines = ["| dataset | n | index | build s | RSS delta MB | index file MB | efSearch | p50 ms | p99 ms | recall@10 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for result in results:
        if "error" in result:
            lines.append(f"| {result['dataset']} | {size_label(result['n'])} | error: {result['error']} |||||||| |")
            continue
        for c in result["configs"]:
            lines.append(
                f"| {result['dataset']} | {size_label(result['n'])} | {c['config']}: {c['kind']} | {c['build_s']} | "
                f"{c['rss_delta_mb']} | {c['index_file_mb']} | {c['ef_search'] or '-'} | {c['p50_ms']} | "
                f"{c['p99_ms']} | {c['recall_at_10']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10k,100k,1m", help="comma-separated: 10k,100k,1m")
    parser.add_argument("--datasets", default="uniform,clustered", help="uniform and/or clustered")
    parser.add_argument("--queries", type=int, default=1000, help="single queries timed per config")
    parser.add_argument("--sweep-queries", type=int, default=300, help="queries per efSearch value")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compare", dest="compare", action="store_false",
                        help="skip the forced HNSW (small sizes) / forced exact (large sizes) comparison")
    parser.add_argument("--no-ef-sweep", dest="ef_sweep", action="store_false")
    parser.add_argument("--no-filtered", dest="filtered", action="store_false")
    parser.add_argument("--persist", action="store_true", help="also time save() and open() (checksums)")
    parser.add_argument("--ef-construction", type=int, default=0,
                        help="override HNSW efConstruction (an experiment: not the shipped value)")
    parser.add_argument("--workdir", default=None, help="where temporary index files go")
    parser.add_argument("--json", default=None, help="write all figures to this JSON file")
    args = parser.parse_args(argv)

    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    for dataset in datasets:
        if dataset not in ("uniform", "clustered"):
            parser.error(f"unknown dataset {dataset!r}")
    env = environment(args.threads)
    print(json.dumps(env), flush=True)
    results = []
    context = multiprocessing.get_context("spawn")
    for dataset in datasets:
        for n in sizes:
            print(f"{dataset} {size_label(n)} ...", flush=True)
            queue = context.Queue()
            child = context.Process(target=_child, args=(dataset, n, args, queue))
            child.start()
            result = queue.get()
            child.join()
            results.append(result)
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": env, "command": " ".join(sys.argv),
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
