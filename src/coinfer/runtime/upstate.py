"""Where ``coinfer up`` records the workers it runs, so ``coinfer run`` can use them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..paths import cache_dir


def _key(cluster_spec: str) -> str:
    p = Path(cluster_spec)
    ident = str(p.resolve()) if p.is_file() else cluster_spec  # as resolve_cluster: a folder is no cluster file
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def state_path(cluster_spec: str) -> Path:
    return cache_dir("up") / f"{_key(cluster_spec)}.json"


def write(cluster_spec: str, addresses: dict[str, str], pids: dict[str, int], cpu_modes: dict[str, str]) -> Path:
    path = state_path(cluster_spec)
    path.write_text(json.dumps({"cluster": cluster_spec, "addresses": addresses, "pids": pids,
                                "cpu_modes": cpu_modes, "owner": os.getpid()}))
    return path


def read(cluster_spec: str) -> dict[str, Any] | None:
    """The running ``coinfer up`` for this cluster, or None (stale files are removed)."""
    path = state_path(cluster_spec)
    if not path.is_file():
        return None
    try:
        st = json.loads(path.read_text())
        os.kill(int(st["owner"]), 0)
        for pid in st["pids"].values():
            os.kill(int(pid), 0)
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        path.unlink(missing_ok=True)
        return None
    return st


def clear(cluster_spec: str) -> None:
    """Remove this process's record (another ``coinfer up``'s record is left alone)."""
    path = state_path(cluster_spec)
    try:
        owner = int(json.loads(path.read_text())["owner"])
    except (OSError, ValueError, KeyError, TypeError):
        owner = os.getpid()  # unreadable: ours to tidy
    if owner == os.getpid():
        path.unlink(missing_ok=True)
