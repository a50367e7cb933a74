#!/usr/bin/env python3
"""How chunk-specific is the effect of the task embedding on the generated weights, at init?

A chunked hypernetwork generates chunk k from [task embedding e, chunk embedding c_k]. If its
hidden layers act linearly on their inputs, a change of e shifts every chunk by the *same*
vector (times the chunk's gain): a new task can then only be learned by moving weights shared
with the earlier tasks. This prints, for a small random change of e, the share of the change
of the generated weights (gains divided out) that is common to all chunks: 1 = fully shared.
ELU is almost linear at the small embedding scale of the hyperfan init; ReLU is positively
homogeneous and stays non-linear at any scale (docs/init.md).

    python bench/embedding_effect.py [--preset split_mnist] [--chunks 50 200 2000 42000]
"""
from __future__ import annotations

import argparse

import torch

from hnet.config import preset
from hnet.models import build_models


@torch.no_grad()
def shared_fraction(cfg, seed: int = 0) -> float:
    torch.manual_seed(seed)
    _, hnet = build_models(cfg.replace(seed=seed))
    e = hnet.task_embs[0][None]
    delta = torch.randn_like(e) * e.std() * 0.1
    change = torch.zeros(hnet.num_chunks * hnet.chunk_size)
    change[:hnet.num_outputs] = hnet(e + delta)[0] - hnet(e)[0]
    change = change.view(hnet.num_chunks, hnet.chunk_size)
    if hnet.chunk_scale is not None:
        change = change / hnet.chunk_scale[:, None]
    full = change[:-1] if hnet.num_chunks > 1 else change  # the last chunk is truncated
    return (full.mean(0).square().sum() * len(full) / full.square().sum()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="split_mnist")
    ap.add_argument("--chunks", type=int, nargs="+", default=[50, 200, 2000, 42000])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    print(f"share of the task embedding's effect common to all chunks ({args.preset} hypernetwork, mean of {args.seeds} inits)")
    print(f"{'init':<10}{'activation':<12}" + "".join(f"{'chunk ' + str(c):>13}" for c in args.chunks))
    for init in ("hyperfan", "xavier"):
        for activation in ("elu", "relu"):
            row = []
            for chunk in args.chunks:
                cfg = preset(args.preset).replace(hnet_init=init, hnet_activation=activation, chunk_size=chunk)
                row.append(sum(shared_fraction(cfg, s) for s in range(args.seeds)) / args.seeds)
            print(f"{init:<10}{activation:<12}" + "".join(f"{v:>13.3f}" for v in row), flush=True)


if __name__ == "__main__":
    main()
