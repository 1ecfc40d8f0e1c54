"""The demos running on this machine: one small file each, so `send` and `doctor` can find them.

`mimochat demo` writes `~/.cache/mimochat/demos/<port>.json` (its URL, process id, data
directory, Redis URL, working directory and WeCom long-connection URL, which the console's
simulator looks for a fake WeCom at; no secret) when it starts and removes it when it
stops. A file whose process is gone (a demo killed outright) is ignored and removed when read.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

# Fixed, whatever MIMOCHAT_DATA_DIR says: a shell without the demo's settings still finds it.
RUN_DIR = Path("~/.cache/mimochat/demos")
# `mimochat demo --fresh` puts each new data directory here.
FRESH_DIR = Path("~/.cache/mimochat/fresh")


def run_dir() -> Path:
    """Where running demos leave their files (under the user's home)."""
    return RUN_DIR.expanduser()


def record(host: str, port: int, data_dir: Path, redis_url: str, wecom_ws_url: str = "") -> Path:
    """Say that this process serves a demo on host:port; returns the file to `forget` later."""
    folder = run_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{port}.json"
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    entry = {
        "url": f"http://{shown}:{port}",
        "port": port,
        "pid": os.getpid(),
        "data_dir": str(data_dir),
        "redis_url": redis_url,
        "cwd": str(Path.cwd()),
    }
    if wecom_ws_url:
        entry["wecom_ws_url"] = wecom_ws_url
    path.write_text(json.dumps(entry) + "\n", encoding="utf-8")
    return path


def forget(path: Path) -> None:
    """Remove a demo's file when it stops (only if it is still this process's)."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text(encoding="utf-8")).get("pid") == os.getpid():
            path.unlink()


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def demos() -> list[dict[str, Any]]:
    """The demos whose process still runs, lowest port first; stale files are removed."""
    found = []
    for path in sorted(run_dir().glob("*.json")):
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(entry, dict) and _alive(entry.get("pid")):
            found.append(entry)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
    return sorted(found, key=lambda e: int(e.get("port", 0)))
