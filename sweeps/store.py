"""Opening an MLflow tracking store from several processes at once.

MLflow creates a new SQLite store by running its whole schema migration in the first process
that opens it. Two processes opening one new store at the same moment (two sweeps, a sweep and
``hnet ui``, a test polling a sweep) both migrate, collide ("table _alembic_tmp_experiments
already exists") and leave the store half-migrated for good. So every process of the project
opens a SQLite store through ``open_store``: a store whose schema is current is opened at once;
any other is created or checked under a file lock beside it (``mlflow.db.lock``), and one left
half-migrated is reported in one line with the way out, never a traceback.

New stores are switched to SQLite's write-ahead log, so readers (``hnet ui``, ``hnet report``,
pandas) never block a sweep's writes and concurrent sweeps only queue their short writes.
Tracking servers and other databases are opened as they are: the server owns its schema. A
server with users (MLflow's basic-auth app, docs/cluster.md) that refuses a request (401: no or wrong
credentials; 403: no permission on the experiment) is reported by ``server_access`` in one line that
names the user and what was refused.
"""
from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock

from hnet.config import UserError

LOCK_TIMEOUT_S = 600  # a migration takes ~1 s; waiting longer means a stuck process holds the lock


class StoreError(UserError, ValueError):
    """An MLflow store that cannot be opened; the message says what happened and how to recover."""


class AccessError(StoreError):
    """A tracking server refused the request: unknown user, wrong password or no permission."""


REFUSALS = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}  # MLflow's error codes for HTTP 401 / 403


def tracking_user() -> str | None:
    """The user MLflow's client presents: MLFLOW_TRACKING_USERNAME, else ~/.mlflow/credentials."""
    from mlflow.utils.credentials import read_mlflow_creds

    return read_mlflow_creds().username


def refusal(exc: BaseException, tracking_uri: str, what: str) -> AccessError | None:
    """``exc`` as one line naming the user and what was refused, when it is a server's 401 or 403; else None.

    ``what`` completes "... to {what}", e.g. "write to experiment 'smoke'"."""
    status = REFUSALS.get(getattr(exc, "error_code", None))  # MlflowException from the REST client
    response = getattr(exc, "response", None)  # requests.HTTPError from an artifact transfer
    status = status or getattr(response, "status_code", None)
    if status not in (401, 403):
        return None
    user = tracking_user()
    if status == 401 and not user:
        return AccessError(f"the MLflow server {tracking_uri} refused an anonymous request to {what} (401): set "
                           f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your account on it")
    if status == 401:
        return AccessError(f"the MLflow server {tracking_uri} did not accept the password of user {user!r} to {what} "
                           f"(401): check MLFLOW_TRACKING_PASSWORD (an admin can reset it)")
    grant = "EDIT" if what.startswith(("write", "attach")) else "READ"
    return AccessError(f"the MLflow server {tracking_uri} denied user {user!r} permission to {what} (403): the "
                       f"experiment's owner or an admin can grant {grant} on it (docs/cluster.md)")


@contextlib.contextmanager
def server_access(tracking_uri: str, what: str) -> Iterator[None]:
    """Turn a tracking server's 401/403 inside the block into one ``AccessError`` line (a UserError: the
    CLI prints ``hnet: error: ...`` and exits 2); every other error passes through unchanged."""
    try:
        yield
    except Exception as exc:
        error = refusal(exc, tracking_uri, what)
        if error is None:
            raise
        raise error from None


def is_server(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def sqlite_path(tracking_uri: str) -> Path | None:
    """The file of a local SQLite store URI (``sqlite:///relative.db``, ``sqlite:////abs.db``), else None."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    return Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0])


@functools.cache
def latest_schema() -> str:
    """The schema revision this MLflow writes (the head of its migrations)."""
    from mlflow.store.db.utils import _get_latest_schema_revision  # no public name for it in MLflow 3

    return _get_latest_schema_revision()


def schema_state(path: Path) -> tuple[str, str]:
    """("new" | "current" | "busy" | "half" | "outdated", detail) of a SQLite store file, read-only."""
    if not path.exists() or path.stat().st_size == 0:
        return "new", ""
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
            tables = {name for (name,) in db.execute("select name from sqlite_master where type = 'table'")}
            version = (db.execute("select version_num from alembic_version").fetchone() or ("",))[0] \
                if "alembic_version" in tables else ""
            leftover = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
            if tables and not leftover and version == latest_schema():
                return "current", version
            runs = db.execute("select count(*) from runs").fetchone()[0] if "runs" in tables else 0  # for the message
    except sqlite3.DatabaseError as exc:  # locked by a writer for 30 s, or not a database at all
        return "busy", str(exc)
    if not tables:
        return "new", ""
    if leftover or not version:
        return "half", (f"leftover table {leftover[0]}" if leftover else "no schema version") + f", {runs} run(s)"
    return "outdated", f"{version}, {runs} run(s)"


def ensure_store(tracking_uri: str, create: bool = True) -> None:
    """Make ``tracking_uri`` safe to hand to MLflow: a SQLite store is created (when ``create``) or
    checked under its lock; raises StoreError for a missing, half-migrated or outdated store."""
    path = sqlite_path(tracking_uri)
    if path is None or schema_state(path)[0] == "current":  # the common case: no lock, ~1 ms
        return
    if not create and not path.is_file():
        raise StoreError(f"no MLflow store at {tracking_uri}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", timeout=LOCK_TIMEOUT_S):
        state, detail = schema_state(path)  # again: another process may have created it meanwhile
        if state == "new":
            from mlflow.tracking import MlflowClient

            MlflowClient(tracking_uri).search_experiments(max_results=1)  # runs MLflow's migration, alone
            with sqlite3.connect(path) as db:
                db.execute("pragma journal_mode = wal")
            return
        if state == "current":
            return
    if state == "half":
        empty = detail.endswith(", 0 run(s)")
        raise StoreError(f"the MLflow store {path} was left half-migrated by an interrupted schema migration "
                         f"({detail}): " + ("it holds no runs, delete it and run again" if empty else
                                            "restore it from a backup, or move it aside and start a new store"))
    if state == "outdated":
        raise StoreError(f"the MLflow store {path} has schema revision {detail}; this MLflow needs "
                         f"{latest_schema()}: back the file up, then run `mlflow db upgrade {tracking_uri}`")
    raise StoreError(f"cannot read the MLflow store {path}: {detail}")


def analyze_store(tracking_uri: str) -> None:
    """Refresh SQLite's table statistics of a SQLite store (``ANALYZE``; ~0.4 s at 10,000 runs).
    Without them SQLite joins the MLflow UI's sort by a metric as a nested scan: 6.3 s at 10,000
    runs instead of 0.05 s (docs/sweep_scale.md). Other stores keep their own statistics."""
    path = sqlite_path(tracking_uri)
    if path is None or not path.is_file():
        return
    with sqlite3.connect(path, timeout=60) as db:
        db.execute("analyze")


def open_store(tracking_uri: str, create: bool = True):
    """An ``MlflowClient`` on ``tracking_uri`` once ``ensure_store`` has made it safe."""
    from mlflow.tracking import MlflowClient

    ensure_store(tracking_uri, create)
    return MlflowClient(tracking_uri)
