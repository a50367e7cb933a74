"""Sweeps with real Ray (local, 2 CPUs), real Optuna and a real MLflow SQLite store."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from sweeps import record
from sweeps.search import OptunaSearcher
from sweeps.spec import SpecError, parse_spec
from sweeps.store import ensure_store

TINY_BASE = {"preset": "split_digits", "num_tasks": 3, "iters": 15, "batch_size": 32}


def test_flags_a_spec_and_the_python_resolver_give_the_same_config(tmp_path):
    """`hnet train --preset P --f v`, a config file with P and f: v, a spec with base P and f: v, a spec sweeping
    f over [v], and hnet.config.resolve(P, {f: v}) are one config, the preset's tuned baseline settings included.
    A reshaped preset keeps everything else of the preset (no field is swapped behind the user's back)."""
    import json

    from hnet.config import resolve

    for name, fields in [("split_mnist", {"chunk_size": 50}), ("split_mnist", {"method": "ewc", "scenario": "cl3"}),
                         ("permuted_mnist", {"beta": 0.05})]:
        flags = [part for k, v in fields.items() for part in (f"--{k.replace('_', '-')}", str(v))]
        dry = hnet("train", "--preset", name, *flags, "--dry-run", cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr
        from_flags = json.loads(dry.stdout)["config"]
        (tmp_path / "c.yaml").write_text(yaml.safe_dump({"preset": name, **fields}))
        from_file = json.loads(hnet("train", "--config", str(tmp_path / "c.yaml"), "--dry-run", cwd=tmp_path).stdout)
        assert from_file["config"] == from_flags and dry.stderr == ""
        from_base = parse_spec({"name": "b", "base": {"preset": name, **fields}, "space": {"batch_size": [128]}}).base
        swept = parse_spec({"name": "s", "base": {"preset": name}, "space": {k: [v] for k, v in fields.items()}})
        assert from_flags == resolve(name, fields).to_dict() == from_base.to_dict() == \
            swept.trial_config(fields).to_dict(), (name, fields)
    reshaped, own = resolve("split_mnist", {"chunk_size": 50}), resolve("split_mnist")
    assert reshaped.replace(chunk_size=own.chunk_size) == own and own.hnet_init == "xavier_capped"
    assert resolve("split_mnist", {"method": "ewc", "scenario": "cl3"}).ewc_lambda == 100.0  # tuned (docs/scenarios.md)
    assert resolve("split_mnist", {"method": "ewc", "ewc_lambda": 5.0}).ewc_lambda == 5.0  # a value given wins


def write_spec(tmp_path, **changes):
    spec = {"name": "t", "base": dict(TINY_BASE), "space": {"beta": [0.01, 0.1]},
            "search": {"algorithm": "random", "seed": 0, "max_concurrent": 2}, "num_samples": 2,
            "mlflow": {"experiment": "t", "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"},
            "storage_path": str(tmp_path / "ray_results")}
    spec.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def hnet(*args, cwd, timeout=600, python_flags=()):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_DEDUP_LOGS": "0"}
    return subprocess.run([sys.executable, *python_flags, "-m", "hnet.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def runs(tmp_path, experiment="t"):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    ensure_store(uri, create=False)  # as the product opens it: never migrates beside a sweep creating it
    mlflow.set_tracking_uri(uri)
    df = mlflow.search_runs(experiment_names=[experiment])
    return df[df["tags.role"] == "sweep"], df[df["tags.role"] == "trial"]


# ---- validation: fast, before Ray ------------------------------------------------------------

@pytest.mark.parametrize("changes, message", [
    ({"space": {"beta": [0.01, -1]}}, "beta must be >= 0"),
    ({"space": {"nonsense": [1]}}, "not a TrainConfig field"),
    ({"search": {"algorithm": "bayes"}}, "search.algorithm must be one of"),
    ({"compression": {"min": 2, "max": 1}}, "compression range"),
    ({"base": {"preset": "split_digits", "hnet_activation": "tanh"}}, "unknown hnet_activation"),
    ({"space": {"chunk_size": "fit"}}, "fit needs compression.max"),
    ({"scheduler": "hyperband"}, "scheduler must be one of"),
    ({"keep_checkpoints": "some"}, "keep_checkpoints must be one of"),
    ({"colour": "blue"}, "unknown key"),
    ({"compression": {"max": 0.01}}, "lies in the compression range"),
])
def test_invalid_spec_fails_fast_without_ray(tmp_path, changes, message):
    path = write_spec(tmp_path, **changes)
    proc = hnet("sweep", "run", str(path), cwd=tmp_path, python_flags=["-X", "importtime"])
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("import time:")]
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "ray_results").exists() and not (tmp_path / "mlflow.db").exists()
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "Ray instance" not in proc.stdout + proc.stderr  # Ray was never started
    if "compression range" not in message:
        assert "ray" not in imported and "torch" not in imported  # validation alone: fast, no heavy imports


def test_compression_filter_rejects_before_any_trial():
    spec = parse_spec({"name": "c", "base": TINY_BASE,
                       "space": {"hnet_hidden": {"layers": [1, 2], "sizes": [5, 10, 20, 30, 50, 100]},
                                 "chunk_size": [10, 100, 200, 500, 1000, 2000, 5000]},
                       "search": {"algorithm": "tpe"}, "compression": {"min": 0.1, "max": 0.5}})
    searcher = OptunaSearcher(spec)
    configs = [searcher.suggest(f"trial{i}") for i in range(8)]
    from hnet.counts import count_weights
    from sweeps.record import from_tune_config
    ratios = [count_weights(from_tune_config(c, spec.base.to_flat_params())).compression_ratio for c in configs]
    assert all(0.1 <= r <= 0.5 for r in ratios), ratios
    assert searcher.stats["architectures_rejected"] > 0
    # conditional space: a 1-layer draw has no size for layer 2
    trials = searcher.study.trials
    assert any(t.params.get("hnet_layers") == 1 and "hnet_layer2" not in t.params for t in trials)


def test_seeds_per_configuration_share_one_optuna_trial():
    spec = parse_spec({"name": "s", "base": TINY_BASE, "space": {"beta": [0.01, 0.1, 1.0]}, "seeds": 3,
                       "search": {"algorithm": "tpe"}})
    searcher = OptunaSearcher(spec)
    configs = [searcher.suggest(f"t{i}") for i in range(3)]
    assert len({c["config_group"] for c in configs}) == 1 and [c["seed"] for c in configs] == ["0", "1", "2"]
    for i, acc in enumerate([90.0, 92.0, 94.0]):
        searcher.on_trial_complete(f"t{i}", {"acc_after_mean": acc})
    done = [t for t in searcher.study.trials if t.value is not None]
    assert len(done) == 1 and done[0].value == pytest.approx(92.0)


# ---- real sweeps ------------------------------------------------------------------------------

def test_replay_methods_sweep_into_mlflow(tmp_path):
    """HNET+TIR and HNET+R as trials of one sweep (real Ray, MLflow): their accuracy, TIR's task
    inference and the replay model's counts are metrics of their runs."""
    path = write_spec(tmp_path, base={**TINY_BASE, "num_tasks": 2, "scenario": "cl3", "replay_enc_hidden": [20],
                                      "replay_dec_hidden": [20], "replay_latent_dim": 4, "replay_chunk_size": 500},
                      space={"method": ["hnet_tir", "hnet_r"]}, search={"algorithm": "grid", "max_concurrent": 2},
                      num_samples=2)
    proc = hnet("sweep", "run", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _, trials = runs(tmp_path)
    assert sorted(trials["params.method"]) == ["hnet_r", "hnet_tir"] and (trials.status == "FINISHED").all()
    assert trials["metrics.acc_after_mean"].notna().all() and (trials["metrics.replay_decoder_weights"] > 0).all()
    tir = trials[trials["params.method"] == "hnet_tir"].iloc[0]
    assert tir["metrics.task_inference_acc"] >= 0 and tir["metrics.task_classifier_weights"] > 0


def test_shipped_specs_plan():
    """Every spec under sweeps/configs loads and gives valid configurations; the replay specs bring the
    paper's replay model of their method."""
    from sweeps.space import plan, trials
    from sweeps.spec import load_spec

    def expand(spec):
        return trials(spec, plan(spec).configs)

    specs = {p.stem: load_spec(p) for p in sorted((Path(__file__).parents[1] / "sweeps" / "configs").glob("*.yaml"))}
    for name, spec in specs.items():
        if spec.algorithm in ("grid", "random"):
            assert expand(spec), name
    tir, r = (expand(specs[f"hnet_{m}_splitmnist"]) for m in ("tir", "r"))
    assert len(tir) == len(r) == 15 and {c.scenario for c in tir} == {"cl1", "cl2", "cl3"}
    assert {(c.method, c.replay_dec_hidden) for c in tir + r} == {("hnet_tir", (50, 150)), ("hnet_r", (250, 350))}


def test_sweep_records_every_trial_and_survives_a_failing_one(tmp_path):
    """Every trial a run (its accuracy matrix as per-task metrics and as one tag), failures recorded;
    finished trials leave a receipt in Tune's storage, the best one (keep_checkpoints: best) its weights."""
    import json

    import torch

    path = write_spec(tmp_path, space={"beta": [0.01, 1e300], "lr": [0.001, 0.002]},  # 1e300: diverges at task 1
                      search={"algorithm": "grid", "seed": 0, "max_concurrent": 2}, num_samples=4, max_failures=0,
                      compression={"max": 4.0}, keep_checkpoints="best")
    proc = hnet("sweep", "run", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 trials, 2 completed, 2 failed" in proc.stdout
    parents, trials = runs(tmp_path)
    assert len(parents) == 1 and len(trials) == 4
    assert (trials["tags.mlflow.parentRunId"] == parents.run_id.iloc[0]).all()
    failed = trials[trials["params.beta"] == "1e+300"]
    ok = trials[trials["params.beta"] == "0.01"]
    assert (failed.status == "FAILED").all() and (failed["tags.trial_status"] == "failed").all()
    assert (ok.status == "FINISHED").all() and (ok["metrics.compression_ratio"] <= 4.0).all()
    client = mlflow.tracking.MlflowClient()
    for run_id in ok.run_id:
        for task in range(3):  # the accuracy matrix: task j measured after tasks j..2
            steps = [m.step for m in client.get_metric_history(run_id, f"acc_task_{task}")]
            assert steps == list(range(task, 3))
        matrix = json.loads(client.get_run(run_id).data.tags["acc_matrix"])
        assert [len(row) for row in matrix] == [1, 2, 3]
    left = []  # (accuracy, what the trial left in Tune's storage)
    for _, trial in ok.iterrows():
        folders = list((tmp_path / "ray_results").glob(f"*/trial_{trial['tags.trial_id']}/checkpoint_*"))
        assert len(folders) == 1, folders  # older checkpoints deleted as newer ones arrived
        left.append((trial["metrics.acc_after_mean"], torch.load(folders[0] / "checkpoint.pt", weights_only=True)))
    receipts = [c for _, c in left if set(c) == {"next_task", "final_result"}]
    assert len(receipts) == 1 and receipts[0]["final_result"]["acc_matrix"]  # the other trial: a receipt
    kept = max(left, key=lambda x: ("final_result" not in x[1], x[0]))
    assert kept[1]["next_task"] == 3 and kept[0] == max(acc for acc, _ in left)  # the best: the trainer's checkpoint
    for run_id in failed.run_id:  # the failing trials still logged task 0 before the NaN
        assert [m.step for m in client.get_metric_history(run_id, "acc_task_0")] == [0]
    assert parents["metrics.trials_failed"].iloc[0] == 2
    assert parents["metrics.architectures_drawn"].iloc[0] >= 4  # the searcher's statistics reach the parent run


def test_interrupted_sweep_resumes_with_one_run_per_trial(tmp_path):
    base = {**TINY_BASE, "iters": 600, "num_tasks": 4}
    path = write_spec(tmp_path, base=base, num_samples=4, space={"beta": [0.01, 0.05, 0.1, 0.5]},
                      search={"algorithm": "grid", "seed": 0, "max_concurrent": 2})
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, "-m", "hnet.cli", "sweep", "run", str(path)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until some trial has finished two tasks, then Ctrl-C: its report of
        time.sleep(0.5)            # task 0 has reached the driver (a trial's report waits for the driver)
        if any(tmp_path.glob("ray_results/*/trial_*/checkpoint_000001")):
            break
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=180)
    _, trials = runs(tmp_path)
    assert len(trials) < 4 or (trials.status == "RUNNING").any(), out[-3000:]

    assert "sweep not finished" in out, out[-3000:]
    # A driver killed while Tune uploads its state leaves the file empty (Tune truncates, then
    # writes); without the backup Tune would restart all four trials from task 0.
    (state_file,) = tmp_path.glob("ray_results/*/experiment_state-*.json")
    state_file.write_text("")
    # A node killed while it copies a checkpoint into the trial folder leaves a newer one cut off:
    # the trial must skip it and resume from the last readable one (not fail at every retry).
    # Tune deletes a trial's older checkpoint when a newer one arrives and saves its state later: a
    # driver killed in between leaves a state naming a deleted checkpoint (each trial's is moved
    # on here); Tune would fail those trials at every restore.
    unfinished = [d for d in tmp_path.glob("ray_results/*/trial_*") if not any(d.glob("checkpoint_000003"))]
    moved_on = 0
    for checkpoint in tmp_path.glob("ray_results/*/trial_*/checkpoint_*"):
        checkpoint.rename(checkpoint.with_name(f"checkpoint_{int(checkpoint.name.split('_')[1]) + 50:06d}"))
        moved_on += 1
    assert moved_on
    cut = sorted(unfinished)[0] / "checkpoint_000099"  # a trial the resume restarts
    cut.mkdir()
    (cut / "checkpoint.pt").write_bytes(b"")  # created, not yet written: torch.load raises EOFError
    resumed = hnet("sweep", "run", str(path), "--resume", "--verbose", cwd=tmp_path)  # trial output here
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "restored its last complete copy" in resumed.stdout and "Restarting experiment" not in resumed.stdout
    assert "hnet sweep: resuming" in resumed.stdout
    assert "trial(s) resume from a newer checkpoint" in resumed.stdout, resumed.stdout[-3000:]
    assert "hnet trial: resuming at task" in resumed.stdout
    assert "4 trials, 4 completed" in resumed.stdout
    assert f"skipped the unreadable checkpoint {cut}" in resumed.stdout
    parents, trials = runs(tmp_path)
    assert len(parents) == 1 and parents.status.iloc[0] == "FINISHED"
    assert len(trials) == 4 and trials["tags.trial_id"].is_unique
    assert (trials.status == "FINISHED").all()
    client = mlflow.tracking.MlflowClient()
    for run_id in trials.run_id:
        steps = [m.step for m in client.get_metric_history(run_id, "acc_after_mean")]
        assert steps == [0, 1, 2, 3]  # every task once: no gap, no duplicate


def test_a_checkpoint_cut_off_at_any_byte_reads_as_missing(tmp_path):
    import torch

    from hnet.config import preset
    from hnet.trainer import train
    from sweeps.trainable import read_next_task

    train(preset("split_digits").replace(num_tasks=2, iters=2), checkpoint=tmp_path / "c.pt")
    whole = (tmp_path / "c.pt").read_bytes()
    assert read_next_task(tmp_path / "c.pt") == 2 == torch.load(tmp_path / "c.pt", weights_only=True)["next_task"]
    for n in range(0, len(whole), max(1, len(whole) // 200)):
        (tmp_path / "cut.pt").write_bytes(whole[:n])
        assert read_next_task(tmp_path / "cut.pt") is None, n


def test_resume_refuses_a_cut_off_state_without_a_backup(tmp_path):
    from sweeps.tune_state import repair_tune_state

    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": [')
    with pytest.raises(SpecError, match="cut off .* no backup"):
        repair_tune_state(tmp_path)
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')
    assert repair_tune_state(tmp_path) is False  # whole: left alone


def test_asha_stops_poor_configurations_after_the_first_tasks(tmp_path):
    path = write_spec(tmp_path, base={**TINY_BASE, "num_tasks": 4, "iters": 40},
                      space={"lr": [1e-2, 1e-6, 2e-6, 3e-6]}, num_samples=4,
                      search={"algorithm": "grid", "seed": 0, "max_concurrent": 1},
                      scheduler={"type": "asha", "grace_tasks": 1, "reduction_factor": 2})
    proc = hnet("sweep", "run", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parents, trials = runs(tmp_path)
    assert len(trials) == 4 and parents.status.iloc[0] == "FINISHED"
    pruned = trials[trials["tags.trial_status"] == "pruned"]
    assert len(pruned) >= 1 and (pruned["params.lr"] != "0.01").all()
    assert (trials.loc[trials["params.lr"] == "0.01", "tags.trial_status"] == "completed").all()
    client = mlflow.tracking.MlflowClient()
    for run_id in pruned.run_id:  # stopped after fewer than all 4 tasks
        assert len(client.get_metric_history(run_id, "acc_after_mean")) < 4


def test_multi_objective_search_builds_a_pareto_front():
    """NSGA-II is told (accuracy, compression ratio) per configuration; its front is exactly the
    configurations no other one beats on both."""
    from hnet.counts import count_weights
    from sweeps.record import from_tune_config
    from sweeps.search import _sizes_label

    spec = parse_spec({"name": "m", "base": TINY_BASE, "search": {"algorithm": "nsga2", "seed": 0},
                       "space": {"hnet_hidden": ["", "10", "25,25"], "chunk_size": [500, 1000, 2000]}})
    searcher = OptunaSearcher(spec)
    assert [m for m, _ in spec.objectives] == ["acc_after_mean", "compression_ratio"]
    told = {}
    for i, acc in enumerate([91.0, 95.0, 89.0, 97.0, 93.0, 90.0]):
        cfg = from_tune_config(searcher.suggest(f"t{i}"), spec.base.to_flat_params())
        ratio = count_weights(cfg).compression_ratio
        searcher.on_trial_complete(f"t{i}", {"acc_after_mean": acc, "compression_ratio": ratio})
        told[(_sizes_label(cfg.hnet_hidden), cfg.chunk_size)] = (acc, ratio)

    def beaten(p):
        return any(q != p and q[0] >= p[0] and q[1] <= p[1] for q in told.values())

    front = {key for key, point in told.items() if not beaten(point)}
    assert len(told) == 6 and 1 <= len(front) < 6
    assert len(searcher.study.directions) == 2
    assert {(t.params["hnet_hidden"], t.params["chunk_size"]) for t in searcher.study.best_trials} == front

def test_both_backends_train_one_plan_in_one_order_and_continue_each_other(tmp_path):
    """Grid and random search: `hnet sweep dry-run`, the pool and Ray train the same configurations in the
    same order (both take them from sweeps.space); a study continued by Ray from a --results file the pool
    began trains the rest only, and the file ends with the whole study. Both backends record to MLflow alike:
    the same trials read back with the same columns and numbers, and `hnet report` reads a pool's sweep."""
    import json

    from analysis.runs import load_trials

    base = {**TINY_BASE, "num_tasks": 1, "iters": 5}
    space = {"beta": [0.001, 0.01, 0.1, 1.0], "lr": [0.001, 0.002]}
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    def point(values: dict) -> tuple[float, float]:
        return float(values["beta"]), float(values["lr"])

    def in_file(path: Path) -> list[tuple[float, float]]:
        return [point(json.loads(line)["config"]) for line in path.read_text().splitlines()]

    for algorithm in ("grid", "random"):
        folder = tmp_path / algorithm
        folder.mkdir()
        path = write_spec(folder, base=base, space=space, num_samples=4, mlflow={"experiment": algorithm,
                          "tracking_uri": uri}, search={"algorithm": algorithm, "seed": 1, "max_concurrent": 1})
        dry = hnet("sweep", "dry-run", str(path), cwd=folder)
        assert dry.returncode == 0, dry.stderr
        listed = [point(dict(kv.split("=") for kv in line.split()[4:]))
                  for line in dry.stdout.splitlines() if " planned " in line]
        assert len(listed) == 4 and len(set(listed)) == 4, dry.stdout
        pooled = folder / "pool.jsonl"  # the pool runs the whole plan
        pool = ["sweep", "run", str(path), "--backend", "pool", "--workers", "1", "--set", "threads=1"]
        proc = hnet(*pool, "--results", str(pooled), cwd=folder)
        assert proc.returncode == 0 and in_file(pooled) == listed, proc.stdout[-2000:] + proc.stderr[-2000:]
    parents, trials = runs(tmp_path, "grid")  # the pool's record of the grid: one finished sweep, as Ray's
    assert len(parents) == 1 and (parents.status == "FINISHED").all() and (trials.status == "FINISHED").all()
    assert (trials["tags.mlflow.parentRunId"] == parents.run_id.iloc[0]).all()
    assert record.VIEW_TAG in mlflow.tracking.MlflowClient(uri).get_experiment_by_name("grid").tags  # the UI's view
    report = hnet("report", "grid", "--tracking-uri", uri, "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert report.returncode == 0 and (tmp_path / "report" / "fig_a7.png").exists(), report.stderr

    # random: a study whose file holds the pool's first trial goes on through Ray with the rest, in order
    study = folder / "study.jsonl"
    study.write_text(pooled.read_text().splitlines(keepends=True)[0])
    proc = hnet("sweep", "run", str(path), "--results", str(study), cwd=folder)
    assert proc.returncode == 0 and "1 of 4 trials are in" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(in_file(study)) == sorted(listed)  # the file holds the whole study, each trial once
    again = hnet(*pool, "--results", str(study), cwd=folder)
    assert again.returncode == 0 and "0 trials to run (4 already in" in again.stdout, again.stdout + again.stderr
    parents, trials = runs(tmp_path, "random")  # the pool's sweep (4 trials), Ray's (the last 3)
    ray_sweep = parents.sort_values("start_time").run_id.iloc[-1]
    ray_trials = trials[trials["tags.mlflow.parentRunId"] == ray_sweep].sort_values("start_time")
    assert [point({"beta": t["params.beta"], "lr": t["params.lr"]}) for _, t in ray_trials.iterrows()] == listed[1:]
    # the same trials through either backend: the same columns and numbers
    frame = load_trials("random", uri, with_matrix=True)
    by_backend = [frame[(frame.sweep_id == parents.set_index("run_id").loc[run, "tags.sweep_id"])]
                  .set_index(["beta", "lr"]).sort_index() for run in parents.run_id]
    shared = by_backend[0].index.intersection(by_backend[1].index)
    assert len(shared) == 3 and (frame.status == "completed").all()
    a, b = (part.loc[shared] for part in by_backend)
    for column in ("acc_after_mean", "acc_during_mean", "forgetting", "compression_ratio", "hnet_weights"):
        assert a[column].tolist() == pytest.approx(b[column].tolist(), abs=1e-6), column
    assert a.acc_matrix.tolist() == b.acc_matrix.tolist()


def test_console_is_quiet_and_the_log_holds_the_rest(tmp_path):
    """The README's first command prints a few lines; Ray's, Tune's and the trials' output is in the
    sweep's log file, whose path is printed once; --verbose brings it back."""
    proc = hnet("sweep", "run", "smoke", "--num-samples", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    assert len(lines) < 40, "\n".join(lines)
    assert not any("Checkpoint successfully created" in line or "INFO" in line for line in lines), "\n".join(lines)
    (log,) = tmp_path.glob("ray_results/smoke-*/sweep.log")
    assert sum(str(log) in line for line in lines) == 1
    assert "Started a local Ray instance" in log.read_text() and "Checkpoint successfully created" in log.read_text()
    assert any(line.startswith("[0:") and "trials 2/2 done: 2 completed" in line for line in lines)
    assert "2 trials, 2 completed" in proc.stdout


def test_runs_of_trials_tune_lost_are_removed(tmp_path):
    """The duplicate-run hole: a trial whose run reached MLflow but not Tune's saved state is run again
    under a new id after a resume; at the end its old run is removed, the sweep's other runs stay."""
    from mlflow.tracking import MlflowClient

    from sweeps.mlflow_logging import remove_orphan_runs

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("e")
    for trial_id, sweep_id in (("a", "s1"), ("b", "s1"), ("lost", "s1"), ("other", "s2")):
        client.create_run(experiment_id, tags={"role": "trial", "trial_id": trial_id, "sweep_id": sweep_id})
    parent = client.create_run(experiment_id, tags={"role": "sweep", "sweep_id": "s1"})
    assert remove_orphan_runs(uri, "e", "s1", {"a", "b"}) == 1
    left = {r.data.tags.get("trial_id") for r in client.search_runs([experiment_id])}
    assert left == {"a", "b", "other", None} and client.get_run(parent.info.run_id).info.lifecycle_stage == "active"
    assert remove_orphan_runs(uri, "e", "s1", {"a", "b"}) == 0
