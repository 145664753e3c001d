"""MONAI Label's DICOMweb datastore with EMLabel's label versions, provenance and validation.

With ``--studies http://host/dicom-web`` images are series on the DICOMweb server (image id =
SeriesInstanceUID). As in MONAI Label's ``DICOMWebDatastore``, a series is downloaded into a
local cache on first use and converted to NIfTI, and a ``final`` label is stored on the
server as DICOM-SEG. Unlike it:

- every label version stays in the cache with its provenance (``VersionedDatastore``): a
  new final archives the old one, machine labels get fresh ``<method>-vNNN`` tags, and the
  version records the UID of the SEG it was stored as;
- a label is validated against its image before anything is sent to the server (4xx, and
  neither a SEG nor a version is stored);
- SEGs on the server that the cache does not hold (another viewer, another cache) become
  ``final`` versions when training data is read: segments are mapped to label values by
  name and resampled onto the image grid. Stock MONAI Label instead deletes cached finals
  that have no SEG and overwrites the cached final;
- a label saved through EMLabel counts as labeled at once (stock waits for its listing
  cache, ``MONAI_LABEL_DICOMWEB_CACHE_EXPIRY``, to expire).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dicomweb_client import DICOMwebClient
from filelock import FileLock
from monailabel.config import settings as ml_settings
from monailabel.datastore.dicom import DICOMwebClientX, DICOMWebDatastore
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore
from monailabel.utils.others.generic import md5_digest
from pydicom import dcmread
from pydicom.dataset import Dataset

from emlabel.atomic import atomic_copy
from emlabel.data.label_values import to_class_indices
from emlabel.data.validation import check_image_id, validate_label_file
from emlabel.dicomweb.dcmqi import ensure_dcmqi
from emlabel.dicomweb.intake import PROBLEMS_FILE, SegProblem, load_problems, record_problem
from emlabel.dicomweb.seg import REVIEW_CREATOR, review_description, seg_to_label
from emlabel.dicomweb.upload import write_seg
from emlabel.errors import (
    EMLabelError,
    InvalidLabelError,
    InvalidRequestError,
    NotFoundError,
    UpstreamError,
)
from emlabel.labels import LabelKind, LabelVersion, Provenance
from emlabel.labels.provenance import now_iso
from emlabel.labels.versions import FINAL_TAG
from emlabel.monailabel.datastore import TMP_DIR_NAME, VersionedDatastore
from emlabel.settings import AppSettings

logger = logging.getLogger(__name__)

T = TypeVar("T")
SYNC_SOURCE = "dicomweb"
REVIEW_SEG_INFO_KEY = "emlabel.review_seg"
"""Image info: the SEG of the label under review on the server (:meth:`offer_for_review`)."""


@dataclass(frozen=True, kw_only=True)
class SegRef:
    """A DICOM-SEG series on the server and the image series it labels."""

    series_uid: str
    study_uid: str
    image_id: str
    created: str
    """SeriesDate + SeriesTime, to store SEGs of one image oldest first."""
    machine: bool = False
    """EMLabel's own SEG of a machine label sent to review (:data:`REVIEW_CREATOR`): never
    taken in as a label."""


class VersionedDICOMWebDatastore(VersionedDatastore, DICOMWebDatastore):
    """DICOMweb images, versioned labels in the local cache, finals also as DICOM-SEG."""

    def __init__(
        self,
        client: DICOMwebClient,
        *,
        settings: AppSettings,
        cache_path: str | os.PathLike[str],
        search_filter: dict[str, Any] | None = None,
        fetch_by_frame: bool = False,
        listing_ttl: float = 10.0,
    ) -> None:
        self._settings = settings
        datastore_path = Path(cache_path) / md5_digest(client.base_url)
        self.studies_path = datastore_path
        self._tmp_dir = datastore_path / TMP_DIR_NAME
        self._sync_lock = str(datastore_path / ".emlabel-sync.lock")
        self._listing_ttl = float(listing_ttl)
        self._listings: dict[str, tuple[float, Any]] = {}
        self._seg_refs: dict[str, SegRef] = {}
        self._bad_segs: dict[str, str] = {}
        """SEGs that failed for a passing reason (download), not retried in this process."""
        self._problems_path = datastore_path / PROBLEMS_FILE
        """SEGs refused for their content (:mod:`emlabel.dicomweb.intake`), never retried."""
        self.on_final_taken_in: Callable[[str], Any] | None = None
        """Called with the image id after a SEG became its final (the app records the review
        of a routed image, as for a final saved over REST)."""
        # MONAI Label's constructor; it builds the LocalDatastore on the cache folder.
        DICOMWebDatastore.__init__(
            self,
            client=client,
            search_filter=dict(search_filter or {}),
            cache_path=str(cache_path),
            fetch_by_frame=fetch_by_frame,
            convert_to_nifti=True,
        )

    @property
    def base_url(self) -> str:
        return self._client.base_url

    # ------------------------------------------------------------ server reads
    def _cached(self, key: str, load: Callable[[], T]) -> T:
        hit = self._listings.get(key)
        if hit is not None and time.monotonic() - hit[0] < self._listing_ttl:
            return hit[1]
        value = load()
        self._listings[key] = (time.monotonic(), value)
        return value

    def _search_series(self, filters: dict[str, Any]) -> list[Dataset]:
        try:
            found = self._client.search_for_series(search_filters=filters, get_remaining=True)
        except Exception as e:  # requests/HTTP errors of any kind: the server is the problem
            raise UpstreamError(f"DICOMweb server {self.base_url} did not answer: {e}") from e
        return [Dataset.from_json(ds) for ds in found]

    def list_images(self) -> list[str]:
        """SeriesInstanceUIDs matching the search filter (DICOM-SEG series excluded)."""
        self._init_from_datastore_file()

        def load() -> list[str]:
            series = self._search_series(self._search_filter)
            return [str(s.SeriesInstanceUID) for s in series if s.get("Modality") != "SEG"]

        return list(self._cached("images", load))

    def _series_on_server(self, image_id: str) -> bool:
        found = self._search_series({**self._search_filter, "SeriesInstanceUID": image_id})
        return any(s.get("Modality") != "SEG" for s in found)

    def remote_segs(self) -> list[SegRef]:
        """Every DICOM-SEG series on the server with the image series it references."""

        def load() -> list[SegRef]:
            refs = []
            for ds in self._search_series({"Modality": "SEG"}):
                uid = str(ds.SeriesInstanceUID)
                ref = self._seg_refs.get(uid) or self._seg_ref(ds)
                if ref is not None:
                    self._seg_refs[uid] = ref
                    refs.append(ref)
            return refs

        return list(self._cached("segs", load))

    def _seg_ref(self, ds: Dataset) -> SegRef | None:
        uid, study = str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID)
        try:
            meta = Dataset.from_json(self._client.retrieve_series_metadata(study, uid)[0])
        except Exception as e:  # one unreadable SEG must not hide the others
            logger.warning("DICOM-SEG %s: no metadata (%s); ignored", uid, e)
            return None
        referenced = meta.get("ReferencedSeriesSequence")
        if not referenced:
            logger.warning("DICOM-SEG %s references no series; ignored", uid)
            return None
        return SegRef(
            series_uid=uid,
            study_uid=study,
            image_id=str(referenced[0].SeriesInstanceUID),
            created=f"{ds.get('SeriesDate', '')}{ds.get('SeriesTime', '')}",
            machine=str(meta.get("ContentCreatorName", "")) == REVIEW_CREATOR,
        )

    # ------------------------------------------------------------------ images
    def require_image(self, image_id: str) -> str:
        """The cached NIfTI of a series on the server (downloaded on first use); 404 if none."""
        check_image_id(image_id)
        if image_id not in self.list_images() and not self._series_on_server(image_id):
            raise NotFoundError(
                f"image '{image_id}' is not a series on the DICOMweb server {self.base_url} "
                "(image ids are SeriesInstanceUIDs)"
            )
        return self.get_image_uri(image_id)

    def series_dir(self, image_id: str) -> Path:
        """The series' DICOM files in the cache (downloaded once; SEGs reference them)."""
        check_image_id(image_id)
        folder = Path(self._datastore.image_path()) / image_id
        if folder.is_dir() and any(folder.iterdir()):
            return folder
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix="series-", dir=self._tmp_dir))
        try:
            from monailabel.datastore.utils.dicom import dicom_web_download_series

            dicom_web_download_series(
                None, image_id, str(staging), self._client, self._fetch_by_frame
            )
            if not any(staging.iterdir()):
                raise NotFoundError(f"series '{image_id}' has no instances on {self.base_url}")
            try:
                staging.rename(folder)
            except OSError:  # another process cached it meanwhile
                if not (folder.is_dir() and any(folder.iterdir())):
                    raise
        except EMLabelError:
            raise
        except Exception as e:
            raise UpstreamError(f"could not download series '{image_id}': {e}") from e
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return folder

    def get_image_uri(self, image_id: str) -> str:
        check_image_id(image_id)
        self._init_from_datastore_file()
        dest = Path(self._datastore.image_path()) / f"{image_id}.nii.gz"
        if image_id in self._datastore.objects and dest.is_file():
            return os.path.realpath(dest)
        from monailabel.datastore.utils.convert import dicom_to_nifti

        series = self.series_dir(image_id)
        try:
            converted = dicom_to_nifti(str(series))
        except Exception as e:
            raise UpstreamError(f"series '{image_id}' could not be read as a volume: {e}") from e
        info = self._dicom_info(image_id)
        try:
            with FileLock(self._lock_file):
                self._reload_unlocked()
                atomic_copy(converted, dest)
                info |= {"ts": int(os.path.getmtime(dest)), "name": dest.name}
                obj = self._datastore.objects.get(image_id)
                if obj is None:
                    self._datastore.objects[image_id] = ImageLabelModel(
                        image=DataModel(info=info, ext=".nii.gz")
                    )
                else:
                    obj.image = DataModel(info=obj.image.info | info, ext=".nii.gz")
                self._update_datastore_file(lock=False)
        finally:
            Path(converted).unlink(missing_ok=True)
        return os.path.realpath(dest)

    def add_image(self, image_id: str, image_filename: str, image_info: dict[str, Any]) -> str:
        raise InvalidRequestError(
            "in DICOMweb mode images live on the DICOMweb server: store the DICOM series there "
            f"({self.base_url}, e.g. STOW-RS or Orthanc's POST /instances)"
        )

    # ------------------------------------------------------------------ labels
    def get_label_uri(self, label_id: str, label_tag: str, image_id: str = "") -> str:
        """The cached label version (never a download: every version is in the cache)."""
        self._init_from_datastore_file()
        return LocalDatastore.get_label_uri(self, label_id, label_tag)

    def get_labeled_images(self, label_tag: str | None = None, labels: Any = None) -> list[str]:
        """Images with a final label: cached finals plus images a SEG on the server labels."""
        self._init_from_datastore_file()
        labeled = set(LocalDatastore.get_labeled_images(self, label_tag, labels))
        if label_tag in (None, FINAL_TAG):
            labeled |= {ref.image_id for ref in self.remote_segs()}
        images = self.list_images()
        return [i for i in images if i in labeled]

    def get_unlabeled_images(self, label_tag: str | None = None, labels: Any = None) -> list[str]:
        labeled = set(self.get_labeled_images(label_tag, labels))
        return [i for i in self.list_images() if i not in labeled]

    def _publish_label(self, image_id: str, label_file: str, tag: str) -> dict[str, Any]:
        """A (validated) final goes to the server as DICOM-SEG first; its UIDs are kept."""
        if tag != FINAL_TAG:
            return {}
        series = self.series_dir(image_id)
        try:
            seg = write_seg(series, Path(label_file), self._settings.labels)
        except EMLabelError:
            raise
        except Exception as e:
            raise UpstreamError(f"could not convert the label to DICOM-SEG: {e}") from e
        if seg is None:
            return {"dicom_seg": "none: an empty label has no segment to store as DICOM-SEG"}
        ref = self._store_seg(seg, image_id)
        logger.info("final label of %s stored as DICOM-SEG %s", image_id, ref.series_uid)
        return {
            "SeriesInstanceUID": ref.series_uid,
            "StudyInstanceUID": ref.study_uid,
            "Modality": "SEG",
            "dicomweb": self.base_url,
        }

    def _store_seg(self, seg: Path, image_id: str, *, machine: bool = False) -> SegRef:
        """Send a SEG file to the server (STOW-RS; the file is removed) and remember it."""
        try:
            dataset = dcmread(str(seg))
            try:
                response = self._client.store_instances([dataset])
            except Exception as e:
                raise UpstreamError(f"DICOMweb server refused the DICOM-SEG: {e}") from e
            if response.get("FailedSOPSequence"):
                raise UpstreamError(f"DICOMweb server refused the DICOM-SEG: {response}")
        finally:
            seg.unlink(missing_ok=True)
        ref = SegRef(
            series_uid=str(dataset.SeriesInstanceUID),
            study_uid=str(dataset.StudyInstanceUID),
            image_id=image_id,
            created=f"{dataset.get('SeriesDate', '')}{dataset.get('SeriesTime', '')}",
            machine=machine,
        )
        self._seg_refs[ref.series_uid] = ref
        self._listings.pop("segs", None)
        return ref

    def offer_for_review(self, image_id: str, tag: str) -> dict[str, Any] | None:
        """Put the label version ``tag`` of an image sent to review on the server as a SEG
        (SeriesDescription ``EMLabel <tag> for review``, ContentCreatorName
        :data:`REVIEW_CREATOR`), so the annotator corrects it in the viewer instead of
        painting from nothing; once per version. None for an empty label."""
        info = self.get_image_info(image_id).get(REVIEW_SEG_INFO_KEY) or {}
        if info.get("tag") == tag and info.get("SeriesInstanceUID"):
            return info
        label = Path(self.get_label_uri(image_id, tag))
        try:
            seg = write_seg(self.series_dir(image_id), label, self._settings.labels,
                            description=review_description(tag), creator=REVIEW_CREATOR)  # fmt: skip
        except EMLabelError:
            raise
        except Exception as e:
            raise UpstreamError(f"could not convert label {tag} to DICOM-SEG: {e}") from e
        if seg is None:
            return None
        ref = self._store_seg(seg, image_id, machine=True)
        record = {"tag": tag, "SeriesInstanceUID": ref.series_uid,
                  "StudyInstanceUID": ref.study_uid, "SeriesDescription": review_description(tag),
                  "time": now_iso()}  # fmt: skip
        self.update_image_info(image_id, {REVIEW_SEG_INFO_KEY: record})
        logger.info("label %s of %s put on the server for review as DICOM-SEG %s",
                    tag, image_id, ref.series_uid)  # fmt: skip
        return record

    def _known_seg_uids(self) -> set[str]:
        return {
            str(model.info.get("SeriesInstanceUID"))
            for obj in self._datastore.objects.values()
            for model in obj.labels.values()
            if model.info.get("SeriesInstanceUID")
        }

    def sync_labels(self) -> list[LabelVersion]:
        """Store SEGs on the server that no cached version came from as ``final`` versions.

        SEGs of one image are stored oldest first, so the newest is the final and earlier
        ones are archived versions. A SEG that cannot be used is logged and skipped; one
        refused for its content (unknown segment name, nothing labeled, not on its image's
        grid) is also recorded for the review page (:meth:`intake_problems`).
        """
        images = set(self.list_images())
        stored = []
        with FileLock(self._sync_lock):
            self._init_from_datastore_file()
            known = self._known_seg_uids() | set(load_problems(self._problems_path))
            todo = [
                ref
                for ref in self.remote_segs()
                if ref.image_id in images
                and not ref.machine
                and ref.series_uid not in known
                and ref.series_uid not in self._bad_segs
            ]
            for ref in sorted(todo, key=lambda r: (r.created, r.series_uid)):
                try:
                    stored.append(self._import_seg(ref))
                except InvalidLabelError as e:
                    problem = SegProblem(seg_series_uid=ref.series_uid, image_id=ref.image_id,
                                         study_uid=ref.study_uid, reason=e.message)  # fmt: skip
                    record_problem(self._problems_path, problem)
                    logger.warning("DICOM-SEG %s not taken in: %s", ref.series_uid, e.message)
                    continue
                except EMLabelError as e:
                    self._bad_segs[ref.series_uid] = e.message
                    logger.warning("DICOM-SEG %s not used: %s", ref.series_uid, e.message)
                    continue
                if self.on_final_taken_in is not None:
                    self.on_final_taken_in(ref.image_id)
        return stored

    def intake_problems(self) -> list[SegProblem]:
        """The SEGs on the server that were not taken in, oldest first (after a sync)."""
        self.sync_labels()
        return sorted(load_problems(self._problems_path).values(), key=lambda p: p.time)

    def _import_seg(self, ref: SegRef) -> LabelVersion:
        from monailabel.datastore.utils.dicom import dicom_web_download_series

        image_path = self.require_image(ref.image_id)
        with tempfile.TemporaryDirectory(prefix="emlabel-seg-") as tmp:
            seg_dir = Path(tmp) / "seg"
            try:
                dicom_web_download_series(ref.study_uid, ref.series_uid, str(seg_dir), self._client)
            except Exception as e:
                raise UpstreamError(f"could not download DICOM-SEG {ref.series_uid}: {e}") from e
            files = sorted(seg_dir.glob("*.dcm"))
            if len(files) != 1:
                raise UpstreamError(f"DICOM-SEG series holds {len(files)} instances, not one")
            label = seg_to_label(
                files[0],
                image_path,
                Path(tmp) / "label.nii.gz",
                label_map=self._settings.stored_label_map,
            )
            validate_label_file(
                label,
                image_path,
                num_classes=self._settings.num_classes,
                affine_tolerance=self._settings.affine_tolerance,
                read_values=functools.partial(to_class_indices, settings=self._settings),
            )
            provenance = Provenance(
                kind=LabelKind.HUMAN,
                source=SYNC_SOURCE,
                version=0,  # assigned in _store
                reason=f"DICOM-SEG {ref.series_uid} found on the DICOMweb server",
            )
            info = {
                "SeriesInstanceUID": ref.series_uid,
                "StudyInstanceUID": ref.study_uid,
                "Modality": "SEG",
                "dicomweb": self.base_url,
            }
            return self._store(ref.image_id, str(label), FINAL_TAG, provenance, info)

    # ------------------------------------------------------------ training data
    def training_items(self, *, include_pseudo: bool = False) -> list[dict[str, Any]]:
        self.sync_labels()
        return super().training_items(include_pseudo=include_pseudo)

    def datalist(self, full_path: bool = True) -> list[dict[str, Any]]:
        """Stock datalist of cached finals, after taking in new SEGs (nothing deleted)."""
        self.sync_labels()
        self._init_from_datastore_file()
        return LocalDatastore.datalist(self, full_path)


def default_cache_path() -> str:
    """MONAI Label's DICOMweb cache folder (``MONAI_LABEL_DICOMWEB_CACHE_PATH`` or its default)."""
    configured = (ml_settings.MONAI_LABEL_DICOMWEB_CACHE_PATH or "").strip()
    return configured or str(Path.home() / ".cache" / "monailabel" / "dicom")


def dicomweb_datastore(url: str, *, settings: AppSettings) -> VersionedDICOMWebDatastore:
    """The datastore for ``--studies http(s)://...``, configured like MONAI Label's own."""
    ensure_dcmqi()
    session = None
    if ml_settings.MONAI_LABEL_DICOMWEB_USERNAME and ml_settings.MONAI_LABEL_DICOMWEB_PASSWORD:
        from dicomweb_client.session_utils import create_session_from_user_pass

        session = create_session_from_user_pass(
            ml_settings.MONAI_LABEL_DICOMWEB_USERNAME, ml_settings.MONAI_LABEL_DICOMWEB_PASSWORD
        )
    client = DICOMwebClientX(
        url=url,
        session=session,
        qido_url_prefix=ml_settings.MONAI_LABEL_QIDO_PREFIX,
        wado_url_prefix=ml_settings.MONAI_LABEL_WADO_PREFIX,
        stow_url_prefix=ml_settings.MONAI_LABEL_STOW_PREFIX,
    )
    return VersionedDICOMWebDatastore(
        client,
        settings=settings,
        cache_path=default_cache_path(),
        search_filter=ml_settings.MONAI_LABEL_DICOMWEB_SEARCH_FILTER,
        fetch_by_frame=ml_settings.MONAI_LABEL_DICOMWEB_FETCH_BY_FRAME,
        listing_ttl=ml_settings.MONAI_LABEL_DICOMWEB_CACHE_EXPIRY,
    )
