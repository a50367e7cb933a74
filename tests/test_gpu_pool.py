"""bench/gpu_pool.py (trials of a spec on one GPU without Ray): stopping it ends its workers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_ends_the_pools_workers(tmp_path):
    """Trials long enough to be running when SIGTERM comes: the pool must not leave them as orphans."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "gpu_pool.py"), str(ROOT / "sweeps" / "configs" / "smoke.yaml"),
         "--data-root", str(tmp_path), "--device", "cpu", "--workers", "2", "--set", "iters=100000",
         "--set", "threads=1", "--out", str(tmp_path / "results.jsonl")],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        while len(workers) < 2 and time.time() < deadline:  # the spawn workers (plus, maybe, a resource tracker)
            time.sleep(1)
            workers = [pid for pid in children(proc.pid) if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 2, proc.stdout.read() if proc.poll() is not None else "workers did not start"
        time.sleep(5)  # into their first trial
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        time.sleep(2)
        assert not [pid for pid in workers if alive(pid)]
        assert not (tmp_path / "results.jsonl").read_text().strip()  # no trial finished, nothing half-written
    finally:
        for pid in [proc.pid, *workers]:  # nothing left running, whatever failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
