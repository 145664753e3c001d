"""Roles, tokens, CORS, the body cap and the binding rule, through the real server."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monailabel.client import MONAILabelClient
from monailabel.client.client import MONAILabelClientException

from emlabel.monailabel.auth import hash_password
from tests.support.server import (
    TINY_CONF,
    free_port,
    make_app_dir,
    running_server,
    server_env,
)
from tests.test_server import wait_for_training

pytestmark = pytest.mark.server

PASSWORDS = {"ann": "ann-secret", "rev": "rev-secret", "adm": "adm-secret"}
ROLES = {"ann": ["annotator"], "rev": ["reviewer"], "adm": ["admin"]}
GOOD_ORIGIN = "http://viewer.example:3000"


@pytest.fixture(scope="module")
def server(tiny_demo_template: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("auth-server")
    studies = work / "studies"
    shutil.copytree(tiny_demo_template, studies)
    users = {
        name: {"password_hash": hash_password(PASSWORDS[name], rounds=1000), "roles": roles}
        for name, roles in ROLES.items()
    }
    users_file = work / "users.json"
    users_file.write_text(json.dumps({"users": users}))
    conf = {**TINY_CONF, "auth_users": str(users_file), "cors_origins": GOOD_ORIGIN}
    with running_server(studies, work, conf=conf) as running:
        yield running


def login(server, name: str) -> MONAILabelClient:
    client = MONAILabelClient(server_url=server.url, tmpdir=str(server.app_dir.parent))
    client.update_auth(client.auth_token(name, PASSWORDS[name]))
    return client


def request(
    server, method: str, path: str, *, token: str | None = None, headers=None, body=None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=60)
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    conn.request(method, path, body=body, headers=all_headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, data


def token_of(server, name: str) -> str:
    client = MONAILabelClient(server_url=server.url)
    return client.auth_token(name, PASSWORDS[name])["access_token"]


def status_of(call) -> int:
    """The HTTP status of a client call that is expected to fail."""
    with pytest.raises(MONAILabelClientException) as e:
        call()
    match = re.search(r"Status: (\d+)", e.value.msg)
    assert match, e.value.msg
    return int(match.group(1))


def write_final(server, tmp_path: Path, image_id: str) -> str:
    image = nib.load(server.studies / f"{image_id}.nii.gz")
    label = np.zeros(image.shape, np.uint8)
    label[4:10, 4:10, 4:8] = 1
    path = tmp_path / f"{image_id}_label.nii.gz"
    nib.save(nib.Nifti1Image(label, image.affine), path)
    return str(path)


# ---------------------------------------------------------------------------- login
def test_monai_label_client_logs_in_with_the_stock_protocol(server):
    client = MONAILabelClient(server_url=server.url)
    assert client.auth_enabled() is True
    token = client.auth_token("ann", PASSWORDS["ann"])
    assert token["token_type"] == "bearer" and token["access_token"]
    assert client.auth_valid_token() is False  # no token yet
    client.update_auth(token)
    assert client.auth_valid_token() is True
    assert "segmentation" in client.info()["models"]
    status, _, body = request(server, "GET", "/auth/token/valid", token=token["access_token"])
    assert status == 200
    assert json.loads(body)["username"] == "ann" and json.loads(body)["roles"] == ["annotator"]


def test_wrong_password_and_unknown_user_get_401(server):
    client = MONAILabelClient(server_url=server.url)
    assert status_of(lambda: client.auth_token("ann", "not-it")) == 401
    assert status_of(lambda: client.auth_token("nobody", PASSWORDS["ann"])) == 401


def test_no_token_or_a_bad_token_gets_401(server):
    client = MONAILabelClient(server_url=server.url)
    assert status_of(client.datastore) == 401
    status, headers, body = request(server, "POST", "/infer/segmentation?image=case_000")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert "token" in json.loads(body)["detail"]
    status, headers, _ = request(server, "GET", "/datastore/", token="x.y.z")
    assert status == 401 and "invalid_token" in headers["www-authenticate"]
    # public without a token: what Slicer and OHIF read before they log in
    for path in ("/", "/info/", "/auth/", "/openapi.json", "/favicon.ico"):
        assert request(server, "GET", path)[0] == 200, path


# ---------------------------------------------------------------------------- roles
def test_annotator_labels_but_cannot_train_or_delete(server, tmp_path):
    client = login(server, "ann")
    # infer passes the gate (409: nothing trained yet), next sample and save label work
    code = status_of(lambda: client.infer("segmentation", "case_000", {}))
    assert code == 409
    assert client.next_sample("random", {})["id"]
    saved = client.save_label("case_004", write_final(server, tmp_path, "case_004"), tag="final")
    assert saved["label"] == "case_004"
    assert "final" in client.datastore()["objects"]["case_004"]["labels"]

    code = status_of(lambda: client.train_start("segmentation", {"max_epochs": 1}))
    assert code == 403
    token = token_of(server, "ann")
    status, _, body = request(server, "POST", "/train/segmentation", token=token, body=b"{}")
    assert status == 403 and "'reviewer'" in json.loads(body)["detail"]
    status, _, body = request(
        server, "DELETE", "/datastore/label?id=case_004&tag=final", token=token
    )
    assert status == 403 and "'admin'" in json.loads(body)["detail"]
    assert "final" in client.datastore()["objects"]["case_004"]["labels"]


def test_reviewer_trains_but_cannot_delete_a_model_and_admin_can(server):
    reviewer = login(server, "rev")
    reviewer.train_start("segmentation", {"max_epochs": 1})
    assert wait_for_training(reviewer)["status"] == "DONE"
    model = server.app_dir / "model" / "segmentation.pt"
    assert model.is_file()

    status, _, body = request(
        server, "DELETE", "/model/segmentation", token=token_of(server, "rev")
    )
    assert status == 403 and "'admin'" in json.loads(body)["detail"]
    assert model.is_file()

    status, _, body = request(
        server, "DELETE", "/model/segmentation", token=token_of(server, "adm")
    )
    assert status == 200, body
    assert not model.is_file()


def test_admin_deletes_a_label(server, tmp_path):
    admin = login(server, "adm")
    admin.save_label("case_005", write_final(server, tmp_path, "case_005"), tag="final")
    status, _, body = request(
        server, "DELETE", "/datastore/label?id=case_005&tag=final", token=token_of(server, "adm")
    )
    assert status == 200, body


# ----------------------------------------------------------------------------- CORS
def test_cors_allows_only_configured_origins(server):
    evil, good = "http://evil.example", GOOD_ORIGIN
    _, headers, _ = request(server, "GET", "/info/", headers={"Origin": evil})
    assert "access-control-allow-origin" not in headers
    _, headers, _ = request(server, "GET", "/info/", headers={"Origin": good})
    assert headers["access-control-allow-origin"] == good
    assert headers["access-control-allow-credentials"] == "true"

    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    status, headers, _ = request(
        server, "OPTIONS", "/infer/segmentation", headers={**preflight, "Origin": evil}
    )
    assert status == 400 and "access-control-allow-origin" not in headers
    status, headers, _ = request(
        server, "OPTIONS", "/infer/segmentation", headers={**preflight, "Origin": good}
    )
    assert status == 200 and headers["access-control-allow-origin"] == good
    # the server's own origin (e.g. OHIF served from /ohif/)
    own = server.url
    _, headers, _ = request(server, "GET", "/info/", headers={"Origin": own})
    assert headers["access-control-allow-origin"] == own


# ------------------------------------------------------------------------- body cap
def test_a_huge_content_length_is_refused_before_the_body_is_sent(server):
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        start = time.monotonic()
        sock.sendall(
            b"PUT /datastore/image?image=big HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + token_of(server, "adm").encode() + b"\r\n"
            b"Content-Type: application/octet-stream\r\n"
            b"Content-Length: " + str(2 << 30).encode() + b"\r\n\r\n"
        )
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        elapsed = time.monotonic() - start
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert elapsed < 5


# -------------------------------------------------------------------------- binding
def non_loopback_address() -> str | None:
    """This machine's address on its default route (a UDP connect sends no packet)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing lookup only
            address = s.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


@pytest.mark.parametrize("where", ["0.0.0.0", "machine address"])
def test_serving_beyond_loopback_without_auth_stops_with_a_message(
    where, tiny_demo_template, tmp_path
):
    host = "0.0.0.0" if where == "0.0.0.0" else non_loopback_address()
    if host is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    app_dir = make_app_dir(tmp_path)
    studies = tmp_path / "studies"
    shutil.copytree(tiny_demo_template, studies)
    cmd = [
        sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app_dir),
        "--studies", str(studies), "--host", host, "--port", str(free_port()),
    ]  # fmt: skip
    for key, value in TINY_CONF.items():
        cmd += ["--conf", key, value]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=server_env(), capture_output=True, text=True, timeout=300
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert f"refusing to serve on {host}:" in output, output[-3000:]
    assert "auth_users" in output
    assert "Uvicorn running on" not in output  # it never listened


def test_query_string_tokens_are_not_accepted(server):
    token = token_of(server, "adm")
    path = "/datastore/?" + urllib.parse.urlencode({"access_token": token})
    assert request(server, "GET", path)[0] == 401
