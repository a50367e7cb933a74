#!/usr/bin/env python3
"""Pick the variant of a GPU panel with the highest mean validation acc_after_mean.

Each subfolder of PANEL is one variant, named INIT_ACTIVATION (``xavier_elu``, as
bench/gpu_init_panel.sh writes them) and holding the JSON lines of bench/gpu_pool.py.
Only configurations finished by every variant count, so a variant is not favoured by the
trials it happened to finish. Prints a table to stderr and the winner's ``--set`` flags to stdout.

    python bench/best_variant.py PANEL
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from hnet.config import TrainConfig

VARIED = ("hnet_init", "hnet_activation")  # what tells the variants apart (the folder name)


def load(folder: Path) -> dict[str, float]:
    """Trial key (its config less the varied fields) -> validation acc_after_mean of the finished trials."""
    rows = [json.loads(line) for f in folder.glob("*.jsonl") for line in open(f) if line.strip()]
    configs = [TrainConfig.from_dict(r["config"]).to_dict() for r in rows]  # fields a line predates: their defaults
    return {json.dumps({k: v for k, v in c.items() if k not in VARIED}, sort_keys=True): r["val_acc_after_mean"]
            for c, r in zip(configs, rows)}


def main(panel: str) -> int:
    variants = {d.name: load(d) for d in sorted(Path(panel).iterdir()) if d.is_dir()}
    variants = {name: acc for name, acc in variants.items() if acc}
    if not variants:
        print(f"best_variant: error: no finished trials under {panel}", file=sys.stderr)
        return 2
    common = set.intersection(*(set(acc) for acc in variants.values()))
    means = {name: statistics.mean(acc[k] for k in common) for name, acc in variants.items()}
    for name, mean in sorted(means.items(), key=lambda kv: -kv[1]):
        print(f"{mean:6.2f}  {name}  ({len(common)} architectures)", file=sys.stderr)
    best = max(means, key=means.__getitem__)
    init, activation = best.rsplit("_", 1)
    print(f"--set hnet_init={init} --set hnet_activation={activation}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]) if len(sys.argv) == 2 else 2)
