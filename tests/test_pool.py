"""`hnet sweep run --backend pool`: a spec's trials as worker processes on one machine, without Ray.

Real processes on the offline digits data: the trials are the spec's own, a second run continues
the results file, `hnet report` reads it, it runs where Ray, Optuna and MLflow are missing, and
SIGTERM leaves no worker behind.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeps.space import plan, trials
from sweeps.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}

SPEC = """
name: pool_test
base:
  preset: split_digits
  num_tasks: 2
  iters: {iters}
space:
  hnet_hidden:
    layers: [1, 2]
    sizes: [5, 10]
  chunk_emb_dim: [4, 8]
  chunk_size: [1000, 2000]
search:
  algorithm: {algorithm}
  seed: 3
num_samples: {samples}
seeds: 2
compression:
  max: 1.0
mlflow:
  tracking_uri: sqlite:///{store}
"""


STORE: Path = Path("mlflow.db")  # shared_store: one MLflow store for all (a new one costs ~3 s)


@pytest.fixture(scope="module", autouse=True)
def shared_store(tmp_path_factory) -> None:
    global STORE
    STORE = tmp_path_factory.mktemp("store") / "mlflow.db"


def write_spec(tmp_path: Path, iters: int = 10, algorithm: str = "random", samples: int = 2) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.format(iters=iters, algorithm=algorithm, samples=samples, store=STORE))
    return path


def sweep(*args: str, blocked: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`python -m sweeps ...` (= `hnet sweep ...`), with the ``blocked`` modules made unimportable."""
    code = (f"import sys, runpy; sys.modules.update(dict.fromkeys({list(blocked)!r})); "
            "sys.argv[0] = 'sweeps'; runpy.run_module('sweeps', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=ENV,
                          timeout=600)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expand(spec):
    return trials(spec, plan(spec).configs)


def test_plan_random_and_grid(tmp_path):
    spec = load_spec(write_spec(tmp_path, samples=3))
    configs = expand(spec)
    assert configs == expand(load_spec(write_spec(tmp_path, samples=3)))  # the same draws every time
    assert len(configs) == 6 and [c.seed for c in configs] == [0, 0, 0, 1, 1, 1]
    assert len({repr(c.replace(seed=0)) for c in configs}) == 3  # three distinct configurations
    grid = load_spec(_grid_spec(tmp_path))  # every point, each with both seeds
    points = {(c.hnet_hidden, c.chunk_emb_dim, c.chunk_size) for c in expand(grid)}
    # (10, 10) with chunks of 2,000 has more weights than the target: outside compression.max 1
    assert points == {(h, e, s) for h in [(5,), (10, 10)] for e in (4, 8) for s in (1000, 2000)
                      if (h, s) != ((10, 10), 2000)}
    assert len(expand(grid)) == 12
    with pytest.raises(SpecError, match="needs the Ray backend"):
        expand(load_spec(write_spec(tmp_path, algorithm="tpe")))


def _grid_spec(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(SPEC.format(iters=10, algorithm="grid", samples=100, store=STORE).replace(
        "  hnet_hidden:\n    layers: [1, 2]\n    sizes: [5, 10]\n", "  hnet_hidden: [[5], [10, 10]]\n"))
    return path


def test_pool_runs_continues_and_reports_without_ray_optuna_mlflow(tmp_path):
    spec, results = write_spec(tmp_path), tmp_path / "results.jsonl"
    args = (str(spec), "--backend", "pool", "--workers", "1", "--results", str(results), "--set", "threads=1")
    first = sweep("run", *args, "--time-limit", "1", blocked=("ray", "optuna", "mlflow", "pandas"))
    assert first.returncode == 0, first.stderr + first.stdout
    assert len(lines(results)) == 1 and "run the same command again" in first.stdout  # one started, then the limit
    second = sweep("run", *args, blocked=("ray", "optuna", "mlflow", "pandas"))
    assert second.returncode == 0, second.stderr + second.stdout
    assert "3 trials to run (1 already in" in second.stdout and "task 2/2 done" in second.stdout
    done = lines(results)
    assert sorted(json.dumps(r["config"], sort_keys=True) for r in done) == \
        sorted(json.dumps(c.to_dict(), sort_keys=True) for c in expand(load_spec(spec)))  # the spec's trials, once
    assert all(len(r["acc_matrix"]) == 2 and r["compression_ratio"] <= 1.0 for r in done)
    report = subprocess.run([sys.executable, "-m", "hnet.cli", "report", "pool_test", "--results", str(results),
                             "--out", str(tmp_path / "report")], capture_output=True, text=True, env=ENV, timeout=300)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "report" / "fig_a7.png").exists() and "4" in (tmp_path / "report" / "report.md").read_text()


def test_pool_refuses_what_it_cannot_run(tmp_path):
    tpe = sweep("run", str(write_spec(tmp_path, algorithm="tpe")), "--backend", "pool")
    assert tpe.returncode == 2 and tpe.stderr.strip().count("\n") == 0 and "needs the Ray backend" in tpe.stderr
    ray_flags = sweep("run", str(write_spec(tmp_path)), "--workers", "2")
    assert ray_flags.returncode == 2 and "--workers belongs to --backend pool" in ray_flags.stderr
    bad_set = sweep("run", str(write_spec(tmp_path)), "--backend", "pool", "--set", "nonsense=1")
    assert bad_set.returncode == 2 and "unknown config key(s): nonsense" in bad_set.stderr
    assert not list(tmp_path.glob("**/*.jsonl"))  # nothing written


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
    results = tmp_path / "results.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeps", "run", str(write_spec(tmp_path, iters=100000)), "--backend", "pool",
         "--workers", "2", "--set", "threads=1", "--set", f"data_root={tmp_path}", "--results", str(results)],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers: list[int] = []
    try:
        deadline = time.time() + 120
        # the 2 spawn workers and the process that carries their per-task results to MLflow (a multiprocessing
        # manager; plus, maybe, a resource tracker, which is not spawned)
        while len(workers) < 3 and time.time() < deadline:
            time.sleep(1)
            workers = [pid for pid in children(proc.pid) if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(workers) == 3, proc.stdout.read() if proc.poll() is not None else "workers did not start"
        time.sleep(5)  # into their first trial
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
        time.sleep(2)
        assert not [pid for pid in workers if alive(pid)]
        assert not results.exists() or not results.read_text().strip()  # no trial finished, nothing half-written
    finally:
        for pid in [proc.pid, *workers]:  # nothing left running, whatever failed
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def test_a_last_line_cut_short_is_removed_and_its_trial_runs_again(tmp_path):
    spec, results = write_spec(tmp_path, samples=1), tmp_path / "results.jsonl"
    args = ("run", str(spec), "--backend", "pool", "--workers", "1", "--results", str(results), "--set", "threads=1")
    assert sweep(*args).returncode == 0
    whole = results.read_text().splitlines()
    assert len(whole) == 2
    results.write_text(whole[0] + "\n" + whole[1][:100])  # killed while writing the second record
    again = sweep(*args)
    assert again.returncode == 0 and "removing a last line cut short" in again.stdout, again.stderr
    assert [json.loads(line)["config"] for line in results.read_text().splitlines()] == \
        [json.loads(line)["config"] for line in whole]
    results.write_text("not json\n" + results.read_text())  # not a cut: refuse to append to it
    bad = sweep(*args)
    assert bad.returncode == 2 and "line 1 is not a trial record" in bad.stderr


def test_set_refuses_a_searched_field_and_the_pool_refuses_ray_flags(tmp_path):
    spec = str(write_spec(tmp_path))
    searched = sweep("run", spec, "--backend", "pool", "--set", "chunk_size=7")
    assert searched.returncode == 2 and "searched by the spec's space" in searched.stderr
    for flag in (["--address", "127.0.0.1:6379"], ["--verbose"], ["--workers", "0"]):
        refused = sweep("run", spec, "--backend", "pool", *flag)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, (flag, refused.stderr)


def test_a_trial_cut_off_resumes_after_its_last_finished_task(tmp_path):
    """SIGTERM after a trial's first task: the next run resumes it from its checkpoint (not from the
    start) and records what an uninterrupted run records; the checkpoint goes once the record is in."""
    spec = write_spec(tmp_path, iters=300, samples=1)
    args = ("run", str(spec), "--backend", "pool", "--workers", "1", "--set", "threads=1")
    whole = tmp_path / "whole" / "results.jsonl"
    assert sweep(*args, "--results", str(whole)).returncode == 0

    cut = tmp_path / "cut" / "results.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "sweeps", *args, "--results", str(cut)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = ""
        while "task 1/2 done" not in seen:
            line = proc.stdout.readline()
            assert line, seen  # the pool ended before its first task did
            seen += line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not cut.exists() or not cut.read_text().strip()
    assert len(list((cut.parent / "results.checkpoints").glob("*.pt"))) == 1

    again = sweep(*args, "--results", str(cut))
    assert again.returncode == 0, again.stderr + again.stdout
    assert "resumed from its checkpoint" in again.stdout and "task 1/2 done" not in again.stdout.split("seed=1")[0]
    assert [r["acc_matrix"] for r in lines(cut)] == [r["acc_matrix"] for r in lines(whole)]
    assert not list((cut.parent / "results.checkpoints").glob("*.pt"))
