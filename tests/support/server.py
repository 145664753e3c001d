"""Start the real MONAI Label server (``python -m monailabel.main start_server``) for tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
APP_MAIN = REPO / "apps" / "emlabel" / "main.py"

# Small, fast settings for tests (CPU, 2 cores).
TINY_CONF: dict[str, str] = {
    "roi_size": "32,32,32",
    "target_spacing": "2.0,2.0,3.0",  # not the demo spacing: infer must resample back
    "network_channels": "8,16,32",
    "num_res_units": "0",
    "max_epochs": "1",
    "train_batch_size": "2",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The server's environment: no tracking, no automatic scoring (``extra`` may turn it on)."""
    env = dict(os.environ)
    env.update(
        {
            "MONAI_LABEL_TRACKING_ENABLED": "false",
            "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra or {})
    return env


@dataclass
class RunningServer:
    url: str
    app_dir: Path
    studies: Path | str  # a folder, or a DICOMweb URL
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def make_app_dir(root: Path, app_main: Path = APP_MAIN) -> Path:
    """A private copy of the app folder, so the server's model/ and logs/ land in ``root``."""
    app_dir = root / "app"
    app_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(app_main, app_dir / "main.py")
    return app_dir


@contextlib.contextmanager
def running_server(
    studies: Path | str,
    workdir: Path,
    conf: Mapping[str, str] | None = None,
    timeout: float = 180,
    env: Mapping[str, str] | None = None,
    app_main: Path = APP_MAIN,
) -> Iterator[RunningServer]:
    """Start the server on a free 127.0.0.1 port; stop it on exit (``env``: extra variables,
    ``app_main``: the app file, e.g. another checkout's for a before/after benchmark)."""
    app_dir = make_app_dir(workdir, app_main)
    port = free_port()
    cmd = [
        sys.executable, "-m", "monailabel.main", "start_server",
        "--app", str(app_dir), "--studies", str(studies),
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    for key, value in (conf if conf is not None else TINY_CONF).items():
        cmd += ["--conf", key, value]
    log_path = workdir / "server.log"
    log = open(log_path, "w")  # noqa: SIM115 (closed in the finally below)
    # cwd = workdir: monailabel reads a .env file from the current directory.
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=server_env(env), stdout=log, stderr=subprocess.STDOUT
    )
    server = RunningServer(f"http://127.0.0.1:{port}", app_dir, studies, proc, log_path)
    try:
        wait_until_up(server, timeout)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def wait_until_up(server: RunningServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited early:\n{server.log()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/info/", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"server did not answer /info/ in {timeout} s:\n{server.log()[-4000:]}")
