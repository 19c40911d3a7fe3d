"""Claims that hold across ingress replicas, kept in the jobs root: output folders, job slots per API key
and the owner-tag key. Each is an exclusive create (``open(..., "xb")``: ``O_EXCL`` on local disks, a
conditional put on object stores that support one), so of two replicas racing for the same name exactly one
wins; nothing is ever read-modified-written.

```
ROOT/.owner-secret                       random key of the owner tag (when no env var gives one)
ROOT/.claims/<owner>/slot-<i>-<gen>.json  slot i of a key, generation gen: {"job_id", "claimed_at"}
                                          or {"released": true}; a slot is taken by creating gen + 1
ROOT/<output>/job.json                    the output folder's claim (and the job's record)
```
A slot is free when its latest generation is released, names a job the job server reports finished, or
names a job the server has never seen and was claimed more than ``grace_s`` ago (a submission that died
half-way). Old generations stay: claiming never deletes, so a stale view cannot resurrect a slot.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import secrets
import time
from typing import Any

import fsspec

from canvas_ray.io.outputs import join_uri
from canvas_ray.logs import get_logger

log = get_logger("canvas_ray.serve.claims")
SLOT_RE = re.compile(r"^slot-(\d{1,4})-(\d{9})\.json$")
FINISHED = ("SUCCEEDED", "FAILED", "STOPPED")


def create_exclusive(uri: str, data: bytes) -> bool:
    """Write ``data`` to ``uri`` unless it exists, atomically; False when it already exists.

    A filesystem without exclusive create falls back to exists-then-write (not atomic; the per-key limit
    is then held by the recount after submission).
    """
    fs, path = fsspec.core.url_to_fs(uri)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    try:
        with fs.open(path, "xb") as handle:
            handle.write(data)
        return True
    except FileExistsError:
        return False
    except (ValueError, NotImplementedError):  # no "x" mode on this filesystem
        if fs.exists(path):
            return False
        with fs.open(path, "wb") as handle:
            handle.write(data)
        return True


def read_json(uri: str) -> dict[str, Any] | None:
    """A JSON object file (any fsspec URI), or None when it is missing, unreadable or not an object."""
    try:
        with fsspec.open(uri, "rb") as handle:
            data = json.loads(handle.read())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class Claims:
    """Exclusive claims under the jobs root ``root``."""

    def __init__(self, root: str, grace_s: float = 120.0):
        self.root = root.rstrip("/")
        self.grace_s = grace_s

    # -- the owner-tag key ------------------------------------------------------------------------

    def owner_secret(self) -> bytes:
        """The key of the owner tag: created once (exclusively) in the root, read by every replica."""
        uri = join_uri(self.root, ".owner-secret")
        if create_exclusive(uri, secrets.token_hex(32).encode()) and "://" not in self.root:
            os.chmod(uri, 0o600)
        with fsspec.open(uri, "rb") as handle:
            secret = handle.read().strip()
        if len(secret) < 32:
            raise RuntimeError(f"{uri} holds no usable key")
        return secret

    # -- output folders ---------------------------------------------------------------------------

    def claim_output(self, output: str, record: dict[str, Any]) -> bool:
        """Take ``output`` for a job by creating its ``job.json``; False when another job holds it."""
        return create_exclusive(join_uri(output, "job.json"), json.dumps(record).encode())

    def release_output(self, output: str) -> None:
        """Give back an output a submission claimed but never used (its claim and its job config)."""
        fs, path = fsspec.core.url_to_fs(output)
        for name in ("job-config.yaml", "job.json"):
            with contextlib.suppress(FileNotFoundError):
                fs.rm(posixpath.join(path, name))

    # -- job slots per key ------------------------------------------------------------------------

    def _latest(self, owner: str) -> dict[int, int]:
        fs, path = fsspec.core.url_to_fs(join_uri(self.root, ".claims", owner))
        if hasattr(fs, "invalidate_cache"):
            fs.invalidate_cache(path)  # object stores cache listings: a stale one would hide new claims
        try:
            names = [posixpath.basename(p) for p in fs.ls(path, detail=False)]
        except FileNotFoundError:
            return {}
        latest: dict[int, int] = {}
        for name in names:
            match = SLOT_RE.match(name)
            if match:
                slot, generation = int(match.group(1)), int(match.group(2))
                latest[slot] = max(generation, latest.get(slot, -1))
        return latest

    def _slot_uri(self, owner: str, slot: int, generation: int) -> str:
        return join_uri(self.root, ".claims", owner, f"slot-{slot}-{generation:09d}.json")

    def _free(self, record: dict[str, Any] | None, states: dict[str, str], now: float) -> bool:
        if record is None or record.get("released"):
            return True
        state = states.get(str(record.get("job_id")))
        if state is not None:
            return state in FINISHED
        return now - float(record.get("claimed_at") or 0) > self.grace_s

    def claim_slot(self, owner: str, limit: int, job_id: str, states: dict[str, str]) -> str | None:
        """Take one of ``limit`` slots of ``owner`` for ``job_id``; the claim's URI, or None when all are
        held. ``states``: the job server's ``{job id: state}``, read just before."""
        now = time.time()
        latest = self._latest(owner)
        record = json.dumps({"job_id": job_id, "claimed_at": now}).encode()
        for slot in range(limit):
            generation = latest.get(slot)
            if generation is not None:
                if not self._free(read_json(self._slot_uri(owner, slot, generation)), states, now):
                    continue
                generation += 1
            else:
                generation = 0
            uri = self._slot_uri(owner, slot, generation)
            if create_exclusive(uri, record):
                return uri
            # another replica took this slot a moment ago: try the next one
        return None

    def release_slot(self, claim: str, job_id: str) -> None:
        """Free a slot whose submission failed (the next generation says so)."""
        match = SLOT_RE.match(posixpath.basename(claim))
        if match is None:
            return
        slot, generation = int(match.group(1)), int(match.group(2))
        folder = posixpath.dirname(claim)
        released = json.dumps({"released": True, "job_id": job_id}).encode()
        if not create_exclusive(join_uri(folder, f"slot-{slot}-{generation + 1:09d}.json"), released):
            log.warning("slot claim %s was already superseded", claim)
