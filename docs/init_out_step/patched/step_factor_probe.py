"""One-off SplitMNIST probe behind docs/init.md ("On SplitMNIST"), kept as a record: hyperfan_out_step with its
chunk gains times FACTOR and the output layer divided by it (same function, Adam's output step x FACTOR).
    python docs/init_out_step/patched/step_factor_probe.py NAME (HIDDEN|preset) CHUNK CHUNK_EMB SEED FACTOR
"""
import json, sys, time, torch
import hnet.trainer as T
from hnet.config import Runtime, preset
name, hidden, chunk, emb, seed, factor = sys.argv[1:7]
factor = float(factor)
orig = T.build_models
def build(cfg, device="cpu"):
    target, h = orig(cfg, device)
    with torch.no_grad():  # gains x factor, output layer / factor: same function, Adam's output step x factor
        h.chunk_scale.mul_(factor); h.out.weight.div_(factor); h.out.bias.div_(factor)
    return target, h
T.build_models = build
if hidden == "preset":
    cfg = preset("split_mnist").replace(hnet_init="hyperfan_out_step", hnet_activation="relu", val_fraction=0.1, seed=int(seed))
else:
    cfg = preset("split_mnist", ["hnet_hidden", "chunk_size", "chunk_emb_dim"]).replace(hnet_hidden=tuple(int(x) for x in hidden.split(",")), chunk_size=int(chunk),
          chunk_emb_dim=int(emb), hnet_init="hyperfan_out_step", val_fraction=0.1, seed=int(seed))
t = time.time()
r = T.train(cfg, runtime=Runtime(data_root="../shared/data", threads=1, device="cpu"))
r["probe"] = dict(step_factor=factor)
json.dump(r, open(f"/tmp/probe/{name}.json", "w"))
print(name, f"val after {r['val_acc_after_mean']:.2f} during {r['val_acc_during_mean']:.2f} test {r['acc_after_mean']:.2f}", [round(x, 2) for x in r["val_acc_matrix"][-1]], f"{time.time()-t:.0f}s", flush=True)
