"""Tune's side of the driver: the MLflow record fed from Tune's calls (``MLflowTrialLogger``), and
Tune's experiment state (trial list, searcher) made to survive a driver killed mid-save.

Tune uploads that state by truncating and rewriting the files in the sweep folder, so a
driver killed during an upload leaves them cut off, and ``Tuner.restore`` then silently
restarts the sweep from scratch. ``ExperimentStateBackup`` keeps a complete copy beside them;
``repair_tune_state`` puts it back before a resume. Tune also deletes a trial's older checkpoint
as soon as a newer one arrives but records the newer one in that state only later, so a state
saved before can name a deleted checkpoint; ``restore_deleted_checkpoints`` mends that.
"""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import pyarrow.fs
from ray import tune

from .mlflow_logging import TrialRecorder
from .spec import SpecError, SweepSpec

TUNE_STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl")
STATE_BACKUP = "hnet_state_backup"


class MLflowTrialLogger(tune.Callback):
    """Tune's calls -> the sweep's ``TrialRecorder``: every result, the end of every trial, and a flush
    before Tune saves its experiment state (so a saved state never runs ahead of the record)."""

    def __init__(self, spec: SweepSpec, parent_run_id: str, sweep_id: str) -> None:
        self.recorder = TrialRecorder(spec, parent_run_id, sweep_id)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.recorder.result(trial.trial_id, dict(trial.config), result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.recorder.completed(trial.trial_id, dict(trial.config), dict(trial.last_result or {}))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.recorder.failed(trial.trial_id, dict(trial.config), getattr(trial, "error_file", None))

    def get_state(self) -> None:  # called while Tune saves its experiment state, before it is uploaded
        self.recorder.flush()
        return None

    def on_experiment_end(self, trials, **info) -> None:
        self.recorder.flush(table=True)


class ExperimentStateBackup(tune.Callback):
    """Copies Tune's last saved state into ``STATE_BACKUP/<mtime>/`` (COMPLETE marks a whole copy).

    Tune's staging copy on the driver is written synchronously, so between two loop steps it
    is whole; copy it whenever it changed, then drop older copies. Also at the end of the experiment
    (Ctrl-C included), after Tune's last save: the backup is then as new as the state.
    """

    def __init__(self) -> None:
        self._copied: int | None = None

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._back_up(trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._back_up(trials)

    def _back_up(self, trials: list) -> None:
        if not trials:
            return
        storage = trials[0].storage
        staging = Path(storage.experiment_driver_staging_path)
        states = sorted(staging.glob(TUNE_STATE_FILES[0]))
        saved = states[-1].stat().st_mtime_ns if states else None
        if saved is None or saved == self._copied:
            return
        self._copied = saved
        fs, root = storage.storage_filesystem, f"{storage.experiment_fs_path}/{STATE_BACKUP}"
        folder = f"{root}/{self._copied}"
        fs.create_dir(folder)
        for pattern in TUNE_STATE_FILES:
            for file in staging.glob(pattern):
                pyarrow.fs.copy_files(str(file), f"{folder}/{file.name}", destination_filesystem=fs)
        with fs.open_output_stream(f"{folder}/COMPLETE"):
            pass
        for old in fs.get_file_info(pyarrow.fs.FileSelector(root)):
            if old.base_name != str(self._copied):
                fs.delete_dir(old.path)


class FinishedCheckpoints(tune.Callback):
    """What a finished trial leaves in Tune's storage (the spec's ``keep_checkpoints``): ``none``
    replaces its checkpoint by a receipt of its result (``sweeps.trainable.write_receipt``), ``best``
    does so except for the best completed trial so far by the search metric, ``all`` keeps them."""

    def __init__(self, keep: str, metric: str, mode: str, num_tasks: int) -> None:
        self.keep, self.metric, self.mode, self.num_tasks = keep, metric, mode, num_tasks
        self.best: tuple[float, Any, dict] | None = None  # (value, checkpoint, result) of the kept one

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        forget_history(trial)
        try:
            self._keep_or_receipt(trial)
        except OSError as exc:  # storage trouble must not fail a finished trial: its checkpoint stays
            print(f"hnet sweep: could not replace the checkpoint of finished trial {trial.trial_id} by a receipt: "
                  f"{exc}", flush=True)

    def _keep_or_receipt(self, trial) -> None:
        from .trainable import write_receipt

        result, checkpoint = trial.last_result or {}, trial.checkpoint
        if self.keep == "all" or checkpoint is None or "acc_matrix" not in result:
            return
        if self.keep == "best" and result.get("tasks_done") == self.num_tasks and self.metric in result:
            value = result[self.metric] if self.mode == "max" else -result[self.metric]
            if self.best is None or value > self.best[0]:
                if self.best is not None:
                    write_receipt(self.best[1], self.best[2], self.num_tasks)
                self.best = (value, checkpoint, result)
                return
        write_receipt(checkpoint, result, self.num_tasks)


def forget_history(trial) -> None:
    """Drop what Tune remembers of a finished trial beyond its last result and checkpoint: running
    statistics of every metric and a record per checkpoint (with the trial's config and metrics).
    Tune rewrites all of it for every trial at each save of its experiment state: with thousands of
    trials it is most of that state. (Tune's own num_to_keep trims the records but forces such a
    save at every checkpoint.) Private attributes of Tune's trial metadata: skipped if they moved."""
    metadata = getattr(trial, "run_metadata", None)
    manager = getattr(metadata, "checkpoint_manager", None)
    if metadata is None or not hasattr(metadata, "metric_analysis"):
        return
    metadata.metric_analysis, metadata.metric_n_steps = {}, {}
    if isinstance(getattr(manager, "_checkpoint_results", None), list):
        manager._checkpoint_results = manager._checkpoint_results[-1:]
    metadata.invalidate_cache()


def saved_statuses(fs: pyarrow.fs.FileSystem, experiment_path: str) -> dict[str, str]:
    """Trial id -> status as Tune's newest saved experiment state has them (read as JSON: no trial
    objects, no result files)."""
    found = fs.get_file_info(pyarrow.fs.FileSelector(experiment_path))
    newest = max((f.path for f in found if f.base_name.startswith("experiment_state-")), default=None)
    if newest is None:
        return {}
    with fs.open_input_stream(newest) as f:
        state = json.loads(f.readall())
    trials = (json.loads(trial_json) for trial_json, _ in state["trial_data"])
    return {t["trial_id"]: t["status"] for t in trials}


def _state_is_whole(sweep_dir: Path) -> bool:
    """Tune's newest experiment state and searcher files in ``sweep_dir`` all load."""
    try:
        for pattern in TUNE_STATE_FILES:
            for newest in sorted(sweep_dir.glob(pattern))[-1:]:
                data = newest.read_bytes()
                pickle.loads(data) if newest.suffix == ".pkl" else json.loads(data)
    except Exception:  # cut off: empty or partial
        return False
    return True


def repair_tune_state(sweep_dir: Path) -> bool:
    """Before a resume: if Tune's state was cut off, put back the last complete backup.

    Returns whether it did. Raises SpecError when the state is cut off and no backup exists.
    """
    if not any(sweep_dir.glob(TUNE_STATE_FILES[0])) or _state_is_whole(sweep_dir):
        return False
    backups = sorted((sweep_dir / STATE_BACKUP).glob("*/COMPLETE"), key=lambda f: int(f.parent.name))
    if not backups:
        raise SpecError(f"--resume: Tune's experiment state in {sweep_dir} is cut off (the driver died while "
                        "saving it) and there is no backup to resume from; run the sweep again")
    for pattern in TUNE_STATE_FILES:
        for file in sweep_dir.glob(pattern):
            file.unlink()
    for file in backups[-1].parent.iterdir():
        if file.name != "COMPLETE":
            shutil.copy(file, sweep_dir / file.name)
    return True


def restore_deleted_checkpoints(sweep_dir: Path) -> int:
    """Before a resume: where Tune's experiment state names a trial checkpoint that is gone, move the
    trial folder's newest readable checkpoint to that name. Returns how many were moved.

    Tune (``num_to_keep=1``) deletes the older checkpoint when it registers a newer one, then saves
    its state some time later; a driver killed in between leaves a state whose checkpoint no longer
    exists, and Tune fails that trial at every restore ("does not exist on storage anymore"). The
    trial resumes from its newest checkpoint anyway (``sweeps.trainable.restore_latest``).
    """
    from .trainable import newest_readable, stored_checkpoints

    moved = 0
    for trial in tune.ExperimentAnalysis(str(sweep_dir)).trials:
        checkpoint = trial.checkpoint
        if checkpoint is None:
            continue
        fs = checkpoint.filesystem
        if fs.get_file_info(checkpoint.path).type != pyarrow.fs.FileType.NotFound:
            continue
        newest, _ = newest_readable(stored_checkpoints(fs, checkpoint.path.rsplit("/", 1)[0]))
        if newest is not None:
            fs.move(newest.path, checkpoint.path)
            moved += 1
    return moved
