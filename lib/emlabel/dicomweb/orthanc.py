"""Run a private Orthanc (DICOM server with the DICOMweb plugin) and talk to its REST API.

Why: DICOMweb mode and the OHIF tests need a real DICOMweb server. Orthanc is started
directly (not as the system service) with a configuration directory of its own, HTTP only
(no DICOM port), no remote access and no authentication; its database lives in that
directory. Orthanc 1.10 has no bind-address option: it listens on every interface, and
``RemoteAccessAllowed: false`` makes it refuse any client that is not on this host.

The Debian packages ``orthanc`` and ``orthanc-dicomweb`` provide the binary and plugin.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emlabel.errors import UpstreamError

ORTHANC_BINARY = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
APT_HINT = "install the Debian packages: apt-get install -y orthanc orthanc-dicomweb"


class OrthancError(UpstreamError):
    """Orthanc is missing, did not start, or refused a request."""

    status_code = 502


@dataclass(frozen=True, kw_only=True)
class OrthancConfig:
    """Where a private Orthanc keeps its files and which port it serves HTTP on."""

    work_dir: Path
    """Holds ``orthanc.json``, the database ``db/`` and ``orthanc.log``."""
    http_port: int = 8042
    name: str = "EMLABEL"
    """Orthanc's name (``/system``); :func:`start_orthanc` appends a random suffix."""
    plugins: tuple[Path, ...] = (DICOMWEB_PLUGIN,)

    @property
    def config_path(self) -> Path:
        return self.work_dir / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "orthanc.log"

    def as_json(self) -> dict[str, Any]:
        """Orthanc's configuration (see ``../shared/STACK.md``)."""
        db = str((self.work_dir / "db").resolve())
        return {
            "Name": self.name,
            "StorageDirectory": db,
            "IndexDirectory": db,
            "Plugins": [str(p) for p in self.plugins],
            "HttpPort": self.http_port,
            "DicomServerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "Ssl": False,
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            },
        }

    def write(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.as_json(), indent=2), encoding="utf-8")
        return self.config_path


def find_orthanc() -> str:
    """The Orthanc binary and its DICOMweb plugin, or an error saying how to install them."""
    binary = shutil.which(ORTHANC_BINARY) or (
        "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None
    )
    if binary is None:
        raise OrthancError(f"Orthanc is not installed; {APT_HINT}")
    if not DICOMWEB_PLUGIN.is_file():
        raise OrthancError(f"Orthanc's DICOMweb plugin {DICOMWEB_PLUGIN} is missing; {APT_HINT}")
    return binary


@dataclass
class OrthancProcess:
    """A running private Orthanc; stop it with :meth:`stop` (or use it as a context manager)."""

    config: OrthancConfig
    process: subprocess.Popen
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.config.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def log(self) -> str:
        path = self.config.log_path
        return path.read_text(errors="replace") if path.is_file() else ""

    def wait_until_up(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited (code {self.process.returncode}) at start; is port "
                    f"{self.config.http_port} taken?\n{self.log()[-3000:]}"
                )
            try:
                system = get_json(self.url, "/system", timeout=2)
                plugins = get_json(self.url, "/plugins", timeout=2)
            except (OSError, OrthancError):  # not listening yet
                time.sleep(0.2)
                continue
            if "dicom-web" not in plugins:
                self.stop()
                raise OrthancError(f"Orthanc started without its DICOMweb plugin; {APT_HINT}")
            if system.get("Name") != self.config.name:
                self.stop()
                raise OrthancError(
                    f"another Orthanc ({system.get('Name')!r}) answers on port "
                    f"{self.config.http_port}; choose another port"
                )
            return
        self.stop()
        raise OrthancError(f"Orthanc did not answer in {timeout} s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> OrthancProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def port_is_free(port: int) -> bool:
    """Whether nothing listens on ``port`` (Orthanc binds every interface)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: ignore TIME_WAIT
        try:
            s.bind(("", port))
        except OSError:
            return False
    return True


def start_orthanc(config: OrthancConfig, *, timeout: float = 30) -> OrthancProcess:
    """Write the configuration, start Orthanc on ``config.http_port`` and wait until it answers.

    The name gets a random suffix, so the server that answers is known to be this one.
    """
    binary = find_orthanc()
    if not port_is_free(config.http_port):
        raise OrthancError(
            f"port {config.http_port} is taken (the system Orthanc service?); choose another "
            "port for Orthanc (make serve-dicomweb ORTHANC_PORT=...)"
        )
    config = dataclasses.replace(config, name=f"{config.name}-{secrets.token_hex(4)}")
    config.write()
    log = open(config.log_path, "ab")  # noqa: SIM115 (the child keeps it; closed on our side below)
    try:
        process = subprocess.Popen(
            [binary, str(config.config_path)],
            cwd=config.work_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    finally:
        log.close()
    orthanc = OrthancProcess(config=config, process=process)
    orthanc.wait_until_up(timeout)
    return orthanc


# ------------------------------------------------------------------ REST helpers
def _request(
    base_url: str,
    path: str,
    *,
    data: bytes | None = None,
    method: str = "GET",
    content_type: str | None = None,
    timeout: float = 30,
) -> Any:
    request = urllib.request.Request(f"{base_url.rstrip('/')}{path}", data=data, method=method)
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError:
        raise  # a refusal: callers say what was refused
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise OrthancError(f"Orthanc at {base_url} is unreachable: {reason}") from e
    return json.loads(body) if body else None


def get_json(base_url: str, path: str, *, timeout: float = 30) -> Any:
    """``GET`` an Orthanc REST path (e.g. ``/system``) as JSON."""
    return _request(base_url, path, timeout=timeout)


def upload_instance(base_url: str, path: str | Path) -> dict[str, Any]:
    """``POST /instances``: store one DICOM file (storing it again is harmless)."""
    try:
        return _request(
            base_url,
            "/instances",
            data=Path(path).read_bytes(),
            method="POST",
            content_type="application/dicom",
        )
    except urllib.error.HTTPError as e:
        raise OrthancError(
            f"Orthanc refused {Path(path).name}: HTTP {e.code} {e.read()[:300]!r}"
        ) from e


def find_series(base_url: str, **query: str) -> list[dict[str, Any]]:
    """Series matching DICOM tags (e.g. ``Modality="SEG"``), expanded with their main tags."""
    body = json.dumps({"Level": "Series", "Query": query, "Expand": True}).encode()
    return _request(
        base_url, "/tools/find", data=body, method="POST", content_type="application/json"
    )


def series_instance_tags(base_url: str, orthanc_series_id: str) -> dict[str, Any]:
    """The full tags (``/instances/{id}/tags?simplify``) of a series' first instance."""
    series = get_json(base_url, f"/series/{orthanc_series_id}")
    return get_json(base_url, f"/instances/{series['Instances'][0]}/tags?simplify")


def seg_references(base_url: str) -> dict[str, str]:
    """Every SEG series on the server: its SeriesInstanceUID -> the image series it labels."""
    found = {}
    for series in find_series(base_url, Modality="SEG"):
        tags = series_instance_tags(base_url, series["ID"])
        referenced = tags.get("ReferencedSeriesSequence") or [{}]
        found[series["MainDicomTags"]["SeriesInstanceUID"]] = referenced[0].get(
            "SeriesInstanceUID", ""
        )
    return found
