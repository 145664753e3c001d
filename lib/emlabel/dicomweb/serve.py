"""DICOMweb mode end to end: private Orthanc, studies uploaded, EMLabel on its DICOMweb URL.

Why: ``make serve-dicomweb`` and ``emlabel serve-dicomweb`` run this. Everything it keeps
lives in one state folder (default ``.dicomweb/``): Orthanc's configuration and database
in ``orthanc/`` and MONAI Label's DICOMweb cache (images as NIfTI, every label version) in
``cache/``. Delete the folder to start over.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from emlabel.dicomweb.orthanc import OrthancConfig, OrthancProcess, start_orthanc
from emlabel.dicomweb.upload import upload_studies

# Newly stored SEGs and series are seen after at most this many seconds (stock: 2 h).
DEFAULT_CACHE_EXPIRY = "10"


@dataclass(frozen=True, kw_only=True)
class DICOMwebServeOptions:
    """What ``serve-dicomweb`` starts and where it keeps its state."""

    studies: Path
    state_dir: Path = Path(".dicomweb")
    orthanc_port: int = 8042
    host: str = "127.0.0.1"
    port: int = 8000
    app_dir: Path = Path("apps/emlabel")
    labels: Sequence[str] = ()
    """Structure names, to name the SEG segments of uploaded final labels."""
    server_args: Sequence[str] = field(default_factory=tuple)
    """Extra ``start_server`` arguments, e.g. ``("--conf", "max_epochs", "5")``."""

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"


def server_environment(cache_dir: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a server in DICOMweb mode (an explicit setting in ``base`` wins)."""
    env = dict(os.environ if base is None else base)
    env.setdefault("MONAI_LABEL_DICOMWEB_CACHE_EXPIRY", DEFAULT_CACHE_EXPIRY)
    env.setdefault("MONAI_LABEL_DICOMWEB_CACHE_PATH", str(cache_dir.resolve()))
    env.setdefault("MONAI_LABEL_TRACKING_ENABLED", "false")
    # dcmqi's itkimage2segimage is installed beside the venv's python.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def start_orthanc_with_studies(options: DICOMwebServeOptions) -> OrthancProcess:
    """Start Orthanc in ``state_dir/orthanc`` and upload the studies (idempotent)."""
    orthanc = start_orthanc(
        OrthancConfig(work_dir=options.state_dir / "orthanc", http_port=options.orthanc_port)
    )
    try:
        uploaded = upload_studies(options.studies, orthanc.url, labels=options.labels)
    except BaseException:
        orthanc.stop()
        raise
    segs = sum(1 for u in uploaded.values() if u.seg_series_uid)
    print(
        f"== Orthanc {orthanc.url} (DICOMweb {orthanc.dicomweb_url}): {len(uploaded)} series "
        f"from {options.studies}, {segs} new final labels as DICOM-SEG",
        flush=True,
    )
    return orthanc


def serve_dicomweb(options: DICOMwebServeOptions) -> int:
    """Run Orthanc and EMLabel (in DICOMweb mode) until the server stops or Ctrl-C."""
    orthanc = start_orthanc_with_studies(options)
    url = f"http://{options.host}:{options.port}"
    first = next(iter(upload_ids(options)), None)
    print(
        f"== EMLabel on {url} (studies: {orthanc.dicomweb_url})\n"
        f"   OHIF:   {url}/ohif/monai-label?StudyInstanceUIDs={first or '<study uid>'}\n"
        f"           (MONAI Label panel: Server {url}/, then the connect button)\n"
        f"   REST:   {url}/   {url}/info/\n"
        f"   state:  {options.state_dir} (Orthanc database, label versions cache)",
        flush=True,
    )
    command = [
        sys.executable, "-m", "monailabel.main", "start_server",
        "--app", str(options.app_dir), "--studies", orthanc.dicomweb_url,
        "--host", options.host, "--port", str(options.port), *options.server_args,
    ]  # fmt: skip
    server = subprocess.Popen(command, env=server_environment(options.cache_dir))
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops both, like Ctrl-C
    try:
        return server.wait()
    except KeyboardInterrupt:  # Ctrl-C or `kill`: a normal way to stop
        server.terminate()
        server.wait()
        return 0
    finally:
        orthanc.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def upload_ids(options: DICOMwebServeOptions) -> list[str]:
    """StudyInstanceUIDs of the uploaded studies (deterministic, see SeriesIds)."""
    from emlabel.dicomweb.series import SeriesIds
    from emlabel.dicomweb.upload import image_files

    return [SeriesIds.for_image(i).study_uid for i in image_files(options.studies)]
