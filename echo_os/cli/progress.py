"""Progress bars for long CLI work that reports `progress(stage, done, total)`.

One tqdm bar per stage on stderr; tqdm hides them when stderr is not a terminal (pipes, CI, --json
consumers), so output stays clean where nobody watches.
"""

from __future__ import annotations

from typing import Any


class StageBars:
    """A `progress(stage, done, total)` callback drawing one bar per stage; use as a context manager."""

    def __init__(self, unit: str = "item", labels: dict[str, str] | None = None, *, file: Any = None,
                 enabled: bool | None = None):
        self.unit = unit
        self.labels = labels or {}
        self.file = file  # None: stderr
        self.disable = None if enabled is None else not enabled  # None: on when `file` is a terminal
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        bar = self.bars.get(stage)
        if bar is None:
            from tqdm import tqdm

            bar = self.bars[stage] = tqdm(total=total, desc=self.labels.get(stage, stage), unit=self.unit,
                                          leave=False, disable=self.disable, dynamic_ncols=True, file=self.file)
        if bar.total != total:
            bar.total = total
        bar.update(max(0, done - bar.n))

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()

    def __enter__(self) -> StageBars:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
