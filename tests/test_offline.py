"""Reliability (issue 6): the app starts and works with no network at all.

A guard refuses (and records) every socket connection that is not to loopback (127.0.0.1, ::1,
localhost) and every name lookup of another host. In this process the guard is a fixture; for
``python app.py`` it is a sitecustomize.py put on PYTHONPATH, so it is in place before the app imports
anything, and the environment is the plain one (no HF_HUB_OFFLINE, no GRADIO_ANALYTICS_ENABLED): the
app's own defaults must keep it offline. Asking for the Hub model is the one thing that may try the
network; offline, that must be a clean error.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability_util import (free_port, make_client, message_problem,
                                    sitecustomize_source, visible_text, wait_for_http)

ROOT = Path(__file__).resolve().parents[1]
START_BOUND = 90          # s to wait for the subprocess to answer HTTP 200 (a bound, not a measurement)
# Variables that would make the app offline by configuration instead of by its own defaults.
OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "GRADIO_ANALYTICS_ENABLED", "HF_HUB_DISABLE_TELEMETRY",
               "SPACE_ID", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT")


@pytest.fixture
def network_guard(network_guard, monkeypatch):
    """conftest's guard, with the app offline by its own defaults, not by configuration."""
    for name in ("HF_HUB_OFFLINE", "SPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    return network_guard


def test_the_guard_blocks_and_records(network_guard):
    """The guard can fail the tests: an outside address is refused and recorded, loopback is not."""
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("203.0.113.7", 80), timeout=1)          # TEST-NET-3
    with pytest.raises(OSError):
        socket.socket().connect(("2001:db8::1", 443, 0, 0))
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("huggingface.co", 443)
    assert len(network_guard) == 3
    port = free_port()
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        socket.create_connection(("localhost", port), timeout=2).close()
    assert len(network_guard) == 3


def test_app_builds_launches_and_works_offline(network_guard):
    from explorer.app import CSS, build_app
    from explorer.session import build_registry

    registry = build_registry()
    demo = build_app(registry)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, css=CSS, quiet=True,
                show_error=True)
    try:
        client = make_client(demo.local_url)
        name = registry.default
        status, _ = client.predict(name, api_name="/select_model")
        assert name in status
        chips, *_ = client.predict("Offline, and fine.", name, api_name="/tokenizer_breakdown")
        assert "Offline" in visible_text(chips)
        big, *_, info = client.predict("Offline, and fine.", 0, 0, -1, False, name, api_name="/attention_view")
        assert "tokens." in info and big["type"] == "plotly"
        notice, bars, summary = client.predict("Offline, and", 1.0, 0, 1.0, 10, name,
                                               api_name="/sampling_distribution")
        assert bars["type"] == "plotly"
        _, markup, _, done = client.submit("Offline, and", 0.8, 40, 1.0, 5, 7, name,
                                           api_name="/generate").result(timeout=120)
        assert visible_text(markup).startswith("Offline, and") and "new tokens" in done
    finally:
        demo.close()
    assert network_guard == [], f"non-loopback connections were attempted: {network_guard}"


def test_asking_for_the_hub_model_offline_is_a_clean_error(network_guard):
    """The Hub is only contacted on request; offline, that request fails with a plain message, fast."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    from explorer.app import build_app
    from explorer.session import HUB_NAME, build_registry

    registry = build_registry()
    demo = build_app(registry)
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, show_error=True)
    try:
        client = make_client(demo.local_url)
        with pytest.raises(Exception) as info:
            client.predict(HUB_NAME, api_name="/select_model")
        message = str(info.value)
        assert message_problem(message) is None, message
        assert "Could not load GPT-2 from the Hugging Face Hub" in message and "offline" in message
        status, _ = client.predict(registry.default, api_name="/select_model")   # the app still works
        assert registry.default in status
    finally:
        demo.close()
    hub_host = urlparse(constants.ENDPOINT).hostname
    assert network_guard, "the Hub request never tried the network (so the guard checked nothing)"
    assert all(hub_host in attempt for attempt in network_guard), network_guard


def _plain_env(tmp_path: Path) -> tuple[dict, Path, Path]:
    attempts, installed = tmp_path / "attempts.txt", tmp_path / "installed.txt"
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "sitecustomize.py").write_text(
        sitecustomize_source(attempts) + f"\nopen({str(installed)!r}, 'a').write('guard installed\\n')\n",
        encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in OFFLINE_ENV}
    env["PYTHONPATH"] = str(site_dir)
    env["PYTHONUNBUFFERED"] = "1"
    return env, attempts, installed


def test_the_sitecustomize_guard_works(tmp_path):
    """The subprocess guard can fail the test: it refuses and records an outside connection."""
    env, attempts, installed = _plain_env(tmp_path)
    code = ("import socket\ntry:\n    socket.create_connection(('203.0.113.7', 80), timeout=1)\n"
            "except ConnectionRefusedError:\n    print('refused')\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "refused", out.stderr
    assert installed.read_text() == "guard installed\n"
    assert "203.0.113.7" in attempts.read_text()


def test_python_app_py_starts_offline(tmp_path):
    """``python app.py --host 127.0.0.1 --port N`` in a plain environment, with the network blocked."""
    env, attempts, installed = _plain_env(tmp_path)
    port = free_port()
    log = tmp_path / "app.log"
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        waited = wait_for_http(f"http://127.0.0.1:{port}/", START_BOUND, proc)
        print(f"\n[offline] python app.py answered HTTP 200 after {time.monotonic() - start:.1f} s")
        assert waited is not None, (f"no HTTP 200 within {START_BOUND} s (exit code {proc.poll()}):\n"
                                    f"{log.read_text()[-3000:]}")
        client = make_client(f"http://127.0.0.1:{port}/")
        _, markup, _, done = client.submit("Offline and", 0.8, 40, 1.0, 4, 1, api_name="/generate").result(timeout=120)
        assert visible_text(markup).startswith("Offline and") and "new tokens" in done
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)
    assert installed.exists(), "the sitecustomize guard was not loaded by the app process"
    blocked = attempts.read_text() if attempts.exists() else ""
    assert blocked == "", f"python app.py tried to reach the network:\n{blocked}\n{log.read_text()[-2000:]}"
