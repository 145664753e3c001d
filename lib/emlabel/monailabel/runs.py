"""Method runs: what one trainer run writes becomes visible as one unit, or not at all.

A run (:meth:`VersionedDatastore.begin_run`, used as a context manager) keeps a journal
``<studies>/.emlabel-runs/<run_id>.json`` and buffers everything it writes:

- model files (and the final train stats, EM state, ...) are written to staged files beside
  their targets (``<dir>/.<name>.staged-<run_id><suffix>``), not to the targets;
- label versions are stored at once, with their final tag, but with ``provenance.pending``
  set, so the resolver, the training items, the verifier and ``GET /datastore`` ignore them;
- image-info updates are kept in memory.

On a clean exit the run commits: journal ``committing`` (listing the staged files and the
image info), each staged file renamed onto its target, ONE rewrite of ``datastore_v2.json``
under the datastore's lock that clears ``pending`` on the run's versions and applies the
image info, journal ``committed``. On an exception the run aborts: journal ``aborted``,
staged files removed, its versions stay stored but pending (nothing is deleted), train stats
``ABORTED``, the exception re-raised.

A killed process leaves its journal ``running`` or ``committing``. :func:`recover_runs` (run
whenever the app builds its datastore: server start and every trainer/scoring process)
aborts a ``running`` journal and rolls a ``committing`` one forward, but only when the
journal's process is dead: its pid is gone or now belongs to a process started at another
time (psutil's create time tells a reused pid). It also removes the temporary files that
killed writers left (their names hold the writer's pid, :mod:`emlabel.atomic`) and marks a
``RUNNING`` stats file of a dead process ``ABORTED``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from filelock import FileLock

from emlabel.atomic import atomic_write_json, atomic_write_with, remove_dead_temp_files
from emlabel.checkpoints import keep_model_version, publish_checkpoint
from emlabel.distributed import barrier
from emlabel.labels import LabelVersion, Provenance
from emlabel.labels.provenance import now_iso

if TYPE_CHECKING:
    from emlabel.monailabel.datastore import VersionedDatastore

logger = logging.getLogger(__name__)

RUNS_DIR_NAME = ".emlabel-runs"
STATS_SUFFIX = ".train_stats.json"
#: create times of one process differ by clock-tick rounding only; a reused pid by far more
_START_TOLERANCE = 0.5


class RunState(StrEnum):
    RUNNING = "running"
    COMMITTING = "committing"
    COMMITTED = "committed"
    ABORTED = "aborted"


# ----------------------------------------------------------------------- processes
@dataclasses.dataclass(frozen=True, kw_only=True)
class ProcessRef:
    """One process: pid, its create time (to tell a reused pid) and the host it ran on."""

    pid: int
    started: float | None
    host: str

    @classmethod
    def current(cls) -> ProcessRef:
        return cls(pid=os.getpid(), started=_create_time(os.getpid()), host=socket.gethostname())

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ProcessRef | None:
        """From a journal or stats dict (keys ``pid``, ``process_started``, ``host``)."""
        pid = record.get("pid")
        if not isinstance(pid, int) or isinstance(pid, bool):
            return None
        started = record.get("process_started")
        return cls(
            pid=pid,
            started=float(started) if isinstance(started, int | float) else None,
            host=str(record.get("host") or socket.gethostname()),
        )

    def to_record(self) -> dict[str, Any]:
        return {"pid": self.pid, "process_started": self.started, "host": self.host}

    def alive(self) -> bool:
        """False once the process is gone (or a zombie, or its pid went to a newer process).

        A process of another host cannot be checked and counts as alive (left alone).
        """
        if self.host != socket.gethostname():
            return True
        if not pid_alive(self.pid):
            return False
        if self.started is None:
            return True
        started = _create_time(self.pid)
        return started is None or abs(started - self.started) <= _START_TOLERANCE

    def same_as(self, other: ProcessRef) -> bool:
        return (
            self.pid == other.pid
            and self.host == other.host
            and (
                self.started is None
                or other.started is None
                or abs(self.started - other.started) <= _START_TOLERANCE
            )
        )


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def pid_alive(pid: int) -> bool:
    """True while a (non-zombie) process with this pid exists on this host."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


# ---------------------------------------------------------------------- stats files
def process_fields() -> dict[str, Any]:
    """What a stats file records about its writer so a dead writer can be recognised."""
    return ProcessRef.current().to_record()


def stats_writer_dead(stats: dict[str, Any]) -> bool:
    """True for a ``RUNNING`` stats dict whose recorded writer process is gone."""
    if stats.get("state") != "RUNNING":
        return False
    writer = ProcessRef.from_record(stats)
    return writer is not None and not writer.alive()


def abort_stats_file(path: Path, reason: str, *, owner: ProcessRef | None) -> bool:
    """Mark a ``RUNNING`` stats file ``ABORTED`` with ``reason``; True if it was changed.

    Only when its writer is dead, or is ``owner`` (the run being aborted); a stats file
    without a recorded writer is changed only for an ``owner``.
    """
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return False
    if not isinstance(stats, dict) or stats.get("state") != "RUNNING":
        return False
    writer = ProcessRef.from_record(stats)
    if writer is None:
        if owner is None:
            return False
    elif writer.alive() and not (owner is not None and writer.same_as(owner)):
        return False
    stats |= {"state": "ABORTED", "reason": reason, "aborted_at": now_iso()}
    atomic_write_json(stats, path)
    logger.warning("train stats %s marked ABORTED: %s", path, reason)
    return True


# ----------------------------------------------------------------------------- runs
@dataclasses.dataclass
class StagedFile:
    target: str
    staged: str
    sha256: str | None = None
    target_before: list[int] | None = None
    """(inode, size, mtime_ns) of the target when the commit started (None: no target)."""
    model: bool = False
    """A checkpoint: the file it replaces is kept under ``versions/`` first."""

    def to_record(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class RunClosedError(RuntimeError):
    """A write through a run that is no longer open (committing, committed or aborted)."""


class MethodRun:
    """One trainer run; commits its model files, label versions and image info together."""

    def __init__(
        self,
        *,
        datastore: VersionedDatastore,
        method: str,
        run_id: str,
        journal_path: Path,
        stats_path: Path | None = None,
    ) -> None:
        self._datastore = datastore
        self.method = method
        self.run_id = run_id
        self.journal_path = Path(journal_path)
        self.stats_path = Path(stats_path).absolute() if stats_path is not None else None
        self.state = RunState.RUNNING
        self.process = ProcessRef.current()
        self.started = now_iso()
        self.reason: str | None = None
        self._files: dict[str, StagedFile] = {}
        self._versions: list[LabelVersion] = []
        self._info: list[tuple[str, dict[str, Any]]] = []

    @classmethod
    def begin(
        cls, datastore: VersionedDatastore, method: str, *, stats_path: Path | None = None
    ) -> MethodRun:
        """A new run with its journal written (state ``running``)."""
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        safe = "".join(c if c.isalnum() or c == "_" else "_" for c in method) or "run"
        run_id = f"{safe}-{stamp}-{secrets.token_hex(4)}"
        run = cls(
            datastore=datastore,
            method=method,
            run_id=run_id,
            journal_path=datastore.runs_dir / f"{run_id}.json",
            stats_path=stats_path,
        )
        run._write_journal()
        logger.info("run %s started (journal %s)", run_id, run.journal_path)
        return run

    # ----------------------------------------------------------------- staging
    def stage_path(self, target: str | os.PathLike[str], *, model: bool = False) -> Path:
        """Register ``target``; returns the staged path to write instead (renamed at commit)."""
        self._check_open()
        target = Path(target).absolute()
        staged = target.with_name(f".{target.name}.staged-{self.run_id}{target.suffix}")
        staged.unlink(missing_ok=True)  # staged twice in one run: the last one counts
        self._files[str(target)] = StagedFile(target=str(target), staged=str(staged), model=model)
        self._write_journal()  # before the file exists: recovery knows what to remove
        return staged

    def stage_file(self, target: str | os.PathLike[str], writer: Callable[[Path], None]) -> Path:
        """Let ``writer`` fill the staged file of ``target`` (atomically)."""
        staged = self.stage_path(target)
        atomic_write_with(writer, staged)
        return staged

    def stage_json(self, target: str | os.PathLike[str], data: Any) -> None:
        """Stage ``data`` as indented JSON (as :func:`emlabel.atomic.atomic_write_json`)."""
        text = json.dumps(data, indent=2, default=str)
        self.stage_file(target, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def stage_checkpoint(
        self,
        path: str | os.PathLike[str],
        state_dict: dict[str, Any],
        meta: dict[str, Any],
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Stage a checkpoint for ``path`` (publish_checkpoint's format); returns its sha256."""
        staged = self.stage_path(path, model=True)
        checksum = publish_checkpoint(staged, state_dict, meta, extra=extra)
        self._files[str(Path(path).absolute())].sha256 = checksum
        return checksum

    # ------------------------------------------------------------- datastore
    def add_version(self, image_id: str, label_file: str, provenance: Provenance) -> LabelVersion:
        """Store a machine label as a new version, pending until the run commits."""
        self._check_open()
        version = self._datastore._store_pending_version(
            image_id, label_file, provenance.replace(run=self.run_id, pending=True)
        )
        self._versions.append(version)
        return version

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        """Merge ``info`` into the image info at commit (applied in call order)."""
        self._check_open()
        self._datastore.require_image(image_id)
        self._info.append((image_id, json.loads(json.dumps(info, default=str))))

    # -------------------------------------------------------------- ending
    def commit(self) -> None:
        """Make everything the run staged and stored visible (see the module docstring)."""
        self._check_open()
        missing = [f.staged for f in self._files.values() if not Path(f.staged).is_file()]
        if missing:
            raise RuntimeError(f"run {self.run_id}: staged files were never written: {missing}")
        for entry in self._files.values():
            entry.target_before = _identity(Path(entry.target))
        record = self._record(state=RunState.COMMITTING)
        _write(self.journal_path, record)  # from here on the run can only roll forward
        self.state = RunState.COMMITTING
        finish_commit(self._datastore, record, self.journal_path)
        self.state = RunState.COMMITTED
        logger.info(
            "run %s committed: %d file(s), %d label version(s), %d image info update(s)",
            self.run_id, len(self._files), len(self._versions), len(self._info),
        )  # fmt: skip

    def abort(self, reason: str) -> None:
        """Drop the staged files; keep the versions pending; mark the stats ``ABORTED``."""
        if self.state not in (RunState.RUNNING,):
            return
        self.reason = reason
        for entry in self._files.values():
            Path(entry.staged).unlink(missing_ok=True)
        self.state = RunState.ABORTED
        record = self._record() | {"finished": now_iso()}
        _write(self.journal_path, record)
        if self.stats_path is not None:
            abort_stats_file(self.stats_path, reason, owner=self.process)
        logger.warning("run %s aborted: %s", self.run_id, reason)

    def __enter__(self) -> MethodRun:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if exc is not None:
            self._abort_for(exc)
            return False
        try:
            barrier()  # under torchrun: every rank's work is done before any of it shows
            self.commit()
        except BaseException as e:
            self._abort_for(e)  # only while nothing was renamed yet (state still running)
            raise
        return False

    def _abort_for(self, exc: BaseException) -> None:
        if self.state != RunState.RUNNING:
            return  # committing: a later recovery rolls it forward
        name = type(exc).__name__
        try:
            self.abort(
                f"the run failed ({name}: {exc})" if str(exc) else f"the run failed ({name})"
            )
        except Exception:  # never hide the original error
            logger.exception("run %s: could not record the abort", self.run_id)

    # ------------------------------------------------------------- journal
    def _check_open(self) -> None:
        if self.state != RunState.RUNNING:
            raise RunClosedError(f"run {self.run_id} is {self.state}, not running")

    def _record(self, state: RunState | None = None) -> dict[str, Any]:
        state = state or self.state
        record = {
            "run_id": self.run_id,
            "method": self.method,
            "state": str(state),
            **self.process.to_record(),
            "started": self.started,
            "updated": now_iso(),
            "stats_path": str(self.stats_path) if self.stats_path else None,
            "files": [f.to_record() for f in self._files.values()],
            "versions": [{"image_id": v.image_id, "tag": v.tag} for v in self._versions],
        }
        if state == RunState.COMMITTING:
            record["image_info"] = [{"image_id": i, "info": info} for i, info in self._info]
        if self.reason:
            record["reason"] = self.reason
        return record

    def _write_journal(self) -> None:
        _write(self.journal_path, self._record())


class FollowerRun(MethodRun):
    """What ranks other than 0 get from ``begin_run`` under torchrun: a run that writes nothing.

    The same calls as rank 0's run, so trainers need no rank checks: files are staged into
    a private temporary folder (removed at the end), versions are not stored (their tags
    are stand-ins), image info is dropped, no journal is kept. Its end waits at the same
    barrier as rank 0's commit, so rank 0 commits only when every rank finished.
    """

    def __init__(self, *, datastore: VersionedDatastore, method: str, rank: int) -> None:
        self._scratch: Path | None = None  # made on the first staged file
        self._rank = rank
        super().__init__(
            datastore=datastore, method=method, run_id=f"rank{rank}-follower",
            journal_path=Path(os.devnull),
        )  # fmt: skip

    def stage_path(self, target: str | os.PathLike[str], *, model: bool = False) -> Path:
        self._check_open()
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix=f"emlabel-rank{self._rank}-"))
        target = Path(target).absolute()
        staged = self._scratch / f"{len(self._files)}-{target.name}"
        self._files[str(target)] = StagedFile(target=str(target), staged=str(staged), model=model)
        return staged

    def add_version(self, image_id: str, label_file: str, provenance: Provenance) -> LabelVersion:
        self._check_open()
        self._versions.append(
            version := LabelVersion(
                image_id=image_id, tag=f"rank{self._rank}-unstored-{len(self._versions) + 1}",
                provenance=provenance.replace(run=self.run_id, pending=True),
            )
        )  # fmt: skip
        return version

    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        self._check_open()

    def commit(self) -> None:
        self._check_open()
        self.state = RunState.COMMITTED
        self._remove_scratch()

    def abort(self, reason: str) -> None:
        if self.state == RunState.RUNNING:
            self.state, self.reason = RunState.ABORTED, reason
            self._remove_scratch()

    def _write_journal(self) -> None:
        return None

    def _remove_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)


def _write(path: Path, record: dict[str, Any]) -> None:
    atomic_write_json(record, path)


def _identity(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def finish_commit(datastore: VersionedDatastore, record: dict[str, Any], journal: Path) -> None:
    """Second half of a commit, from a ``committing`` journal (also the roll-forward).

    Renames every staged file that is still there onto its target, unless the target
    changed since the commit started (another run published since: its file is kept),
    then clears ``pending`` and applies the image info in one index rewrite.
    """
    run_id = record["run_id"]
    for entry in record.get("files", []):
        staged, target = Path(entry["staged"]), Path(entry["target"])
        if not staged.exists():
            continue  # renamed before the crash
        if _identity(target) != entry.get("target_before"):
            logger.warning(
                "run %s: %s changed since the commit started; keeping it, dropping %s",
                run_id, target, staged.name,
            )  # fmt: skip
            staged.unlink(missing_ok=True)
            entry["skipped"] = "target replaced by another writer meanwhile"
            continue
        if entry.get("model"):
            keep_model_version(target, reason=f"replaced by a newer model (run {run_id})")
        os.replace(staged, target)
        _fsync_dir(target.parent)
    updates = [(u["image_id"], u["info"]) for u in record.get("image_info", [])]
    datastore._commit_run_index(run_id, updates)
    done = {k: v for k, v in record.items() if k != "image_info"}
    done |= {
        "state": str(RunState.COMMITTED),
        "image_info_images": sorted({i for i, _ in updates}),
        "finished": now_iso(),
    }
    _write(journal, done)


# ------------------------------------------------------------------------- recovery
@dataclasses.dataclass
class RecoveryReport:
    """What :func:`recover_runs` did."""

    aborted: list[str] = dataclasses.field(default_factory=list)
    rolled_forward: list[str] = dataclasses.field(default_factory=list)
    left_running: list[str] = dataclasses.field(default_factory=list)
    stats_aborted: list[str] = dataclasses.field(default_factory=list)
    temp_files_removed: list[str] = dataclasses.field(default_factory=list)


def read_journals(runs_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable journal in ``runs_dir``, oldest first (temp files skipped)."""
    found = []
    for path in sorted(runs_dir.glob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            logger.warning("run journal %s unreadable (%s); ignored", path, e)
            continue
        if isinstance(record, dict) and record.get("run_id"):
            found.append((path, record))
    return sorted(found, key=lambda pr: str(pr[1].get("started", "")))


def recover_runs(
    datastore: VersionedDatastore,
    *,
    model_dirs: Iterable[str | os.PathLike[str]] = (),
    temp_dirs: Iterable[str | os.PathLike[str]] = (),
) -> RecoveryReport:
    """Finish what dead processes left: abort ``running`` runs, roll ``committing`` forward.

    Runs of live processes are left alone. Then removes dead writers' temp files in
    ``temp_dirs``, ``model_dirs`` and the folders the journals name, and marks ``RUNNING``
    stats files (``*.train_stats.json`` in ``model_dirs``) of dead processes ``ABORTED``.
    """
    report = RecoveryReport()
    runs_dir = datastore.runs_dir
    folders = {Path(d).absolute() for d in [*temp_dirs, *model_dirs]}
    if runs_dir.is_dir():
        folders.add(runs_dir)
        with FileLock(str(runs_dir / ".lock")):
            for path, record in read_journals(runs_dir):
                for entry in record.get("files", []):
                    folders.add(Path(entry["target"]).parent)
                if record.get("stats_path"):
                    folders.add(Path(record["stats_path"]).parent)
                try:
                    _recover_one(datastore, path, record, report)
                except Exception:  # one bad journal must not stop the server
                    logger.exception("run %s: recovery failed", record.get("run_id"))
    for folder in sorted(folders):
        for removed in remove_dead_temp_files(folder, pid_alive):
            report.temp_files_removed.append(str(removed))
            logger.info("removed %s, left by a killed writer", removed)
    for folder in model_dirs:
        for stats in sorted(Path(folder).glob(f"*{STATS_SUFFIX}")):
            if stats.name.startswith("."):
                continue
            reason = "the training process died before it finished (found at recovery)"
            if abort_stats_file(stats, reason, owner=None):
                report.stats_aborted.append(str(stats))
    return report


def _recover_one(
    datastore: VersionedDatastore, path: Path, record: dict[str, Any], report: RecoveryReport
) -> None:
    state = record.get("state")
    if state not in (RunState.RUNNING, RunState.COMMITTING):
        return
    run_id = record["run_id"]
    process = ProcessRef.from_record(record)
    if process is not None and process.alive():
        report.left_running.append(run_id)
        return
    pid = process.pid if process else "?"
    if state == RunState.COMMITTING:
        logger.warning("run %s: process %s died while committing; rolling forward", run_id, pid)
        finish_commit(datastore, record, path)
        report.rolled_forward.append(run_id)
        # its final stats were staged and renamed above; a RUNNING file is stale
        if record.get("stats_path") and abort_stats_file(
            Path(record["stats_path"]),
            f"the training process (pid {pid}) died while committing; its results were "
            "committed at recovery but its final stats were not written",
            owner=process,
        ):
            report.stats_aborted.append(record["stats_path"])
        return
    reason = f"the training process (pid {pid}) died before the run committed"
    for entry in record.get("files", []):
        Path(entry["staged"]).unlink(missing_ok=True)
    done = record | {"state": str(RunState.ABORTED), "reason": reason, "finished": now_iso()}
    _write(path, done)
    report.aborted.append(run_id)
    logger.warning("run %s aborted at recovery: %s", run_id, reason)
    if record.get("stats_path") and abort_stats_file(
        Path(record["stats_path"]), reason, owner=process
    ):
        report.stats_aborted.append(record["stats_path"])
