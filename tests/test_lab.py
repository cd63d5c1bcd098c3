"""`make lab` really serves the course: start JupyterLab as the Makefile does and list the lessons.

The server runs on a free loopback port with a random token, is asked for the
repository's folders and the lesson notebooks through Jupyter's contents API,
and is stopped.
"""

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STARTUP_SECONDS = 60


def lab_flags_from_makefile() -> list[str]:
    """The flags `make lab` passes to `jupyter lab` (the LAB_FLAGS line of the Makefile)."""
    match = re.search(r"^LAB_FLAGS\s*:=\s*(.+)$", (REPO / "Makefile").read_text(), flags=re.MULTILINE)
    assert match, "the Makefile must define LAB_FLAGS for `make lab`"
    return match.group(1).split()


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


@pytest.fixture
def lab_server(tmp_path):
    port, token = free_loopback_port(), secrets.token_hex(16)
    command = [
        sys.executable, "-m", "jupyter", "lab", *lab_flags_from_makefile(),
        "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
    ]  # fmt: skip
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.append("--allow-root")  # as the Makefile's ROOT_FLAG does
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                get_json(f"{base}/api/status?token={token}")
                break
            except (urllib.error.URLError, ConnectionError):
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"jupyter lab did not start: {(tmp_path / 'lab.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield base, token
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def test_jupyter_lab_serves_the_course(lab_server):
    base, token = lab_server
    root = get_json(f"{base}/api/contents?token={token}")
    folders = {item["name"] for item in root["content"] if item["type"] == "directory"}
    assert {"notebooks", "exercises", "solutions"} <= folders

    listing = get_json(f"{base}/api/contents/notebooks?token={token}")
    served = sorted(item["name"] for item in listing["content"] if item["type"] == "notebook")
    on_disk = sorted(path.name for path in (REPO / "notebooks").glob("*.ipynb"))
    assert served == on_disk
    for name in served:  # each lesson opens as a notebook with cells
        lesson = get_json(f"{base}/api/contents/notebooks/{name}?token={token}")
        assert lesson["type"] == "notebook" and lesson["content"]["cells"]

    with urllib.request.urlopen(f"{base}/lab/tree/notebooks?token={token}", timeout=10) as page:
        assert page.status == 200
        assert "jupyter" in page.read().decode().lower()
