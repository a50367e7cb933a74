"""``python -m sweeps run SPEC ...`` is ``hnet sweep run SPEC ...`` where the project is on the path
but not installed (the lent GPU machines: no entry points, no Ray, Optuna or MLflow)."""
import sys

from hnet.cli import _Parser, main

from .cli import add_sweep_parser

parser = _Parser(prog="python -m sweeps", description="hnet sweep without an installed hnet command")
add_sweep_parser(parser.add_subparsers(dest="command", required=True, parser_class=_Parser), _Parser)
sys.exit(main(["sweep", *sys.argv[1:]], parser))
