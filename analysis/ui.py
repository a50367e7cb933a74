"""`hnet ui`: the MLflow UI on a tracking store, bound to loopback by default, opened on the
experiments' trial runs (the view ``sweeps.record.runs_view`` saves with every sweep)."""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys

from hnet.config import UserError
from sweeps import record
from sweeps.store import analyze_store, open_store


def check_port(host: str, port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UserError(f"cannot serve the MLflow UI on {host}:{port}: {exc.strerror or exc} "
                            f"(choose another --port)") from None


def view_urls(tracking_uri: str, base: str, experiment: str | None) -> list[tuple[str, str]]:
    """(experiment name, URL of its trial-runs view) for ``experiment`` or every swept experiment."""
    client = open_store(tracking_uri, create=False)
    if experiment:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise UserError(f"no MLflow experiment named {experiment!r} at {tracking_uri}")
        experiments = [found]
    else:
        experiments = client.search_experiments()
    return [(e.name, record.runs_view_url(base, e.experiment_id)) for e in experiments if record.VIEW_TAG in e.tags]


def cmd_ui(args: argparse.Namespace) -> int:
    uri = args.tracking_uri
    if uri.startswith(("http://", "https://")):
        raise UserError(f"{uri} is a tracking server: open it in a browser instead")
    check_port(args.host, args.port)
    base = f"http://{args.host}:{args.port}"
    urls = view_urls(uri, base, args.experiment)  # a missing or broken store fails here, in one line
    analyze_store(uri)  # the landing view sorts by a metric: fast only with SQLite's statistics
    print(f"MLflow UI for {uri}: {base}  (Ctrl-C stops it)", flush=True)
    for name, url in urls:
        print(f"  {name}: {url}", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host, "--port", str(args.port)]
    return subprocess.call(cmd)


def add_ui_parser(sub: argparse._SubParsersAction, parser_class) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI on a tracking store (bound to 127.0.0.1)")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="backend store (default sqlite:///mlflow.db)")
    p.add_argument("--experiment", help="print only this experiment's trial-runs link (default: every swept one)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
