#!/usr/bin/env python3
"""CUDA correctness of the regularizer: factored vs direct form on the GPU, and GPU vs a float64 CPU reference.

For each hypernetwork shape (small test shapes, a Fig. A7 small-chunk one and both paper
presets) the hypernetwork is perturbed away from its snapshot Θ* and Eq. 2 is computed
with both forms in float32 on the device; value and gradient are compared with each other
and with the direct form in float64 on the CPU. Prints one line per shape and a JSON
summary; exits non-zero if a relative error exceeds the float32 tolerance.

    python bench/cuda_check.py [--device cuda] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys

import torch

from hnet.config import preset
from hnet.counts import count_weights
from hnet.models import ChunkedHypernetwork
from hnet.regularizer import output_regularizer, snapshot

# (label, num_outputs, chunk_size, hidden, task_emb_dim, chunk_emb_dim, earlier tasks)
SHAPES = [
    ("test shape", 1000, 96, (6, 5), 4, 3, 4),
    ("fig A7 small chunks", 478_410, 50, (20, 20), 96, 24, 4),
    ("fig A7 chunk 10", 478_410, 10, (15,), 96, 8, 4),
]
for name in ("split_mnist", "permuted_mnist"):
    c = preset(name)
    SHAPES.append((f"preset {name}", count_weights(c).target_weights, c.chunk_size, c.hnet_hidden,
                   c.task_emb_dim, c.chunk_emb_dim, c.num_tasks - 1))


def reg_and_grad(hnet: ChunkedHypernetwork, targets) -> tuple[float, torch.Tensor]:
    hnet.zero_grad()
    reg = output_regularizer(hnet, targets)
    reg.backward()
    return reg.item(), torch.cat([p.grad.flatten() for p in hnet.theta().values()]).double().cpu()


def rel(a: torch.Tensor | float, b: torch.Tensor | float) -> float:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def check(shape, device: str) -> dict:
    label, outputs, chunk, hidden, temb, cemb, earlier = shape
    torch.manual_seed(0)
    base = ChunkedHypernetwork(outputs, earlier + 1, chunk, hidden, "elu", temb, cemb)
    results = {}
    for form in ("direct", "factored"):
        for dev, dtype in ((device, torch.float32), ("cpu", torch.float64)):
            if form == "factored" and dtype == torch.float64:
                continue
            hnet = copy.deepcopy(base).to(dev, dtype)
            targets = snapshot(hnet, earlier, form)
            with torch.no_grad():  # a step away from Θ*, of the size Adam takes early in a task
                g = torch.Generator().manual_seed(1)
                for p in hnet.theta().values():
                    p.add_((1e-2 * torch.randn(p.shape, generator=g, dtype=torch.float64)).to(dev, dtype))
            results[form, dtype] = reg_and_grad(hnet, targets)
    ref_value, ref_grad = results["direct", torch.float64]
    row = {"shape": label, "chunk_size": chunk, "num_chunks": base.num_chunks, "earlier_tasks": earlier,
           "reg_float64_cpu": ref_value}
    for form in ("direct", "factored"):
        value, grad = results[form, torch.float32]
        row[f"{form}_value_rel_err"] = rel(value, ref_value)
        row[f"{form}_grad_rel_err"] = rel(grad, ref_grad)
    value_f, grad_f = results["factored", torch.float32]
    value_d, grad_d = results["direct", torch.float32]
    row["factored_vs_direct_value_rel"] = rel(value_f, value_d)
    row["factored_vs_direct_grad_rel"] = rel(grad_f, grad_d)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="max relative error (float32)")
    ap.add_argument("--out", help="write the rows as JSON")
    args = ap.parse_args()
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    print(f"regularizer on {args.device} ({name}), torch {torch.__version__}: relative errors vs float64 CPU")
    rows, worst = [], 0.0
    for shape in SHAPES:
        row = check(shape, args.device)
        rows.append(row)
        errs = {k: v for k, v in row.items() if k.endswith(("_rel_err", "_rel"))}
        worst = max(worst, *errs.values())
        print(f"{row['shape']:<24} chunks {row['num_chunks']:>6}  " +
              "  ".join(f"{k} {v:.1e}" for k, v in errs.items()), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, f, indent=2)
    print(f"worst relative error {worst:.1e} (tolerance {args.tolerance:.0e}): {'ok' if worst <= args.tolerance else 'FAIL'}")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
