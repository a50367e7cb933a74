"""Continual-learning benchmarks held as tensors on the training device.

Images are stored once as uint8 rows (N, D); a task is a set of row indices, its labels and
(for permuted benchmarks) a pixel permutation applied on the device when a batch is drawn.
No DataLoader: batches are index lookups.
"""
from __future__ import annotations

import contextlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

from .config import DataError, TrainConfig

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclass
class Split:
    rows: torch.Tensor  # indices into the stored images
    labels: torch.Tensor  # task-local labels (0..classes_per_task-1); regression: real targets


@dataclass
class Task:
    train: Split
    val: Split | None
    test: Split
    permutation: torch.Tensor | None  # pixel order, applied on the device


class Benchmark:
    """A sequence of tasks over one image store (train and test images)."""

    def __init__(self, name: str, images: dict[str, torch.Tensor], scale: float, tasks: list[Task],
                 augment: bool = False) -> None:
        self.name, self.images, self.scale, self.tasks, self.augment = name, images, scale, tasks, augment

    def inputs(self, task: int, part: str, rows: torch.Tensor) -> torch.Tensor:
        store = self.images["test" if part == "test" else "train"]
        x = store[rows].float().mul_(self.scale)
        perm = self.tasks[task].permutation
        return x if perm is None else x[:, perm]

    def train_batches(self, task: int, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless mini-batches: a fresh shuffle of the task's training set every epoch."""
        split = self.tasks[task].train
        n = len(split.rows)
        while True:
            order = torch.randperm(n, generator=generator, device=generator.device)
            for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
                pick = order[start:start + batch_size]
                x = self.inputs(task, "train", split.rows[pick])
                yield (flip_and_shift(x, generator) if self.augment else x), split.labels[pick]

    def eval_split(self, task: int, part: str) -> Split | None:
        return getattr(self.tasks[task], part)


def flip_and_shift(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Standard CIFAR augmentation of a batch of 32x32x3 rows (channels first), on its device: each image
    mirrored left-right with probability 1/2 and shifted by up to ``pad`` pixels each way (zeros fill in)."""
    n = len(x)
    images = F.pad(x.view(n, 3, 32, 32), (pad,) * 4)
    flip = torch.rand(n, generator=generator, device=generator.device) < 0.5
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n, 1), generator=generator, device=generator.device)
    grid = torch.arange(32, device=x.device)
    cols = torch.where(flip[:, None], 31 - grid, grid) + dx  # (n, 32)
    rows = grid + dy
    out = images[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (n, 32, 32, 3)
    return out.permute(0, 3, 1, 2).reshape(n, -1)


# ---- raw datasets ---------------------------------------------------------------------------

# torchvision's dataset class and where it keeps its files (what the missing-data error names)
_TORCHVISION = {"mnist": ("MNIST", "MNIST/raw", ", ".join(MNIST_FILES)),
                "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw", ", ".join(MNIST_FILES)),
                "cifar10": ("CIFAR10", "cifar-10-batches-py", "data_batch_1..5, test_batch"),
                "cifar100": ("CIFAR100", "cifar-100-python", "train, test")}


def _torchvision_dataset(name: str, root: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One torchvision dataset as uint8 rows (N, D) (CIFAR: channels first) and labels; downloaded when missing."""
    import torchvision

    class_name, subfolder, expected = _TORCHVISION[name]
    cls = getattr(torchvision.datasets, class_name)
    folder = Path(root) / subfolder
    missing = [p for p in (folder, *folder.parents) if not p.exists()]  # what a download would create
    out = {}
    with _dataset_lock(Path(root), class_name):  # one download per machine, however many trials start at once
        for part, train in (("train", True), ("test", False)):
            try:
                ds = cls(root, train=train, download=True)
            except Exception as exc:  # no network, corrupt files, ...
                if missing:  # leave nothing behind that the failed download created
                    shutil.rmtree(missing[-1], ignore_errors=True)
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise DataError(f"{class_name} not found in {folder} (expected {expected}) "
                                f"and download failed: {first_line}") from None
            images = torch.as_tensor(ds.data)
            if images.dim() == 4:  # CIFAR: (N, 32, 32, 3) -> channels first, as the convolutions read it
                images = images.permute(0, 3, 1, 2)
            out[part] = (images.reshape(len(images), -1).contiguous(), torch.as_tensor(ds.targets).long())
    return out


def _split_cifar(root: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """CIFAR-10 and CIFAR-100 in one store: labels 0-9 are CIFAR-10's, 10-109 CIFAR-100's (+10)."""
    cifar10, cifar100 = _torchvision_dataset("cifar10", root), _torchvision_dataset("cifar100", root)
    return {part: (torch.cat([cifar10[part][0], cifar100[part][0]]), torch.cat([cifar10[part][1], cifar100[part][1] + 10]))
            for part in ("train", "test")}


@contextlib.contextmanager
def _dataset_lock(root: Path, name: str) -> Iterator[None]:
    """An exclusive file lock ``<root>/.<name>.lock`` while a dataset is checked, downloaded and read.

    Concurrent trials on one node (or nodes sharing an NFS root) otherwise race to download and
    extract the same files. A read-only root (prepared shared storage) needs no lock.
    """
    import filelock

    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(root / f".{name}.lock")
        lock.acquire(timeout=0)
    except filelock.Timeout:
        print(f"hnet: waiting for {lock.lock_file} (another process is preparing {name})", file=sys.stderr, flush=True)
        lock.acquire()
    except OSError:  # read-only data root
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _digits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0..16): fixed 75/25 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.uint8)
    y = torch.tensor(d.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_test = len(x) // 4
    test, train = order[:n_test], order[n_test:]
    return {"train": (x[train], y[train]), "test": (x[test], y[test])}


_RAW_CACHE: dict[tuple[str, str], dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}


def raw_dataset(name: str, root: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Load once per process (sweep workers reuse it across trials and tasks)."""
    key = (name, str(Path(root).resolve()) if name != "digits" else "")
    if key not in _RAW_CACHE:
        if name == "digits":
            _RAW_CACHE[key] = _digits()
        elif name == "cifar10_100":
            _RAW_CACHE[key] = _split_cifar(root)
        else:
            _RAW_CACHE[key] = _torchvision_dataset(name, root)
    return _RAW_CACHE[key]


# ---- benchmarks -----------------------------------------------------------------------------

def _split_train_val(rows: torch.Tensor, labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[Split, Split | None]:
    if val_fraction <= 0:
        return Split(rows, labels), None
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(val_fraction * len(rows))))
    val, train = order[:n_val], order[n_val:]
    return Split(rows[train], labels[train]), Split(rows[val], labels[val])


# Fig. 2's tasks (App. C; the extracted text lost the formulas, these are the figure's: cubic, parabola,
# cubic on disjoint intervals): (function, input interval). Noise and sample counts are our choice.
POLYNOMIAL_TASKS = ((lambda x: (x + 3) ** 3, (-4.0, -2.0)), (lambda x: 2 * x ** 2 - 1, (-1.0, 1.0)),
                    (lambda x: (x - 3) ** 3, (2.0, 4.0)))
POLYNOMIAL_TRAIN, POLYNOMIAL_TEST, POLYNOMIAL_NOISE = 20, 50, 0.05


def polynomial_benchmark(cfg: TrainConfig, device: torch.device | str = "cpu") -> Benchmark:
    """regression_1d: per task, 20 training inputs drawn uniformly from its interval with targets
    f(x) + N(0, 0.05²) (seeded by ``cfg.data_seed``), and 50 evenly spaced noiseless test points."""
    g = torch.Generator().manual_seed(cfg.data_seed)
    xs, ys, tasks, offset = {"train": [], "test": []}, {"train": [], "test": []}, [], {"train": 0, "test": 0}
    for t in range(cfg.num_tasks):
        f, (low, high) = POLYNOMIAL_TASKS[t]
        x = {"train": low + (high - low) * torch.rand(POLYNOMIAL_TRAIN, generator=g),
             "test": torch.linspace(low, high, POLYNOMIAL_TEST)}
        y = {"train": f(x["train"]) + POLYNOMIAL_NOISE * torch.randn(POLYNOMIAL_TRAIN, generator=g), "test": f(x["test"])}
        rows = {}
        for part in xs:
            xs[part].append(x[part])
            ys[part].append(y[part])
            rows[part] = torch.arange(offset[part], offset[part] + len(x[part]), device=device)
            offset[part] += len(x[part])
        train, val = _split_train_val(rows["train"], ys["train"][-1].to(device), cfg.val_fraction, cfg.data_seed + t)
        tasks.append(Task(train=train, val=val, test=Split(rows["test"], ys["test"][-1].to(device)), permutation=None))
    images = {part: torch.cat(xs[part])[:, None].to(device) for part in xs}
    return Benchmark(cfg.benchmark, images, 1.0, tasks)


def load_benchmark(cfg: TrainConfig, device: torch.device | str = "cpu", data_root: str = "data") -> Benchmark:
    """Build the benchmark of ``cfg`` from the files under ``data_root``, all tensors on ``device``.

    Permuted: task 0 is the plain dataset, task t > 0 a fixed random pixel permutation
    (seeded by ``cfg.data_seed``); MNIST-sized images are zero-padded to 32x32.
    Split: task t holds the classes k·t .. k·t+k-1 (k classes per task), relabelled 0..k-1 (SplitMNIST: 2t
    and 2t+1; split_cifar: CIFAR-10, then ten CIFAR-100 classes per task).
    """
    spec = cfg.spec
    if spec.dataset == "polynomials":
        return polynomial_benchmark(cfg, device)
    raw = raw_dataset(spec.dataset, data_root)
    permuted = cfg.benchmark.startswith("permuted")
    scale = 1 / 16 if spec.dataset == "digits" else 1 / 255
    images = {}
    for part, (x, _) in raw.items():
        if permuted and spec.dataset != "digits":
            x = F.pad(x.reshape(-1, 28, 28), (2, 2, 2, 2)).reshape(len(x), -1)
        images[part] = x.to(device)
    labels = {part: y.to(device) for part, (_, y) in raw.items()}
    n_pixels = images["train"].shape[1]
    assert n_pixels == spec.input_dim, (n_pixels, spec.input_dim)

    tasks = []
    for t in range(cfg.num_tasks):
        if permuted:
            perm = None if t == 0 else torch.randperm(
                n_pixels, generator=torch.Generator().manual_seed(cfg.data_seed + t)).to(device)
            select = {part: torch.arange(len(y), device=device) for part, y in labels.items()}
            task_labels = dict(labels)
        else:
            perm = None
            k = spec.classes_per_task
            select = {part: torch.nonzero((y >= k * t) & (y < k * (t + 1))).flatten() for part, y in labels.items()}
            task_labels = {part: labels[part][rows] - k * t for part, rows in select.items()}
        train, val = _split_train_val(select["train"], task_labels["train"], cfg.val_fraction, cfg.data_seed + t)
        tasks.append(Task(train=train, val=val, test=Split(select["test"], task_labels["test"]), permutation=perm))
    return Benchmark(cfg.benchmark, images, scale, tasks, augment=cfg.augment)
