"""``python app.py`` under abuse, through gradio_client and a browser: bad uploads are messages, the upload size
limit is enforced by the server, requests beyond the queue are told it is busy, and a cancelled run or a closed
tab stops the computation (the server's CPU time stops growing)."""

from __future__ import annotations

import os
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import CHROMIUM_ARGS, make_tiny_config, perturb, seeded_init
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from test_app_server import ROOT, serving_app

from ddpm_app.image import MAX_FILE_BYTES
from ddpm_app.model_folder import DiffusionConfig, save_pretrained
from ddpm_app.models import UNet
from ddpm_app.schedule import ScheduleConfig

PHOTO = ROOT / "ddpm_app" / "assets" / "portrait.png"
T = 3000  # DDPM steps: a full run takes many seconds, so it is surely still running when cancelled
QUEUE = 2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """app.py serving a tiny 16×16 model (T = 3000) with room for only two waiting requests: (url, pid, log)."""
    root = tmp_path_factory.mktemp("limits")
    config = DiffusionConfig(make_tiny_config(), ScheduleConfig(timesteps=T), training={"dataset": "noise"})
    save_pretrained(perturb(seeded_init(lambda: UNet(config.model))), config, root / "weights" / "faces")
    log = root / "app.log"
    with serving_app(root / "weights", log, "--queue-size", str(QUEUE)) as (url, proc):
        yield url, proc.pid, log


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_used(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def test_bad_uploads_are_messages_and_the_next_request_works(app, tmp_path: Path):
    url, _, log = app
    client = Client(url, verbose=False)
    files = {"text.png": (b"not an image", "not a readable image"),
             "empty.png": (b"", "the file is empty"),
             "bomb.png": (png_header(30_000, 30_000), "the image is too large \\(over 40,000,000 pixels\\)"),
             "truncated.png": (PHOTO.read_bytes()[:2000], "not a readable image")}
    for name, (data, message) in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(AppError, match=message):
            client.predict(handle_file(str(tmp_path / name)), 40, True, 5, api_name="/noise")
        numbers = client.predict(handle_file(str(PHOTO)), 40, True, 5, api_name="/noise")[3]
        assert "t = 40" in numbers
    assert "Traceback" not in log.read_text()


def test_the_server_refuses_uploads_over_the_limit(app):
    url, _, _ = app
    too_big = b"\x89PNG" + bytes(MAX_FILE_BYTES)
    response = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", too_big, "image/png")}, timeout=60)
    assert response.status_code == 413 and "maximum" in response.text.lower(), (response.status_code, response.text)
    small = httpx.post(url + "gradio_api/upload", files={"files": ("p.png", PHOTO.read_bytes(), "image/png")})
    assert small.status_code == 200


def test_requests_beyond_the_queue_are_told_the_app_is_busy(app):
    url, _, _ = app
    clients = [Client(url, verbose=False) for _ in range(QUEUE + 3)]

    def run(i: int) -> str:
        try:
            return clients[i].predict("ddim", 250, 0.0, i, 4, True, False, api_name="/generate")[3]
        except Exception as e:  # QueueError from gradio_client
            return f"{type(e).__name__}: {e}"

    with ThreadPoolExecutor(len(clients)) as pool:
        answers = list(pool.map(run, range(len(clients))))
    busy = [a for a in answers if "Queue is full" in a]
    done = [a for a in answers if "Done" in a]
    assert busy and len(done) >= QUEUE and len(busy) + len(done) == len(answers), answers
    assert "Done" in Client(url, verbose=False).predict("ddim", 3, 0.0, 1, 1, True, False, api_name="/generate")[3]


def test_a_cancelled_run_stops_computing_and_frees_the_worker(app):
    url, pid, _ = app
    client = Client(url, verbose=False)
    job = client.submit("ddpm", 1, 0.0, 3, 4, True, False, api_name="/generate")  # ~25 s if left alone
    wait_for(job.outputs, 60, "the first preview")
    assert cpu_used(pid, 0.5) > 0.3  # sampling keeps a core busy
    job.cancel()
    time.sleep(0.5)  # the stretch of steps in progress finishes
    assert cpu_used(pid, 1.0) < 0.2, "the run went on computing after it was cancelled"
    started = time.perf_counter()
    assert "Done" in client.predict("ddim", 3, 0.0, 1, 1, True, False, api_name="/generate")[3]
    assert time.perf_counter() - started < 5  # the worker was free at once


@pytest.mark.browser
def test_closing_the_tab_stops_the_run(app, chromium):
    from playwright.sync_api import sync_playwright

    url, pid, _ = app
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.goto(url)
        page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=60_000)
        page.get_by_text("DDPM (all T steps)").click()
        page.get_by_role("button", name="Generate", exact=True).click()
        page.wait_for_function(f"() => document.querySelector('#gen-status progress')?.value < {T}", timeout=60_000)
        assert cpu_used(pid, 0.5) > 0.3
        page.close()
        time.sleep(1.0)  # the server notices the closed stream at its next preview
        idle = cpu_used(pid, 1.0)
        browser.close()
    assert idle < 0.2, f"the run went on computing after its tab closed ({idle:.2f} CPU s in 1 s)"
