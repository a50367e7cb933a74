"""`hnet ui`: the MLflow UI on a tracking store, bound to loopback by default."""
from __future__ import annotations

import argparse
import subprocess
import sys

from hnet.config import UserError


def cmd_ui(args: argparse.Namespace) -> int:
    if args.tracking_uri.startswith(("http://", "https://")):
        raise UserError(f"{args.tracking_uri} is a tracking server: open it in a browser instead")
    print(f"MLflow UI for {args.tracking_uri}: http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.tracking_uri,
           "--host", args.host, "--port", str(args.port)]
    return subprocess.call(cmd)


def add_ui_parser(sub: argparse._SubParsersAction, parser_class) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI on a tracking store (bound to 127.0.0.1)")
    p.add_argument("--tracking-uri", default="sqlite:///mlflow.db", help="backend store (default sqlite:///mlflow.db)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback only)")
    p.add_argument("--port", type=int, default=5000)
    p.set_defaults(func=cmd_ui)
