"""How long the first open of an old jobs.db takes: m003_animatic_jobs copies the whole jobs table.

Builds a jobs.db as the migrations before m003 left it, with N finished render jobs (a 200-character
prompt each) and one recorded image per job, then times JobStore(path) (open + migrate, synchronous=FULL).

    PYTHONPATH=$PWD python benchmarks/jobs_migration.py --jobs 10000 100000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def old_jobs_db(path: Path, count: int) -> None:
    from echo_os.api import jobs as jobs_module
    from echo_os.render.requests import RenderRequest
    from echo_os.sqlite import connect

    db = connect(path)
    jobs_module.MIGRATIONS.before("m003_animatic_jobs").migrate(db)
    spec = json.dumps({"items": [RenderRequest(prompt="x" * 200, engine="draft").model_dump(mode="json")]})
    db.execute("BEGIN")
    db.executemany("INSERT INTO jobs (id, kind, status, request, images_total, created) "
                   "VALUES (?, 'render', 'succeeded', ?, 1, '2026-01-01T00:00:00+00:00')",
                   ((f"{i:032x}", spec) for i in range(count)))
    db.executemany("INSERT INTO job_images VALUES (?, 0, ?, '2026-01-01T00:00:00+00:00')",
                   ((f"{i:032x}", f"{i:064x}") for i in range(count)))
    db.execute("COMMIT")
    db.close()


def main() -> None:
    from echo_os.api.jobs import JobStore

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[10_000, 100_000])
    args = parser.parse_args()
    print("| jobs | jobs.db, MB | open + migrate, s |\n| ---: | ---: | ---: |")
    for count in args.jobs:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "jobs.db"
            old_jobs_db(path, count)
            size = path.stat().st_size / 1e6
            started = time.perf_counter()
            JobStore(path).close()
            print(f"| {count:,} | {size:.1f} | {time.perf_counter() - started:.2f} |")


if __name__ == "__main__":
    main()
