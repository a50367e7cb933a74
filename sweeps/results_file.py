"""A study's portable record: one JSON line per finished trial (``hnet.trainer.train``'s result, or a
Ray trial's ``TrialRecord.to_result``), written by both backends with ``--results FILE``. A trial
whose configuration is already in the file is not trained again, so a study continues where it
stopped, on either backend. ``hnet report --results FILE`` reads it as it reads MLflow."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

from hnet.config import TrainConfig

from .space import config_key
from .spec import SpecError


def done_configs(results: Path) -> set[str]:
    """The configurations already in ``results``. A last line cut short (the process killed while
    writing it) is removed, with a warning: that trial runs again."""
    if not results.exists():
        return set()
    text = results.read_text()
    lines = text.splitlines()
    done = set()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            done.add(config_key(TrainConfig.from_dict(json.loads(line)["config"])))  # fields a line predates: defaults
        except (json.JSONDecodeError, KeyError):
            if i < len(lines) - 1 or text.endswith("\n"):
                raise SpecError(f"{results}: line {i + 1} is not a trial record; not appending to it") from None
            print(f"hnet sweep: {results}: removing a last line cut short (its trial runs again)", flush=True)
            with open(results, "r+") as f:
                f.truncate(len(text.encode()) - len(line.encode()))
            return done
    if text and not text.endswith("\n"):  # a whole record without its newline: the next one starts a line
        with open(results, "a") as f:
            f.write("\n")
    return done


def append_results(results: Path, records: Iterable[dict[str, Any]]) -> int:
    """Append the records whose configuration the file does not hold yet; returns how many."""
    done = done_configs(results)
    new = [r for r in records if config_key(TrainConfig.from_dict(r["config"])) not in done]
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as out:
        out.writelines(json.dumps(r) + "\n" for r in new)
    return len(new)
