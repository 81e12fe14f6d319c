"""TensorBoard: one run folder per trial, ``<root>/<trial_id>/``, of TensorBoard's own protos
(no TensorFlow, no torch).

Each step's metrics are one event (one record, checksummed), so a write cut short by a kill loses
that step whole; the event files already on disk say which steps a trial has, and only later ones
are written (a resumed job continues the same folder, each (trial, step) once). A folder that is
reopened gets a new event file beside the old ones: TensorBoard reads a run's files in name order.
Records are framed as TensorFlow's record writer frames them (length, data, each with its masked
CRC-32C), the checksums by ``google-crc32c``'s C code where it is installed (the ``tracking``
extra): TensorBoard's own pure-Python CRC took most of this sink's CPU time, 45 us for 300 bytes
against 0.3 us. The trial's config goes to the HParams dashboard (an experiment and a session start when its
folder is new; a session end with its status when it ends). Tags are the ``evals.parquet`` column
names, with no prefix.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Optional

from orchestrator.track.views import EVAL_METRICS, FINAL_METRICS, Point, TrialEnd, TrialView

log = logging.getLogger(__name__)

_FILE_PREFIX = "events.out.tfevents."


@dataclass
class _Trial:
    """What one trial's folder holds: the last step of each tag, its last session status, its
    event files (how many, the one open)."""

    steps: dict[str, int] = field(default_factory=dict)
    started: bool = False
    status: Optional[int] = None  # the last session end's api_pb2.Status
    files: Optional[int] = None  # event files in its folder (None: no folder yet)
    file: Optional[BinaryIO] = None


class TensorBoardSink:
    """Writes trials under ``root`` (created as needed); see the module docstring."""

    name = "tensorboard"

    def __init__(self, root: str) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self._api, self._meta, self._plugin_data = api_pb2, metadata, plugin_data_pb2
        self.root = Path(root)
        self._trials: dict[str, _Trial] = {}
        self._crc = _masked_crc32c()

    # --- what a tracker calls -------------------------------------------------------------

    def log(self, view: TrialView, points: list[Point]) -> None:
        """Write the points at steps this trial's folder does not have yet (per tag)."""
        trial = self._trial(view)
        for point in sorted(points, key=lambda p: p.step):
            values = {k: v for k, v in point.metrics.items() if point.step > trial.steps.get(k, -1)}
            if values:
                self._write(view.trial_id, trial, self._scalars(point.step, values, point.wall_time))
                for k in values:
                    trial.steps[k] = point.step
        self._flush(trial)

    def holds(self, trial_id: str, status: str) -> bool:
        """Whether the trial's folder says it ended, as well (success or failure) as ``status`` says
        (so it has everything)."""
        trial = self._trials.get(trial_id)
        if trial is None:
            trial = self._trials[trial_id] = self._read(self.root / trial_id)
        return trial.status is not None and trial.status == self._end_status(status)

    def _end_status(self, status: str) -> int:
        succeeded = TrialEnd(status, 0, {}).succeeded
        return int(self._api.Status.Value("STATUS_SUCCESS" if succeeded else "STATUS_FAILURE"))

    def end(self, view: TrialView, end: Optional[TrialEnd]) -> None:
        """The trial ended (``end``) or paused (None): its final metrics and session end, then its
        file is closed (a promoted trial opens a new one)."""
        trial = self._trial(view)
        if end is not None:
            final = {k: v for k, v in end.metrics.items() if end.step > trial.steps.get(k, -1)}
            if final:
                self._write(view.trial_id, trial, self._scalars(end.step, final, time.time()))
                for k in final:
                    trial.steps[k] = end.step
            status = self._end_status(end.status)
            if trial.status != status:
                info = self._plugin_data.SessionEndInfo(status=status, end_time_secs=time.time())
                self._write(view.trial_id, trial, self._hparams_event(
                    self._meta.SESSION_END_INFO_TAG, self._plugin_data.HParamsPluginData(session_end_info=info)))
                trial.status = status
        self._close(trial)

    def finish(self, report_files: list[Path]) -> None:
        """Nothing to add at the job's end: the report is the job folder's."""

    def flush(self) -> None:
        """Nothing is buffered: each trial's file is flushed as it is written."""

    def close(self) -> None:
        for trial in self._trials.values():
            self._close(trial)

    # --- pieces ---------------------------------------------------------------------------

    def _trial(self, view: TrialView) -> _Trial:
        trial = self._trials.get(view.trial_id)
        if trial is None:
            trial = self._trials[view.trial_id] = self._read(self.root / view.trial_id)
        if not trial.started:
            self._write(view.trial_id, trial, *self._session_start(view))
            trial.started = True
        return trial

    def _read(self, folder: Path) -> _Trial:
        """What a trial's existing event files hold (nothing for a new folder). A record cut short
        ends that file's reading: what follows it was never acknowledged."""
        from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

        trial = _Trial()
        if not folder.is_dir():
            return trial
        names = sorted(name for name in os.listdir(folder) if _FILE_PREFIX in name)
        trial.files = len(names)
        for name in names:
            try:
                for event in EventFileLoader(str(folder / name)).Load():
                    self._note(trial, event)
            except Exception as e:  # noqa: BLE001  (a damaged file: keep what was read)
                log.debug("tensorboard: stopped reading %s: %s", folder / name, e)
        return trial

    def _note(self, trial: _Trial, event: Any) -> None:
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == self._meta.PLUGIN_NAME:
                data = self._plugin_data.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                if data.HasField("session_start_info"):
                    trial.started = True
                elif data.HasField("session_end_info"):
                    trial.status = data.session_end_info.status
            elif value.tag in EVAL_METRICS or value.tag in FINAL_METRICS:
                trial.steps[value.tag] = max(trial.steps.get(value.tag, -1), event.step)

    def _write(self, trial_id: str, trial: _Trial, *events: Any) -> None:
        records = [self._record(event.SerializeToString()) for event in events]
        if trial.file is None:
            folder = self.root / trial_id
            if trial.files is None:
                folder.mkdir(parents=True, exist_ok=True)
                trial.files = 0
            # TensorBoard reads a run's files in name order: the time, then how many came before
            # (so two files of one second sort as written); "x" never replaces a file.
            name = f"{_FILE_PREFIX}{int(time.time()):010d}.{trial.files:06d}.{socket.gethostname()}.{os.getpid()}"
            trial.file = open(folder / name, "xb")  # noqa: SIM115  (closed by _close)
            trial.files += 1
            records.insert(0, self._record(self._event(wall_time=time.time(), file_version="brain.Event:2")
                                           .SerializeToString()))
        trial.file.write(b"".join(records))

    def _record(self, data: bytes) -> bytes:
        """One record as TensorFlow's record writer frames it (little-endian): the length (uint64),
        its masked CRC (uint32), the data, the data's masked CRC."""
        header = struct.pack("<Q", len(data))
        return header + struct.pack("<I", self._crc(header)) + data + struct.pack("<I", self._crc(data))

    def _flush(self, trial: _Trial) -> None:
        if trial.file is not None:
            trial.file.flush()  # TensorBoard sees the points now, not when the file closes

    def _close(self, trial: _Trial) -> None:
        if trial.file is not None:
            file, trial.file = trial.file, None
            file.close()

    def _scalars(self, step: int, values: dict[str, float], wall_time: float) -> Any:
        summary = self._summary(value=[self._summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        return self._event(wall_time=wall_time, step=step, summary=summary)

    def _session_start(self, view: TrialView) -> tuple[Any, Any]:
        """The HParams experiment (this trial's hyperparameters and the metrics to show beside
        them) and its session start, as torch's ``add_hparams`` writes them, in the trial's own folder."""
        api = self._api
        start = self._plugin_data.SessionStartInfo(start_time_secs=time.time())
        infos = []
        for name, value in view.params.items():
            if isinstance(value, bool):
                start.hparams[name].bool_value, kind = value, "DATA_TYPE_BOOL"
            elif isinstance(value, (int, float)):
                start.hparams[name].number_value, kind = float(value), "DATA_TYPE_FLOAT64"
            else:
                start.hparams[name].string_value, kind = str(value), "DATA_TYPE_STRING"
            infos.append(api.HParamInfo(name=name, type=api.DataType.Value(kind)))
        metrics = [api.MetricInfo(name=api.MetricName(tag=t)) for t in ("val_loss", *FINAL_METRICS)]
        experiment = api.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=time.time())
        data = self._plugin_data.HParamsPluginData
        return (self._hparams_event(self._meta.EXPERIMENT_TAG, data(experiment=experiment)),
                self._hparams_event(self._meta.SESSION_START_INFO_TAG, data(session_start_info=start)))

    def _hparams_event(self, tag: str, data: Any) -> Any:
        data.version = self._meta.PLUGIN_DATA_VERSION
        meta = self._summary_metadata(data)
        summary = self._summary(value=[self._summary.Value(tag=tag, metadata=meta)])
        return self._event(wall_time=time.time(), summary=summary)

    def _summary_metadata(self, data: Any) -> Any:
        from tensorboard.compat.proto.summary_pb2 import SummaryMetadata

        return SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
            plugin_name=self._meta.PLUGIN_NAME, content=data.SerializeToString()))


def _masked_crc32c() -> Callable[[bytes], int]:
    """TensorFlow's masked CRC-32C of a record's parts: google-crc32c's C code where it is
    installed, else TensorBoard's own (pure Python, about 150 times slower)."""
    try:
        from google_crc32c import value
    except ImportError:
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

        return masked_crc32c

    def masked(data: bytes) -> int:
        crc = value(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF

    return masked
