"""MLflow stores opened by many processes at once: a new SQLite store, a half-migrated one, and
a tracking server on a real PostgreSQL database, each with real sweeps writing into it; and the
team's server with users (cluster/tracking_server.sh), which lets in only them."""
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from glob import glob
from pathlib import Path
from urllib.parse import urlsplit

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
    durability = ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]  # throwaway: fast
    server = subprocess.Popen([*as_user, str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
                               "-k", str(data), *durability], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


# ---- the team's server: MLflow's basic-auth app on PostgreSQL (cluster/tracking_server.sh) ----------

SERVER_SCRIPT = Path(__file__).resolve().parents[1] / "cluster" / "tracking_server.sh"
ADMIN, ALICE, BOB = "hnet-admin", "alice", "bob"
CREDENTIAL_VARS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                   "MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD")


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """This environment without anyone's MLflow credentials (HOME too: ~/.mlflow/credentials), the venv's
    `mlflow` first on PATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARS}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
               PYTHONWARNINGS="ignore", **extra)
    return env


def as_user(env: dict[str, str], user: str | None, password: str | None) -> dict[str, str]:
    """``env`` presenting ``user`` / ``password`` through MLflow's standard variables (None: anonymous)."""
    return {**env, **({"MLFLOW_TRACKING_USERNAME": user} if user else {}),
            **({"MLFLOW_TRACKING_PASSWORD": password} if password else {})}


def hnet_as(env: dict[str, str], *args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hnet.cli", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def one_error(proc: subprocess.Popen, *words: str) -> str:
    """Exit status 2 and one line of output, an `hnet: error:` holding ``words``; returns the line."""
    out = proc.communicate(timeout=300)[0]
    errors = [line for line in out.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(errors) == 1 and errors[0].startswith("hnet: error:"), out[-3000:]
    assert all(word in errors[0] for word in words), errors[0]
    return errors[0]


def refused(status: int, action, *args) -> None:
    """``action(*args)`` is refused by the server with HTTP ``status``."""
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as caught:
        action(*args)
    assert caught.value.get_http_status_code() == status, caught.value.message


def test_the_team_server_lets_in_only_its_users(tmp_path, postgres, monkeypatch):
    """The documented team server refuses weak or missing admin passwords; on it a sweep as alice records
    every trial; anonymous and wrong-password requests are refused (401) for reads and writes, in one line
    by `hnet`; bob sees nothing of alice's experiment and cannot write to it (403) until she grants him
    READ: then his `hnet report` works, and his writes are still refused."""
    try:
        import flask_wtf  # noqa: F401 (MLflow's auth app: the `auth` extra)
    except ImportError:
        missing = "MLflow's auth app needs Flask-WTF: pip install -e '.[auth]'"
        if os.environ.get("HNET_REQUIRE_POSTGRES"):
            pytest.fail(missing)
        pytest.skip(missing)
    from mlflow.server import get_app_client

    from analysis.runs import load_trials
    from sweeps.store import AccessError

    port = urlsplit(postgres).port
    created = subprocess.run([str(postgres_bin() / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "hnet",
                              "mlflow_auth"], capture_output=True, text=True, timeout=60)  # the users' database
    assert created.returncode == 0, created.stderr
    auth_db = postgres.rsplit("/", 1)[0] + "/mlflow_auth"
    home, config = tmp_path / "home", tmp_path / "server-config"
    home.mkdir()
    credentials = home / "tracking-admin"  # outside the repository, as the script demands
    env = clean_env(home, HNET_TRACKING_DIR=str(config), HNET_TRACKING_CREDENTIALS=str(credentials))
    server_port = free_port()
    command = ["bash", str(SERVER_SCRIPT), "--backend-store-uri", postgres, "--auth-database-uri", auth_db, "--port",
               str(server_port), "--workers", "1", "--artifacts-destination", str(tmp_path / "artifacts")]

    # no server without an admin password of >= 12 characters from the environment or a private file
    admin_password = os.urandom(12).hex()  # 24 characters, never a default
    for refusal, extra, file_text in (
            ("no admin password", {"MLFLOW_AUTH_ADMIN_USERNAME": ADMIN}, None),
            ("at least 12", {"MLFLOW_AUTH_ADMIN_USERNAME": ADMIN, "MLFLOW_AUTH_ADMIN_PASSWORD": "elevenchars"}, None),
            ("at least 12", {}, f"username={ADMIN}\npassword=password123\n"),
            ("others may read it", {}, f"username={ADMIN}\npassword={admin_password}\n")):
        if file_text:
            credentials.write_text(file_text)
            credentials.chmod(0o600 if refusal != "others may read it" else 0o644)
        proc = subprocess.run(command, env={**env, **extra}, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and refusal in proc.stderr, proc.stderr
    assert not config.exists()  # nothing written, nothing started
    credentials.chmod(0o600)
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # its own process group: the workers stop with it
    try:
        wait_for_port(server_port, server, timeout=240)
        url = f"http://127.0.0.1:{server_port}"
        ini = config / "basic_auth.ini"
        assert ini.stat().st_mode & 0o777 == 0o600 and config.stat().st_mode & 0o777 == 0o700
        assert admin_password not in ini.read_text() and "NO_PERMISSIONS" in ini.read_text()

        def client(user: str | None, password: str | None) -> MlflowClient:  # MLflow reads them per request
            for name, value in zip(CREDENTIAL_VARS[:2], (user, password)):
                if value:
                    monkeypatch.setenv(name, value)
                else:
                    monkeypatch.delenv(name, raising=False)
            return MlflowClient(url)

        monkeypatch.setenv("HOME", str(home))
        client(ADMIN, admin_password)
        admin = get_app_client("basic-auth", tracking_uri=url)
        passwords = {ALICE: "alice-" + os.urandom(8).hex(), BOB: "bob-" + os.urandom(8).hex()}
        for user, password in passwords.items():
            admin.create_user(user, password)
        for user in (ADMIN, "admin"):  # the password MLflow <= 3.16.0 shipped opens nothing
            refused(401, client(user, "password1234").search_experiments)

        # alice's sweep; beside it, no or wrong credentials are refused for reads and writes (`hnet`: one line)
        spec = write_spec(tmp_path, "first", url)
        sweep = hnet_as(as_user(env, ALICE, passwords[ALICE]), "sweep", "run", str(spec), cwd=tmp_path)
        anonymous = hnet_as(env, "sweep", "run", str(spec), cwd=tmp_path)
        anonymous_pool = hnet_as(env, "sweep", "run", str(spec), "--backend", "pool", cwd=tmp_path)  # Ray-less
        for user, password in ((None, None), (ALICE, "not-alices-password")):  # reads and writes, any experiment
            refused(401, client(user, password).search_experiments)
            refused(401, client(user, password).get_experiment_by_name, "shared")
            refused(401, client(user, password).create_experiment, "intruder")
        for proc in (anonymous, anonymous_pool):
            one_error(proc, "refused an anonymous request", "(401)", "write to experiment 'shared'",
                      "MLFLOW_TRACKING_USERNAME")
        client(BOB, "not-bobs-password")
        with pytest.raises(AccessError, match="did not accept the password of user 'bob' to read experiment 'shared'"):
            load_trials("shared", url)  # what `hnet report` reads with (subprocesses cost seconds each)

        # bob, without a grant, while alice's sweep runs: her experiment does not exist for him (one line from `hnet`)
        deadline = time.monotonic() + 120
        while (experiment := client(ALICE, passwords[ALICE]).get_experiment_by_name("shared")) is None:
            assert sweep.poll() is None and time.monotonic() < deadline, "alice's sweep made no experiment"
            time.sleep(0.2)
        bob_sweep = hnet_as(as_user(env, BOB, passwords[BOB]), "sweep", "run", str(spec), cwd=tmp_path)
        client(BOB, passwords[BOB])
        with pytest.raises(AccessError, match=r"denied user 'bob' permission to read experiment 'shared' \(403\)"):
            load_trials("shared", url)
        one_error(bob_sweep, "denied user 'bob'", "(403)", "write to experiment 'shared'", "EDIT")
        out = sweep.communicate(timeout=600)[0]
        assert sweep.returncode == 0 and f"{TRIALS} trials, {TRIALS} completed" in out, out[-3000:]
        assert len(list((tmp_path / "ray_results").iterdir())) == 1  # alice's sweep folder: the others wrote nothing
        runs = client(ALICE, passwords[ALICE]).search_runs([experiment.experiment_id])
        trials = [r for r in runs if r.data.tags["role"] == "trial"]
        assert len(runs) == TRIALS + 1 and {r.info.status for r in runs} == {"FINISHED"} and len(trials) == TRIALS
        bob = client(BOB, passwords[BOB])
        refused(403, bob.get_experiment_by_name, "shared")
        assert bob.search_runs([experiment.experiment_id]) == [] and "shared" not in {e.name for e in bob.search_experiments()}
        refused(403, bob.get_run, trials[0].info.run_id)
        refused(403, bob.create_run, experiment.experiment_id)
        refused(403, bob.set_tag, trials[0].info.run_id, "by", BOB)

        # alice shares her experiment with bob, read-only: his report works, his writes still fail
        client(ALICE, passwords[ALICE])
        get_app_client("basic-auth", tracking_uri=url).grant_user_permission(BOB, "experiment",
                                                                              experiment.experiment_id, "READ")
        report = hnet_as(as_user(env, BOB, passwords[BOB]), "report", "shared", "--tracking-uri", url,
                         "--out", str(tmp_path / "bob"), cwd=tmp_path)
        bob = client(BOB, passwords[BOB])
        assert len(bob.search_runs([experiment.experiment_id])) == TRIALS + 1
        refused(403, bob.create_run, experiment.experiment_id)
        refused(403, bob.set_tag, trials[0].info.run_id, "by", BOB)
        out = report.communicate(timeout=300)[0]
        assert report.returncode == 0 and "Traceback" not in out, out[-3000:]
        assert "not logged to MLflow" in out and "denied user 'bob'" in out, out[-3000:]
        assert f"trials: {TRIALS} ({TRIALS} completed" in (tmp_path / "bob" / "report.md").read_text()
    finally:
        stop_group(server)
        log.close()


def stop_group(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM to the process group ``proc`` leads (the server's CLI and its workers), SIGKILL after ``timeout``;
    returns once none of them is left (they hold the database's connections)."""
    deadline = time.monotonic() + timeout
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:  # it died by itself (its log says why)
        return
    while True:
        proc.poll()  # reap the leader, or the group would stay alive as a zombie
        try:
            os.killpg(proc.pid, signal.SIGKILL if time.monotonic() > deadline else 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
