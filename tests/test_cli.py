"""`hnet train` as a user runs it: real processes, exit codes, files written."""
import json
import os
import subprocess
import sys

import pytest

HNET = [sys.executable, "-m", "hnet.cli"]


def run(*args, cwd=None):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([*HNET, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("preset, hnet_weights, task_embs, target", [
    ("permuted_mnist", 2_029_691, 240, 2_036_010),
    ("split_mnist", 465_192, 480, 475_202),
    ("permuted_mnist_small", 121_819, 640, 122_700),  # App. D: 122,459 weights with task embeddings vs 122,700
])
def test_dry_run_prints_counts_without_data(tmp_path, preset, hnet_weights, task_embs, target):
    proc = run("train", "--preset", preset, "--dry-run", "--data-root", str(tmp_path / "none"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["hnet_weights"], out["task_embedding_weights"], out["target_weights"]) == (hnet_weights, task_embs, target)
    assert out["compression_ratio"] == pytest.approx(hnet_weights / target)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize("benchmark, tasks", [("permuted_mnist", 10), ("split_mnist", 5), ("permuted_digits", 5)])
def test_a_benchmark_alone_gives_the_same_number_of_tasks_from_flags_and_from_a_spec(benchmark, tasks):
    from sweeps.spec import parse_spec

    proc = run("train", "--benchmark", benchmark, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    from_flags = json.loads(proc.stdout)["config"]["num_tasks"]
    from_spec = parse_spec({"name": "n", "base": {"benchmark": benchmark}, "space": {"beta": [0.01]}}).base.num_tasks
    assert from_flags == from_spec == tasks


def test_dry_run_without_hidden_layers():
    proc = run("train", "--benchmark", "split_digits", "--hnet-hidden", "", "--chunk-size", "500", "--dry-run")
    out = json.loads(proc.stdout)
    assert out["config"]["hnet_hidden"] == [] and out["hnet_weights"] == (24 + 8) * 500 + 500 + out["num_chunks"] * 8


@pytest.mark.parametrize("args, message", [
    (["--hnet-activation", "tanhh"], "unknown hnet_activation"),
    (["--target-hidden", "100,-5"], "positive integers"),
    (["--chunk-size", "0"], "chunk_size must be a positive integer"),
    (["--benchmark", "cifar1000"], "unknown benchmark"),
    (["--preset", "nope"], "unknown preset"),
    (["--beta", "-1"], "beta must be >= 0"),
    (["--hnet-init", "kaiming"], "unknown hnet_init"),
    (["--hnet-emb-std", "-0.1"], "hnet_emb_std must be >= 0"),
    (["--lr-schedule", "step"], "unknown lr_schedule"),
    (["--iters", "ten"], "invalid int value"),
    (["--method", "replay"], "unknown method"),
    (["--scenario", "cl9"], "unknown scenario"),
    (["--method", "si", "--multi-head"], "multi_head is an option of a hypernetwork classifier"),
    (["--method", "hnet_r", "--multi-head"], "for method hnet_r the scenario decides the heads"),
    (["--replay-dec-hidden", ""], "replay_dec_hidden needs at least one layer"),
    (["--preset", "regression_1d", "--scenario", "cl3"], "regression_1d is a regression: scenario cl1"),
    (["--chunk-emb-dim", "0"], "chunk_emb_dim 0 needs one chunk"),
    (["--benchmark", "split_mnist", "--data-root", "DATA_MISSING"], "MNIST not found"),
    (["--preset", "split_cifar_zenke", "--data-root", "DATA_MISSING"], "CIFAR10 not found"),
    (["--target-arch", "zenke"], "target_arch zenke is for 32x32x3 images (split_cifar)"),
    (["--augment"], "augment is for 32x32x3 images"),
    (["--method", "hnet_r", "--replay-temperature", "0"], "replay_temperature must be > 0"),
    (["--replay-mix", "half"], "unknown replay_mix"),
    (["--preset", "split_cifar_resnet", "--scenario", "cl3"], "resnet32 keeps batch-norm statistics per task"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, args, message):
    args = [a.replace("DATA_MISSING", str(tmp_path / "nodata")) for a in args]
    proc = run("train", *args, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hnet: error")]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_train_writes_results_and_resumes(tmp_path):
    (tmp_path / "cfg.yaml").write_text("preset: split_digits\nnum_tasks: 2\niters: 30\nbeta: 0.02\n")
    out = tmp_path / "run"
    proc = run("train", "--config", str(tmp_path / "cfg.yaml"), "--lr", "0.002", "--threads", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "results.json").read_text())
    assert result["config"]["beta"] == 0.02 and result["config"]["lr"] == 0.002  # file < flag
    assert len(result["acc_matrix"]) == 2 and len(result["acc_matrix"][1]) == 2
    assert {"acc_during", "acc_after", "acc_after_mean", "forgetting", "compression_ratio",
            "hnet_weights", "target_weights", "task_seconds"} <= set(result)
    assert "acc_after_mean" in proc.stdout and "task 2/2" in proc.stderr
    # resuming a finished run trains nothing and gives the same accuracies
    again = run("train", "--config", str(tmp_path / "cfg.yaml"), "--lr", "0.002", "--threads", "1",
                "--out", str(out), "--resume")
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "results.json").read_text())["acc_matrix"] == result["acc_matrix"]


def write_idx_mnist(root, n_train=600, n_test=200):
    """Tiny MNIST in the real IDX file format under <root>/MNIST/raw (class-dependent blobs)."""
    import numpy as np

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):  # a bright 6x6 patch whose position codes the digit
            images[i, 2 * label:2 * label + 6, 3:9] = 255
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            np.array([0, 0, 8, 3], np.uint8).tobytes() + np.array([n, 28, 28], ">i4").tobytes() + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            np.array([0, 0, 8, 1], np.uint8).tobytes() + np.array([n], ">i4").tobytes() + labels.tobytes())


def test_dataset_is_prepared_under_a_file_lock(tmp_path):
    """A second process waits for the dataset lock held by another (one download per node), then trains."""
    import queue
    import threading

    import filelock

    write_idx_mnist(tmp_path / "data")
    lock = filelock.FileLock(tmp_path / "data" / ".MNIST.lock")
    lock.acquire()
    proc = subprocess.Popen([*HNET, "train", "--preset", "split_mnist", "--num-tasks", "2", "--iters", "20",
                             "--threads", "1", "--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        seen = ""
        while "waiting for" not in seen:
            seen += lines.get(timeout=120)
        assert ".MNIST.lock" in seen and proc.poll() is None and not (tmp_path / "run").exists()
    finally:
        lock.release()
    assert proc.wait(timeout=300) == 0, "".join(list(lines.queue))[-2000:]
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert result["acc_after_mean"] > 60  # the IDX loader read the patches: 75..100 measured (studies/test_margins)


# A process in which the layers above the core cannot be imported: `hnet train` must not need them.
WITHOUT_UPPER_LAYERS = """
import sys
BLOCKED = {"sweeps", "analysis", "ray", "mlflow", "optuna", "pandas"}
sys.modules.update(dict.fromkeys(BLOCKED))  # None: `import ray` raises ModuleNotFoundError
from hnet.cli import main
code = main(sys.argv[1:])
loaded = {m.split(".")[0] for m, module in sys.modules.items() if module is not None}
assert not BLOCKED & loaded, sorted(BLOCKED & loaded)
sys.exit(code)
"""


def run_core_only(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", WITHOUT_UPPER_LAYERS, *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=300)


def test_core_runs_without_the_layers_above_it(tmp_path):
    help_ = run_core_only("train", "--help")
    assert help_.returncode == 0 and "--chunk-size" in help_.stdout and "--data-root" in help_.stdout, help_.stderr
    dry = run_core_only("train", "--preset", "split_mnist", "--dry-run")
    assert dry.returncode == 0 and json.loads(dry.stdout)["hnet_weights"] == 465_192, dry.stderr
    trained = run_core_only("train", "--preset", "split_digits", "--num-tasks", "2", "--iters", "5",
                            "--out", str(tmp_path / "run"))
    assert trained.returncode == 0 and (tmp_path / "run" / "results.json").exists(), trained.stderr
    # the commands of the upper layers say what is missing, in one line
    sweep = run_core_only("sweep", "run", "smoke", cwd=tmp_path)
    errors = [line for line in sweep.stderr.splitlines() if line.strip()]
    assert sweep.returncode == 2 and len(errors) == 1, sweep.stderr
    assert errors[0].startswith("hnet: error: hnet sweep needs packages") and "pip install" in errors[0]
    listing = run_core_only("--help")
    assert listing.returncode == 0 and "train" in listing.stdout and "unavailable" in listing.stdout


def test_flags_are_derived_from_the_config_fields():
    """Every config field has a flag named after it, with its help text: one definition per field."""
    import dataclasses

    from hnet.config import Runtime, TrainConfig

    help_ = run("train", "--help").stdout
    for cls in (TrainConfig, Runtime):
        for f in dataclasses.fields(cls):
            assert "--" + f.name.replace("_", "-") in help_, f.name
            assert f.metadata["help"].split()[0] in help_
    # booleans come in pairs, choices are checked by the config with its own message
    out = json.loads(run("train", "--no-lookahead", "--multi-head", "--dry-run").stdout)
    assert out["config"]["lookahead"] is False and out["config"]["multi_head"] is True
    assert "device" not in out["config"]  # a runtime field is not part of the experiment
