"""How a long job shows its progress: a tqdm bar in a terminal, one compact line every
``PROGRESS_EVERY_S`` seconds without one, and ``OUTPUT/progress.json`` for whoever polls (the jobs API,
a dashboard)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from canvas_ray.io.outputs import join_uri, write_bytes
from canvas_ray.logs import get_logger

log = get_logger(__name__)
PROGRESS_EVERY_S = 10.0  # the compact progress line when stderr is not a terminal


class ProgressFile:
    """``OUTPUT/progress.json``, rewritten at most every few seconds while a run goes: what an HTTP client
    (the jobs API) or a dashboard polls. ``state`` is ``running``, ``finished`` or ``stalled`` (lost pool
    actors found no place to restart: the job failed, a re-run resumes)."""

    EVERY_S = 5.0

    def __init__(self, root: str, options: dict[str, Any], run_id: str, total: int):
        self.uri = join_uri(root, "progress.json")
        self.options, self.run_id, self.total = options, run_id, total
        self.started, self.last = time.time(), 0.0

    def write(self, state: str, counts: dict[str, int], force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last < self.EVERY_S:
            return
        self.last = now
        done = sum(counts.values())
        rate = done / max(now - self.started, 1e-9)
        record = {
            "run_id": self.run_id,
            "state": state,
            "outputs_total": self.total,
            "outputs_done": done,
            **counts,
            "outputs_per_second": round(rate, 3),
            "eta_s": round((self.total - done) / rate, 1) if rate > 0 and state == "running" else None,
            "updated_at": now,
        }
        try:
            write_bytes(self.uri, json.dumps(record).encode(), self.options)
        except OSError as error:  # progress is advisory: never fail the job over it
            log.warning("could not write %s: %s", self.uri, error)


class ProgressLine:
    """A tqdm bar in a terminal; otherwise one compact log line every ``PROGRESS_EVERY_S`` seconds."""

    def __init__(self, total: int, enabled: bool, terminal: bool):
        self.total, self.enabled, self.started, self.last = total, enabled, time.time(), 0.0
        self.bar = None
        self.printed: dict[str, int] = {}
        if enabled and terminal:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="outputs", unit="img", file=sys.stderr, dynamic_ncols=True)

    def update(self, counts: dict[str, int]) -> None:
        done = sum(counts.values())
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix(counts, refresh=False)
        elif self.enabled and time.time() - self.last >= PROGRESS_EVERY_S:
            self.last = time.time()
            self.printed = dict(counts)
            print(self.line(counts), file=sys.stderr, flush=True)

    def line(self, counts: dict[str, int]) -> str:
        done = sum(counts.values())
        elapsed = max(time.time() - self.started, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        share = done / self.total if self.total else 1.0
        parts = " ".join(f"{k} {v}" for k, v in counts.items())
        eta_text = f"{eta / 60:.1f} min" if eta == eta else "?"
        return f"outputs {done}/{self.total} ({share:.1%})  {parts}  {rate:.1f}/s  eta {eta_text}"

    def close(self, counts: dict[str, int]) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and counts != self.printed:
            print(self.line(counts), file=sys.stderr, flush=True)
