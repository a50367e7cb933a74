#!/usr/bin/env python3
"""How much of the shared chunk pattern's common mode hyperfan should keep (docs/init.md, "Chunks that sum to zero").

Plain hyperfan keeps all of it (every chunk's weights share a pattern whose sum adds up coherently
over the fan_in / chunk_size repeats of a first-layer row); hyperfan_zero_mean keeps none. This
trains the Fig. A7 setting (split_mnist preset, ReLU hypernetwork, 2,000 it/task, 10 % validation)
with the output layer's mean over a chunk's outputs shrunk to a share ``keep`` at init: a number,
or ``sqrt`` for sqrt(chunk_size / 784) (a row's coherent sum then has an independent sum's variance).

    python bench/chunk_mean.py --data-root ../shared/data --arch 5/8/50 --seeds 0 1 2 --keep sqrt --out F.jsonl
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing as mp

from hnet.config import Runtime, preset
from hnet.models import ChunkedHypernetwork

_HYPERFAN = ChunkedHypernetwork.init_hyperfan


def run(hidden: tuple[int, ...], chunk_emb: int, chunk_size: int, seed: int, keep: str, data_root: str) -> dict:
    from hnet.trainer import train

    kept = min(1.0, math.sqrt(chunk_size / 784)) if keep == "sqrt" else float(keep)

    def init_hyperfan(self, *args, **kwargs) -> None:  # plain hyperfan's init, with this share kept
        _HYPERFAN(self, *args, **{**kwargs, "chunk_mean_kept": kept})

    ChunkedHypernetwork.init_hyperfan = init_hyperfan  # in this worker process only
    cfg = preset("split_mnist").replace(hnet_init="hyperfan", hnet_activation="relu", hnet_hidden=hidden,
                                        chunk_emb_dim=chunk_emb, chunk_size=chunk_size, val_fraction=0.1, seed=seed)
    result = train(cfg, runtime=Runtime(data_root=data_root, threads=1))
    return {**result, "chunk_mean_kept": kept, "keep": keep}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--arch", action="append", required=True, metavar="HIDDEN/CHUNK_EMB/CHUNK", help="e.g. 65,70/8/10")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--keep", nargs="+", default=["sqrt"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    jobs = []
    for arch in args.arch:
        hidden, chunk_emb, chunk_size = arch.split("/")
        jobs += [(tuple(int(h) for h in hidden.split(",")), int(chunk_emb), int(chunk_size), seed, keep, args.data_root)
                 for seed in args.seeds for keep in args.keep]
    with open(args.out, "a") as out, cf.ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
        for future in cf.as_completed([pool.submit(run, *job) for job in jobs]):
            r = future.result()
            out.write(json.dumps(r) + "\n")
            out.flush()
            c = r["config"]
            print(f"hidden {c['hnet_hidden']} chunk emb {c['chunk_emb_dim']} chunk {c['chunk_size']} seed {c['seed']} "
                  f"keep {r['chunk_mean_kept']:.3f}: val {r['val_acc_after_mean']:.2f} test {r['acc_after_mean']:.2f}", flush=True)


if __name__ == "__main__":
    main()
