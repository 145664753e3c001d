"""MONAI Label's LocalDatastore with label versions, provenance and validation.

Every label stays a MONAI Label tag with its info in ``datastore_v2.json``, so OHIF,
Slicer and the stock endpoints keep working. On top of that:

- a label saved under a tag that already holds one first archives the old label under
  ``<tag>-vNNN``; machine code writes only fresh ``<method>-vNNN`` tags;
- every version carries :class:`~emlabel.labels.Provenance` under ``info["emlabel"]``;
- uploaded labels are validated against their image and the app's label map;
- files and the JSON index are written atomically (temp file + rename), file first: a
  crash can leave at most an orphan version tag without provenance, which is ignored;
- a trainer writes through a method run (:meth:`VersionedDatastore.begin_run`,
  :mod:`emlabel.monailabel.runs`): its versions stay ``pending`` (stored, never used nor
  listed) until the run commits its models, versions and image info as one unit.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

from filelock import FileLock
from monailabel.datastore.local import (
    DataModel,
    ImageLabelModel,
    LocalDatastore,
    LocalDatastoreModel,
)

from emlabel.atomic import atomic_copy, atomic_write_json, atomic_write_with
from emlabel.data.label_values import to_class_indices
from emlabel.data.validation import (
    LABEL_SUFFIXES,
    PICTURE_SUFFIXES,
    check_image_id,
    validate_label_file,
)
from emlabel.dicomweb.intake import SegProblem
from emlabel.distributed import world
from emlabel.errors import ConflictError, EMLabelError, InvalidRequestError, NotFoundError
from emlabel.labels import (
    LabelKind,
    LabelVersion,
    Provenance,
    annotator_versions,
    archive_tag,
    best_version,
    machine_tag,
)
from emlabel.labels.provenance import INFO_KEY, now_iso
from emlabel.labels.versions import FINAL_TAG, default_kind, is_valid_client_tag, is_version_tag
from emlabel.monailabel.http import http_errors
from emlabel.monailabel.runs import (
    RUNS_DIR_NAME,
    FollowerRun,
    MethodRun,
    RecoveryReport,
    recover_runs,
)
from emlabel.settings import AppSettings

logger = logging.getLogger(__name__)

TMP_DIR_NAME = ".emlabel-tmp"
DELETED_DIR_NAME = ".emlabel-deleted"


IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", *PICTURE_SUFFIXES)
"""Image files the datastore serves: volumes and 2D pictures."""


class VersionedDatastore(LocalDatastore):
    """LocalDatastore that keeps every label version and refuses bad labels."""

    def __init__(
        self,
        studies: str,
        *,
        settings: AppSettings,
        extensions: tuple[str, ...] = tuple(f"*{suffix}" for suffix in IMAGE_SUFFIXES),
        auto_reload: bool = False,
        read_only: bool = False,
    ) -> None:
        self._settings = settings
        self.studies_path = Path(studies)
        """The studies folder (the one MONAI Label keeps in a private attribute)."""
        self._tmp_dir = Path(studies) / TMP_DIR_NAME
        super().__init__(
            studies, extensions=extensions, auto_reload=auto_reload, read_only=read_only
        )

    # ------------------------------------------------------------------ reads

    @property
    def settings(self) -> AppSettings:
        """The app settings labels are validated and read with."""
        return self._settings

    def require_image(self, image_id: str) -> str:
        """The image's file path; 400 for path-like ids, 404 for unknown ones."""
        check_image_id(image_id)
        self._init_from_datastore_file()
        if image_id not in self._datastore.objects:
            raise NotFoundError(f"image '{image_id}' is not in the studies folder")
        return LocalDatastore.get_image_uri(self, image_id)

    def versions(self, image_id: str) -> list[LabelVersion]:
        """Every label version of an image, oldest first (orphaned writes left out)."""
        self._init_from_datastore_file()
        return self._versions_loaded(image_id)

    def _versions_loaded(
        self, image_id: str, *, include_pending: bool = False
    ) -> list[LabelVersion]:
        """Versions in the loaded index; pending ones (of an uncommitted run) left out."""
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            return []
        found = []
        for tag, model in obj.labels.items():
            provenance = Provenance.from_info(model.info)
            if provenance is None:
                if is_version_tag(tag):
                    logger.warning("ignoring %s/%s: version tag without provenance", tag, image_id)
                    continue
                provenance = Provenance(kind=default_kind(tag), source="unknown", version=0)
            if provenance.pending and not include_pending:
                continue
            found.append(LabelVersion(image_id=image_id, tag=tag, provenance=provenance))
        return sorted(found, key=lambda v: v.version)

    def offer_for_review(self, image_id: str, tag: str) -> dict[str, Any] | None:
        """Make the label version under review openable in a viewer (DICOMweb mode: a SEG on
        the server); nothing to do for a studies folder, whose labels a viewer loads by tag."""
        return None

    def intake_problems(self) -> list[SegProblem]:
        """Labels another tool stored that were not taken in, and why (DICOMweb mode). None
        for a studies folder: its labels arrive through the validated routes only."""
        return []

    def image_states(self) -> dict[str, tuple[dict[str, Any], list[LabelVersion]]]:
        """Every image's info and label versions from one read of the index (a scan over all
        images by :meth:`get_image_info` and :meth:`versions` reads it twice per image)."""
        self._init_from_datastore_file()
        return {
            image_id: (dict(obj.image.info), self._versions_loaded(image_id))
            for image_id, obj in self._datastore.objects.items()
        }

    def best_label(self, image_id: str, *, include_pseudo: bool = False) -> LabelVersion | None:
        """The label a trainer should learn from (see :mod:`emlabel.labels.resolver`)."""
        return best_version(self.versions(image_id), include_pseudo=include_pseudo)

    def annotator_labels(self, image_id: str) -> dict[str, LabelVersion]:
        """User -> that user's latest human or imported label of the image (one per user,
        older ones kept as versions; :func:`~emlabel.labels.annotator_versions`)."""
        return annotator_versions(self.versions(image_id))

    def training_items(self, *, include_pseudo: bool = False) -> list[dict[str, Any]]:
        """One ``{image, label, tag, kind, version}`` per image that has a usable label."""
        items = []
        for image_id in sorted(self.list_images()):
            best = self.best_label(image_id, include_pseudo=include_pseudo)
            if best is None:
                continue
            items.append(
                {
                    "id": image_id,
                    "image": LocalDatastore.get_image_uri(self, image_id),
                    "label": self.get_label_uri(image_id, best.tag),
                    "tag": best.tag,
                    "kind": str(best.kind),
                    "version": best.version,
                }
            )
        return items

    def _next_version_loaded(self, image_id: str) -> int:
        """Version number for the next label stored for this image (index already loaded).

        Pending versions count: their numbers and tags stay taken even if their run aborted.
        """
        versions = self._versions_loaded(image_id, include_pending=True)
        return max((v.version for v in versions), default=0) + 1

    # ----------------------------------------------------------------- writes
    def store_label(
        self,
        image_id: str,
        label_file: str,
        tag: str,
        info: dict[str, Any] | None = None,
        *,
        user: str | None = None,
    ) -> LabelVersion:
        """Validate and store a label from a client (human ``final`` or an import)."""
        self.check_label_file(image_id, label_file, tag)
        kind = LabelKind.HUMAN if tag == FINAL_TAG else LabelKind.IMPORTED
        provenance = Provenance(
            kind=kind,
            source="human" if kind == LabelKind.HUMAN else "import",
            version=0,  # assigned under the lock in _store
            parent=None,
            user=user,
            reason="saved by an annotator" if kind == LabelKind.HUMAN else f"imported as '{tag}'",
        )
        client_info = {k: v for k, v in (info or {}).items() if k != INFO_KEY}
        client_info.update(self._publish_label(image_id, label_file, tag))
        return self._store(image_id, label_file, tag, provenance, client_info)

    def _publish_label(self, image_id: str, label_file: str, tag: str) -> dict[str, Any]:
        """Hook run after validation, before storing: send the label elsewhere too.

        Returns label info to keep with the version (the DICOMweb datastore stores a final
        as DICOM-SEG on the server and returns its UIDs). Nothing by default.
        """
        return {}

    def check_label_file(self, image_id: str, label_file: str, tag: str) -> None:
        """Raise the reason a client label cannot be stored under ``tag``; store nothing."""
        image_path = self.require_image(image_id)
        if not is_valid_client_tag(tag):
            raise InvalidRequestError(
                f"label tag {tag!r} is not allowed: use letters, digits and '_' "
                "(tags like 'name-v001' are reserved for EMLabel's versions)"
            )
        validate_label_file(
            label_file,
            image_path,
            num_classes=self._settings.num_classes,
            affine_tolerance=self._settings.affine_tolerance,
            read_values=functools.partial(to_class_indices, settings=self._settings),
        )

    def add_version(self, image_id: str, label_file: str, provenance: Provenance) -> LabelVersion:
        """Store a machine-made label as a new version under a fresh tag."""
        self.require_image(image_id)
        return self._store(image_id, label_file, None, provenance, {})

    def _store(
        self,
        image_id: str,
        label_file: str,
        tag: str | None,
        provenance: Provenance,
        client_info: dict[str, Any],
    ) -> LabelVersion:
        """Write one version; ``tag=None`` means a fresh machine tag."""
        _, ext = self._to_id(os.path.basename(label_file))
        ext = ext if ext in LABEL_SUFFIXES else ".nii.gz"
        with FileLock(self._lock_file):
            self._reload_unlocked()
            obj = self._datastore.objects[image_id]
            if tag is None:
                version = self._next_version_loaded(image_id)
                tag = machine_tag(provenance.source, version)
            else:
                old = obj.labels.get(tag)
                if old is not None:
                    self._archive(image_id, tag, old)
                version = self._next_version_loaded(image_id)
            provenance = provenance.replace(version=version)
            dest = Path(self._datastore.label_path(tag)) / self._filename(image_id, ext)
            atomic_write_with(lambda tmp: _copy(label_file, tmp), dest, tmp_dir=self._tmp_dir)
            info = dict(client_info)
            info["ts"] = int(os.path.getmtime(dest))
            info["name"] = dest.name
            info[INFO_KEY] = provenance.to_info()
            obj.labels[tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)
        logger.info(
            "stored %s/%s as version %d (%s)", tag, image_id, provenance.version, provenance.kind
        )
        return LabelVersion(image_id=image_id, tag=tag, provenance=provenance)

    def _archive(
        self, image_id: str, tag: str, old: DataModel, *, move: bool = False, **marks: Any
    ) -> str:
        """Keep the label currently under ``tag`` as ``<tag>-vNNN``; returns that tag.

        ``move`` renames the file (a delete) instead of copying it (a replacement);
        ``marks`` are extra provenance fields (the delete's who and when).
        """
        old_provenance = Provenance.from_info(old.info) or Provenance(
            kind=default_kind(tag), source="unknown", version=0
        )
        keep_tag = archive_tag(tag, old_provenance.version)
        src = Path(self._datastore.label_path(tag)) / self._filename(image_id, old.ext)
        dest = Path(self._datastore.label_path(keep_tag)) / self._filename(image_id, old.ext)
        if move:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
        else:
            atomic_copy(src, dest)
        info = dict(old.info)
        info[INFO_KEY] = old_provenance.replace(archived=True, **marks).to_info()
        info["name"] = dest.name
        self._datastore.objects[image_id].labels[keep_tag] = DataModel(info=info, ext=old.ext)
        self._update_datastore_file(lock=False)
        return keep_tag

    def _init_from_datastore_file(self, throw_exception: bool = False) -> None:
        with FileLock(self._lock_file):
            try:
                self._reload_unlocked()
            except ValueError as e:
                logger.error("failed to load %s: %s", self._datastore_config_path, e)
                if throw_exception:
                    raise

    def _reload_unlocked(self) -> None:
        """Reload the JSON index if another process changed it (caller holds the lock).

        Stock MONAI Label reloads under a fresh FileLock, which cannot nest; EMLabel reloads
        inside the lock it already holds so read-modify-write is one critical section.
        """
        path = self._datastore_config_path
        if not os.path.exists(path):
            return
        stat = os.stat(path)
        # (inode, size, mtime ns): a rename always brings a new inode, so two writes within
        # one mtime tick are still told apart (mtime alone missed about 1 in 200).
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if stamp != getattr(self, "_index_stamp", None):
            with open(path, encoding="utf-8") as fh:
                self._datastore = LocalDatastoreModel.model_validate_json(fh.read())
            self._datastore.base_path = str(self.studies_path)
            self._index_stamp, self._config_ts = stamp, stat.st_mtime

    def _add_non_existing_labels(self, tag: str) -> int:
        """Stock reconcile adds label files found on disk; never for EMLabel's version tags.

        A ``<name>-vNNN`` file missing from the index is a write that crashed before its
        index entry (or a pending run's file): it stays on disk, ignored, never served.
        """
        if is_version_tag(tag):
            return 0
        return super()._add_non_existing_labels(tag)

    def _update_datastore_file(self, lock: bool = True) -> None:
        """Write ``datastore_v2.json`` atomically (stock MONAI Label truncates in place)."""

        def write() -> None:
            self._ignore_event_config = True
            data = self._datastore.model_dump_json(exclude={"base_path"}, indent=2)
            atomic_write_with(
                lambda tmp: tmp.write_text(data, encoding="utf-8"),
                self._datastore_config_path,
                tmp_dir=self._tmp_dir,
            )
            stat = os.stat(self._datastore_config_path)
            self._index_stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            self._config_ts = stat.st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()

    # ------------------------------------------------------- statistics + clicks
    def store_statistic(
        self, image_id: str, raw: dict[str, Any], *, source: str, user: str | None = None
    ) -> dict[str, Any]:
        """Validate and add a statistic and/or clicks for one structure (history kept)."""
        from emlabel.data import statistics
        from emlabel.data.validation import image_shape

        path = self.require_image(image_id)
        entry = statistics.parse_entry(
            raw,
            image_id=image_id,
            label_map=self._settings.label_map,
            image_shape=image_shape(path),
        )
        return self._merge_statistic(entry, source=source, user=user)

    def _merge_statistic(self, entry: Any, *, source: str, user: str | None) -> dict[str, Any]:
        from emlabel.data import statistics

        with FileLock(self._lock_file):
            self._reload_unlocked()
            info = self._datastore.objects[entry.image_id].image.info
            info[statistics.INFO_KEY] = statistics.merged_info(
                info.get(statistics.INFO_KEY), entry, source=source, user=user
            )
            self._update_datastore_file(lock=False)
            return info[statistics.INFO_KEY]["structures"][entry.structure]

    def import_statistics(self, rows: list[dict[str, Any]], *, user: str | None = None) -> int:
        """CSV rows ``image,structure,statistic,value``: all valid, or nothing stored."""
        from emlabel.data import statistics
        from emlabel.data.validation import image_shape

        shapes = {i: image_shape(self.require_image(i)) for i in self.list_images()}
        entries = statistics.validate_rows(
            rows, image_shapes=shapes, label_map=self._settings.label_map
        )
        for entry in entries:
            self._merge_statistic(entry, source="import", user=user)
        return len(entries)

    # ------------------------------------ stock reads, always of the current index
    # Trainers run in another process and write the index there; every read here first
    # reloads it if it changed (one stat call), so the server never serves a stale view.
    def json(self) -> dict[str, Any]:
        self._init_from_datastore_file()
        return _without_pending(super().json())

    def status(self) -> dict[str, Any]:
        self._init_from_datastore_file()
        return self._status_without_pending(super().status())

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        self._init_from_datastore_file()
        return super().datalist(full_path)

    def list_images(self) -> list[str]:
        self._init_from_datastore_file()
        return super().list_images()

    def get_labeled_images(self, label_tag: str | None = None, labels: Any = None) -> list[str]:
        self._init_from_datastore_file()
        return super().get_labeled_images(label_tag, labels)

    def get_unlabeled_images(self, label_tag: str | None = None, labels: Any = None) -> list[str]:
        self._init_from_datastore_file()
        return super().get_unlabeled_images(label_tag, labels)

    def get_label_uri(self, label_id: str, label_tag: str) -> str:
        self._init_from_datastore_file()
        if label_tag in self._pending_tags_loaded(label_id):
            return ""  # not visible before its run committed
        return super().get_label_uri(label_id, label_tag)

    # ======================================================================
    # Method runs (emlabel.monailabel.runs): a trainer's model files, label versions and
    # image info become visible together at commit; recovery after a crash.
    # ======================================================================
    @property
    def runs_dir(self) -> Path:
        """``<studies>/.emlabel-runs``: one journal per method run."""
        return self.studies_path / RUNS_DIR_NAME

    def begin_run(self, method: str, *, stats_path: Path | None = None) -> MethodRun:
        """Start a run of ``method`` (use as a context manager: commit on success); under
        torchrun, ranks other than 0 get a run that writes nothing (:class:`FollowerRun`)."""
        here = world()
        if not here.main:
            return FollowerRun(datastore=self, method=method, rank=here.rank)
        return MethodRun.begin(self, method, stats_path=stats_path)

    def recover_runs(
        self, *, model_dirs: tuple[str | os.PathLike[str], ...] = ()
    ) -> RecoveryReport:
        """Abort / roll forward the runs of dead processes; remove dead writers' temp files.

        ``model_dirs``: folders whose ``*.train_stats.json`` and temp files are checked too.
        """
        labels_dir = Path(self._datastore.label_path(None))
        temp_dirs = [self._tmp_dir, self.studies_path]
        if labels_dir.is_dir():
            temp_dirs += [p for p in labels_dir.iterdir() if p.is_dir()]
        report = recover_runs(self, model_dirs=model_dirs, temp_dirs=temp_dirs)
        if report.aborted or report.rolled_forward or report.stats_aborted:
            logger.warning(
                "recovered runs: aborted %s, rolled forward %s, stats marked aborted %s",
                report.aborted, report.rolled_forward, report.stats_aborted,
            )  # fmt: skip
        return report

    def _store_pending_version(
        self, image_id: str, label_file: str, provenance: Provenance
    ) -> LabelVersion:
        """A run's machine label: stored under a fresh tag, ``pending`` until the commit."""
        self.require_image(image_id)
        return self._store(image_id, label_file, None, provenance, {})

    def _commit_run_index(self, run_id: str, updates: list[tuple[str, dict[str, Any]]]) -> int:
        """One index rewrite: clear ``pending`` on the run's versions, apply its image info."""
        cleared = 0
        with FileLock(self._lock_file):
            self._reload_unlocked()
            for obj in self._datastore.objects.values():
                for model in obj.labels.values():
                    data = model.info.get(INFO_KEY)
                    if isinstance(data, dict) and data.get("run") == run_id and data.get("pending"):
                        model.info[INFO_KEY] = data | {"pending": False}
                        cleared += 1
            for image_id, info in updates:
                obj = self._datastore.objects.get(image_id)
                if obj is None:
                    logger.warning(
                        "run %s: image %s is gone; its info is dropped", run_id, image_id
                    )
                    continue
                obj.image.info.update(info)
            self._update_datastore_file(lock=False)
        return cleared

    def _pending_tags_loaded(self, image_id: str) -> set[str]:
        obj = self._datastore.objects.get(image_id)
        if obj is None:
            return set()
        return {tag for tag, model in obj.labels.items() if _is_pending(model.info)}

    def get_labels_by_image_id(self, image_id: str) -> dict[str, str]:
        self._init_from_datastore_file()
        pending = self._pending_tags_loaded(image_id)
        labels = super().get_labels_by_image_id(image_id)
        return {tag: i for tag, i in labels.items() if tag not in pending}

    def _status_without_pending(self, status: dict[str, Any]) -> dict[str, Any]:
        tags: dict[str, int] = {}
        for obj in self._datastore.objects.values():
            for tag, model in obj.labels.items():
                if not _is_pending(model.info):
                    tags[tag] = tags.get(tag, 0) + 1
        return status | {"label_tags": tags}

    # ------------------------------------------- stock API, with clear errors
    @http_errors
    def save_label(
        self, image_id: str, label_filename: str, label_tag: str, label_info: dict[str, Any]
    ) -> str:
        """``PUT /datastore/label``: validated, versioned store (4xx on bad input)."""
        info = dict(label_info or {})
        user = info.pop("user", None)
        self.store_label(image_id, label_filename, label_tag, info, user=user)
        return image_id

    @http_errors
    def get_image_info(self, image_id: str) -> dict[str, Any]:
        self.require_image(image_id)
        return super().get_image_info(image_id)

    @http_errors
    def update_image_info(self, image_id: str, info: dict[str, Any]) -> None:
        """Merge ``info`` into the image info (read-modify-write under one lock)."""
        self.require_image(image_id)
        with FileLock(self._lock_file):
            self._reload_unlocked()
            self._datastore.objects[image_id].image.info.update(info)
            self._update_datastore_file(lock=False)

    @http_errors
    def get_label_info(self, label_id: str, label_tag: str) -> dict[str, Any]:
        self.require_image(label_id)
        if not self._datastore.label(label_id, label_tag):
            raise NotFoundError(f"image '{label_id}' has no label tagged '{label_tag}'")
        return super().get_label_info(label_id, label_tag)

    @http_errors
    def update_label_info(self, label_id: str, label_tag: str, info: dict[str, Any]) -> None:
        self.require_image(label_id)
        if not self._datastore.label(label_id, label_tag):
            raise NotFoundError(f"image '{label_id}' has no label tagged '{label_tag}'")
        if INFO_KEY in info:
            raise InvalidRequestError(f"label info key '{INFO_KEY}' is written by EMLabel only")
        with FileLock(self._lock_file):
            self._reload_unlocked()
            self._datastore.objects[label_id].labels[label_tag].info.update(info)
            self._update_datastore_file(lock=False)

    # --------------------------------------------- deletes archive, never destroy
    @http_errors
    def remove_label(self, label_id: str, label_tag: str, *, user: str | None = None) -> None:
        """``DELETE /datastore/label``: keep the label as a version marked deleted.

        A client tag (``final``, ``noisy``) moves to ``<tag>-vNNN`` (archived + deleted, so
        the image loses that label); a version tag is marked deleted where it is. The
        resolver never trains on a deleted version; its file and provenance stay.
        """
        self.require_image(label_id)
        with FileLock(self._lock_file):
            self._reload_unlocked()
            obj = self._datastore.objects[label_id]
            model = obj.labels.get(label_tag)
            if model is None:
                raise NotFoundError(f"image '{label_id}' has no label tagged '{label_tag}'")
            marks = {"deleted": True, "deleted_by": user, "deleted_at": now_iso()}
            if is_version_tag(label_tag):
                provenance = Provenance.from_info(model.info) or Provenance(
                    kind=default_kind(label_tag), source="unknown", version=0
                )
                model.info[INFO_KEY] = provenance.replace(**marks).to_info()
                self._update_datastore_file(lock=False)
                kept = label_tag
            else:
                kept = self._archive(label_id, label_tag, model, move=True, **marks)
                del obj.labels[label_tag]
                self._update_datastore_file(lock=False)
        logger.info("label %s/%s deleted by %s: kept as %s", label_tag, label_id, user, kept)

    @http_errors
    def remove_image(self, image_id: str, *, user: str | None = None) -> None:
        """``DELETE /datastore/image``: refused while the image has any label version.

        An image without labels leaves the datastore but its file and index entry are kept
        in ``.emlabel-deleted/`` with who and when (nothing is lost).
        """
        self.require_image(image_id)
        with FileLock(self._lock_file):
            self._reload_unlocked()
            obj = self._datastore.objects[image_id]
            if obj.labels:
                raise ConflictError(
                    f"image '{image_id}' has {len(obj.labels)} label version(s) "
                    f"({', '.join(sorted(obj.labels))}); images with labels are never deleted"
                )
            src = Path(self._datastore.image_path()) / self._filename(image_id, obj.image.ext)
            stamp = now_iso().replace(":", "")
            keep = self.studies_path / DELETED_DIR_NAME / f"{image_id}-{stamp}"
            keep.mkdir(parents=True, exist_ok=True)
            record = {
                "image": image_id,
                "deleted_by": user,
                "deleted_at": now_iso(),
                "entry": obj.model_dump(),
            }
            atomic_write_json(record, keep / "record.json")
            os.replace(src, keep / src.name)
            del self._datastore.objects[image_id]
            self._update_datastore_file(lock=False)
        logger.info("image %s deleted by %s: kept in %s", image_id, user, keep)

    @http_errors
    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        """``PUT /datastore/image``: only readable images, never over an existing one."""
        from emlabel.data.validation import read_array

        _, ext = self._to_id(os.path.basename(image_filename))
        image_id = image_id or Path(image_filename).name.removesuffix(ext)
        check_image_id(image_id)
        if ext not in IMAGE_SUFFIXES:
            raise InvalidRequestError(f"image file type {ext or '(none)'} is not supported")
        try:
            read_array(image_filename)
        except EMLabelError as e:
            raise InvalidRequestError(f"image not stored: {e.message}") from e
        with FileLock(self._lock_file):
            self._reload_unlocked()
            if image_id in self._datastore.objects:
                raise InvalidRequestError(f"image '{image_id}' already exists; nothing replaced")
            dest = Path(self._datastore.image_path()) / self._filename(image_id, ext)
            atomic_write_with(lambda tmp: _copy(image_filename, tmp), dest, tmp_dir=self._tmp_dir)
            info = dict(image_info or {}) | {"ts": int(os.path.getmtime(dest)), "name": dest.name}
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext))
            self._update_datastore_file(lock=False)
        return image_id


def _is_pending(info: dict[str, Any]) -> bool:
    data = info.get(INFO_KEY)
    return isinstance(data, dict) and bool(data.get("pending"))


def _without_pending(data: dict[str, Any]) -> dict[str, Any]:
    """A ``json()`` dump without the labels of uncommitted runs."""
    for obj in data.get("objects", {}).values():
        labels = obj.get("labels") or {}
        for tag in [t for t, label in labels.items() if _is_pending(label.get("info") or {})]:
            del labels[tag]
    return data


def _copy(src: str, dest: Path) -> None:
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
