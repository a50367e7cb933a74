#!/usr/bin/env python3
"""How alike the chunks of a freshly initialised hypernetwork are, and what that does to the target.

For each init and hypernetwork architecture (split_mnist preset otherwise), over several seeds:
the share of the generated first-layer weights common to all chunks (energy of the mean chunk /
mean energy of a chunk; 0 for independent weights) and the fraction of the target's first-layer
units that are dead (not positive for any of 512 MNIST training images of task 0) for task 0's
weights at init. docs/init.md, "Chunks that start alike" and "The default: `hyperfan_shrunk_mean`".

    python bench/init_chunks.py --data-root ../shared/data [--seeds 8]
"""
from __future__ import annotations

import argparse

import torch

from hnet.config import preset
from hnet.data import raw_dataset
from hnet.models import build_models, dead_unit_fraction, shared_chunk_share

ARCHITECTURES = [((65, 70), 8, 10), ((15, 60), 8, 10), ((10, 90), 8, 50), ((5,), 96, 500), ((45,), 8, 3000),
                 ((10, 10), 96, 42000)]  # (hidden, chunk embedding, chunk size): Fig. A7 draws and the preset's


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--activations", nargs="+", default=["relu", "elu"])
    args = ap.parse_args()
    images, labels = raw_dataset("mnist", args.data_root)["train"]
    x = images[(labels == 0) | (labels == 1)][:512].float().reshape(512, -1) / 255
    print("init                   activation  hidden    chunk emb.  chunk size  shared share  dead first-layer units per seed")
    for init in ["hyperfan", "hyperfan_shrunk_mean"]:
        for activation in args.activations:
            for hidden, chunk_emb, chunk_size in ARCHITECTURES:
                cfg = preset("split_mnist").replace(hnet_init=init, hnet_activation=activation, hnet_hidden=hidden,
                                                    chunk_emb_dim=chunk_emb, chunk_size=chunk_size)
                dead, shared = [], []
                for seed in range(args.seeds):
                    target, hnet = build_models(cfg.replace(seed=seed))
                    embedding = hnet.embeddings([0])
                    dead.append(dead_unit_fraction(target, hnet, embedding[0], x))
                    with torch.no_grad():
                        shared.append(shared_chunk_share(hnet(embedding)[0][:784 * 400], chunk_size))
                print(f"{init:22s} {activation:10s}  {','.join(map(str, hidden)):8s}  {chunk_emb:10d}  {chunk_size:10d}"
                      f"  {sum(shared) / len(shared):12.2f}  " + " ".join(f"{d:.2f}" for d in dead), flush=True)


if __name__ == "__main__":
    main()
