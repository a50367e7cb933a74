"""Spread of each test-threshold quantity over seeds and CPU code paths (results.jsonl)."""
import json
import sys
from collections import defaultdict
from pathlib import Path

path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("results.jsonl"))
rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
for case in dict.fromkeys(r["case"] for r in rows):
    print(f"## {case}")
    cells = [r for r in rows if r["case"] == case]
    if case == "forgetting":  # what the test compares: forgetting of task 1, protected vs fine-tuned
        for r in cells:
            r["protected_forgetting0"] = r["protected_during0"] - r["protected_after0"]
            r["finetuned_forgetting0"] = r["finetuned_during0"] - r["finetuned_after0"]
            r["mean_gap"] = r["protected_mean"] - r["finetuned_mean"]
    keys = [k for k in cells[0] if isinstance(cells[0][k], float)]
    paths = defaultdict(list)
    for r in cells:
        paths[f"{r['cpu_capability']}/{r['threads']}t"].append(r)
    for key in keys:
        values = [r[key] for r in cells]
        per_path = "  ".join(f"{p}: {min(r[key] for r in rs):.2f}..{max(r[key] for r in rs):.2f}" for p, rs in paths.items())
        print(f"{key:24s} min {min(values):7.2f}  max {max(values):7.2f}   {per_path}")
