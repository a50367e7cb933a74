"""MLflow stores opened by many processes at once: a new SQLite store, a half-migrated one, and
a tracking server on a real PostgreSQL database, each with real sweeps writing into it."""
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from glob import glob
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from sweeps.store import ensure_store, latest_schema, schema_state

TRIALS = 3  # per sweep: with max_concurrent 2, trials of both sweeps overlap in time
TASKS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_spec(folder: Path, name: str, tracking_uri: str) -> Path:
    spec = {"name": name, "base": {"preset": "split_digits", "num_tasks": TASKS, "iters": 10, "batch_size": 32},
            "space": {"beta": [0.01, 0.1, 0.5]}, "search": {"algorithm": "grid", "max_concurrent": 2},
            "num_samples": TRIALS, "mlflow": {"experiment": "shared", "tracking_uri": tracking_uri},
            "storage_path": str(folder / "ray_results")}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def hnet(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hnet.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def two_sweeps_at_once(tmp_path: Path, tracking_uri: str) -> None:
    """Two `hnet sweep run` started at the same moment into one store: both finish, every trial once."""
    specs = [write_spec(tmp_path, name, tracking_uri) for name in ("first", "second")]
    procs = [hnet("sweep", "run", str(spec), cwd=tmp_path) for spec in specs]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, out in zip(procs, outs):
        assert proc.returncode == 0, out[-3000:]
        assert f"{TRIALS} trials, {TRIALS} completed" in out, out[-3000:]
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("shared")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags["role"] == "sweep"]
    trials = [r for r in runs if r.data.tags["role"] == "trial"]
    assert len(parents) == 2 and {r.info.status for r in parents} == {"FINISHED"}
    assert len(trials) == 2 * TRIALS and {r.info.status for r in trials} == {"FINISHED"}
    assert len({(r.data.tags["sweep_id"], r.data.tags["trial_id"]) for r in trials}) == 2 * TRIALS  # no duplicates
    for name in ("first", "second"):
        assert sum(r.data.tags["sweep_id"].startswith(f"{name}-") for r in trials) == TRIALS
    for run in trials:  # every per-task metric, each step once
        for task in range(TASKS):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, f"acc_task_{task}")]
            assert steps == list(range(task, TASKS)), (run.info.run_id, task, steps)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "acc_after_mean")] == list(range(TASKS))


# ---- SQLite ----------------------------------------------------------------------------------------

OPEN = "import sys; from sweeps.store import open_store; open_store(sys.argv[1]).search_experiments()"


def test_a_new_store_opened_by_many_processes_at_once_is_created_once(tmp_path):
    """Without the lock, MLflow's migrations collide here ("table ... already exists", measured: 3 of 4
    processes failed and the store was left half-migrated)."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    procs = [subprocess.Popen([sys.executable, "-c", OPEN, uri], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(errors)
    assert schema_state(tmp_path / "mlflow.db") == ("current", latest_schema())
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # readers never block a sweep's writes
        assert db.execute("pragma journal_mode").fetchone()[0] == "wal"


def test_a_half_migrated_store_gives_one_error_line(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ensure_store(uri)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:  # what a migration cut off halfway leaves
        db.execute("create table _alembic_tmp_experiments (experiment_id integer)")
    spec = write_spec(tmp_path, "first", uri)
    for args in (["report", "shared", "--tracking-uri", uri], ["ui", "--tracking-uri", uri, "--port", str(free_port())],
                 ["sweep", "run", str(spec)]):
        proc = hnet(*args, cwd=tmp_path)
        out = proc.communicate(timeout=300)[0]
        errors = [line for line in out.splitlines() if line.startswith("hnet: error:")]
        assert proc.returncode == 2 and len(errors) == 1, out[-3000:]
        assert "half-migrated" in errors[0] and "_alembic_tmp_experiments" in errors[0] and "delete it" in errors[0]
        assert "Traceback" not in out, out[-3000:]
    assert not any((tmp_path / "ray_results").glob("*/hnet_sweep.json"))  # the sweep wrote nothing


def test_an_outdated_store_names_mlflow_db_upgrade(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ensure_store(uri)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("update alembic_version set version_num = '0123456789ab'")
    with pytest.raises(ValueError, match=r"revision 0123456789ab.*mlflow db upgrade"):
        ensure_store(uri)


def test_two_sweeps_at_once_into_one_new_sqlite_store(tmp_path):
    two_sweeps_at_once(tmp_path, f"sqlite:///{tmp_path}/mlflow.db")


# ---- a tracking server on PostgreSQL ----------------------------------------------------------------

def postgres_bin() -> Path | None:
    found = sorted(glob("/usr/lib/postgresql/*/bin/postgres"))
    return Path(found[-1]).parent if found else None


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"exited with {proc.returncode}"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def postgres(tmp_path):
    """A throwaway PostgreSQL cluster on 127.0.0.1 in a temp dir; yields its SQLAlchemy URI."""
    bin_dir = postgres_bin()
    missing = "Debian's postgresql is not installed" if bin_dir is None else None
    try:
        import psycopg  # noqa: F401 (SQLAlchemy 2.1 drives postgresql:// with psycopg 3)
    except ImportError:
        missing = missing or "psycopg is not installed (pip install -e '.[postgres]')"
    if missing:
        if os.environ.get("HNET_REQUIRE_POSTGRES"):
            pytest.fail(missing)
        pytest.skip(missing)
    data = Path(tempfile.mkdtemp(prefix="hnet-pg-"))  # not under pytest's folder, which only root may enter
    as_user = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: its own user owns the cluster
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    init = subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "hnet", "--auth=trust"],
                          capture_output=True, text=True, timeout=300)
    assert init.returncode == 0, init.stdout + init.stderr
    port = free_port()
    server = subprocess.Popen([*as_user, str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                               "-k", str(data)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, server)
        created = subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "hnet", "mlflow"],
                                 capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
        yield f"postgresql://hnet@127.0.0.1:{port}/mlflow"
    finally:
        stop(server)
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def tracking_server(postgres, tmp_path):
    """`mlflow server` on the PostgreSQL database, artifacts served from a temp dir; yields its URL."""
    port = free_port()
    log = open(tmp_path / "mlflow-server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres,
                               "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, server, timeout=240)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(server)
        log.close()


def test_two_sweeps_at_once_through_a_tracking_server_on_postgresql(tmp_path, tracking_server):
    two_sweeps_at_once(tmp_path, tracking_server)
    client = MlflowClient(tracking_server)
    runs = client.search_runs([client.get_experiment_by_name("shared").experiment_id], "tags.role = 'trial'")
    assert all(json.loads(run.data.tags["acc_matrix"]) for run in runs)  # the matrix every search returns
