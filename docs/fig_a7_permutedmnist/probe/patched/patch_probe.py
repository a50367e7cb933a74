"""One-off PermutedMNIST probe behind docs/init.md ("PermutedMNIST: hyperfan's output layer ..."), kept as a record.

Patches the built hypernetwork: with FOLD f > 0 the chunk gains' mean times f moves into the output
layer, leaving gains of about 1/f (f = 1: the whole target scale in the output layer). hyperfan_out_step
is the kept form of this. Run from the repository root:
    python docs/fig_a7_permutedmnist/probe/patched/patch_probe.py NAME HIDDEN CHUNK CHUNK_EMB INIT ACT FOLD EMB_STD TASKS ITERS
"""
import json, sys, time
import torch
import hnet.trainer as T
from hnet.config import TrainConfig, Runtime, preset

name, hidden, chunk, emb, init, act, fold, emb_std, tasks, iters = sys.argv[1:11]
fold = float(fold)
orig = T.build_models

def build(cfg, device="cpu"):
    target, h = orig(cfg, device)
    if fold and h.chunk_scale is not None:
        with torch.no_grad():
            s = h.chunk_scale.mean() * fold
            h.out.weight.mul_(s); h.out.bias.mul_(s); h.chunk_scale.div_(s)
    return target, h

T.build_models = build
cfg = preset("permuted_mnist").replace(hnet_hidden=tuple(int(x) for x in hidden.split(",")), chunk_size=int(chunk),
      chunk_emb_dim=int(emb), hnet_init=init, hnet_activation=act, hnet_emb_std=float(emb_std),
      num_tasks=int(tasks), iters=int(iters), val_fraction=0.1, seed=0)
t = time.time()
r = T.train(cfg, runtime=Runtime(data_root="../shared/data", threads=1, device="cpu"))
r["probe"] = dict(fold=fold)
json.dump(r, open(f"/tmp/probe/{name}.json", "w"))
print(name, f"val after {r['val_acc_after_mean']:.2f} during {r['val_acc_during_mean']:.2f}", [round(x, 1) for x in r["val_acc_matrix"][-1]], f"{time.time()-t:.0f}s", flush=True)
