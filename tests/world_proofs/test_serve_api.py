"""`opamp-operator serve`'s API listener, run as users run it: loopback without a
credential, anywhere else only behind --api-token-file (and then over TLS)."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from world.fleets import CONFIG_V1
from world.operator import Reader, start_serve, write_fleets
from world.processes import free_port

pytestmark = pytest.mark.world


def _fleets(tmp_path: Path) -> Path:
    return write_fleets(tmp_path / "fleets.yaml", [{"name": "all", "config": CONFIG_V1}])


def test_serve_refuses_to_expose_its_api_without_a_token(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "opamp_operator",
            "serve",
            f"--config={_fleets(tmp_path)}",
            "--host=127.0.0.1",
            f"--port={free_port()}",
            "--api-host=0.0.0.0",
            f"--api-port={free_port()}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "no credential required: give --api-token-file" in done.stderr


def test_a_token_file_guards_the_api_wherever_it_listens(tmp_path: Path) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the self-signed certificate of a bare serve
    token_file = tmp_path / "api-token"
    token_file.write_text("s3cret-api-token\n")
    token_file.chmod(0o600)
    with start_serve(
        _fleets(tmp_path),
        tmp_path,
        "--api-host=0.0.0.0",
        f"--api-token-file={token_file}",
        reader=Reader(context),
    ) as server:

        def get(path: str, token: str | None) -> int:
            request = urllib.request.Request(f"https://127.0.0.1:{server.api_port}{path}")
            if token is not None:
                request.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(request, timeout=5, context=context) as r:  # noqa: S310
                    body = r.read()
                    if path.startswith("/api"):
                        assert json.loads(body)["count"] == 0
                    return int(r.status)
            except urllib.error.HTTPError as error:
                return error.code

        for path in ("/api/v1/agents", "/api/v1/rollouts", "/metrics"):
            assert get(path, None) == 401
            assert get(path, "guessed") == 401
            assert get(path, "s3cret-api-token") == 200
        assert get("/readyz", None) == 200
