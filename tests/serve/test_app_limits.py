"""``python app.py`` under abuse, through gradio_client and a browser: bad uploads are messages, the upload size
limit is enforced by the server, requests beyond the queue are told it is busy, and a cancelled run or a closed
tab stops the computation: the server goes idle having spent far less CPU time than the rest of the run would take.

Nothing here depends on the machine's speed: the tests wait on events (a preview, a status, the server going
idle) and compare CPU time with CPU time, so they hold on a machine busy with other work."""

from __future__ import annotations

import base64
import itertools
import os
import re
import socket
import struct
import time
import zlib
from pathlib import Path

import httpx
import pytest
from conftest import CHROMIUM_ARGS, PATIENCE, make_tiny_config, perturb, seeded_init, wait_for
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import Status
from serving import ROOT, app_env, dead_pid, free_port, serving, serving_tiny_model

from ddpm_app.diffusion.schedule import ScheduleConfig
from ddpm_app.image import MAX_FILE_BYTES
from ddpm_app.io.model_folder import DiffusionConfig, save_pretrained
from ddpm_app.models import UNet
from ddpm_app.serve.server import MAX_BODY_BYTES

PHOTO = ROOT / "ddpm_app" / "assets" / "portrait.png"
T = 3000  # DDPM steps: a full run takes many seconds, so it is surely still running when cancelled
QUEUE = 2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """app.py serving a tiny 16×16 model (T = 3000) with room for only two waiting requests: (url, pid, log)."""
    with serving_tiny_model(tmp_path_factory.mktemp("limits"), T, "--queue-size", str(QUEUE)) as (url, proc, log):
        QUIET_CPU[proc.pid] = quiet_cpu(proc.pid)
        yield url, proc.pid, log


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_used(pid: int, seconds: float) -> float:
    before = cpu_seconds(pid)
    time.sleep(seconds)
    return cpu_seconds(pid) - before


QUIET_CPU: dict[int, float] = {}  # pid → CPU seconds the server spends in 2 s with no request


def quiet_cpu(pid: int) -> float:
    """What a served app costs in 2 s with nothing to do. Not zero: Gradio's queue polls every millisecond, and
    what that costs differs from CPU to CPU. Taken once the server has settled after its start-up."""
    wait_for(lambda: cpu_used(pid, 2.0) < 0.5, "the new server to settle", poll=0)
    return min(cpu_used(pid, 2.0) for _ in range(3))


def idle(pid: int) -> bool:
    """Whether the server's CPU use over the next two seconds is back near its quiet cost: a server that computes,
    even slowed by other work on the machine, uses several times more."""
    return cpu_used(pid, 2.0) < 2 * QUIET_CPU[pid] + 0.1


def progress(status: str) -> int:
    """The step a streamed status line reports (its <progress value=…>)."""
    return int(re.search(r"<progress value='(\d+)'", status)[1])


class StepCost:
    """CPU seconds per reverse step of the server, measured between two progress reports of a running run."""

    def __init__(self, pid: int, read_step):
        self.pid, self.read_step = pid, read_step
        self.step0, self.cpu0 = read_step(), cpu_seconds(pid)

    def measure(self, steps: int = 50) -> float:
        """Wait until the run is ``steps`` further on; CPU seconds per step meanwhile."""
        step1 = wait_for(lambda: (s := self.read_step()) >= self.step0 + steps and s, f"{steps} more steps",
                         progress=self.read_step)
        return (cpu_seconds(self.pid) - self.cpu0) / (step1 - self.step0)


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
    response = httpx.post(url + "gradio_api/upload", files={"files": ("big.png", too_big, "image/png")},
                          timeout=PATIENCE)
    assert response.status_code == 413 and "maximum" in response.text.lower(), (response.status_code, response.text)
    small = httpx.post(url + "gradio_api/upload", files={"files": ("p.png", PHOTO.read_bytes(), "image/png")})
    assert small.status_code == 200


def http_exchange(url: str, head: str, body_chunks=()) -> bytes:
    """Send a raw HTTP request (``head`` without the blank line, then ``body_chunks``) and return what the server
    answers; a server that stops reading the body part-way is what is being tested, so a broken pipe is not an
    error."""
    host, port = url.split("//")[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=PATIENCE) as conn:
        try:
            conn.sendall(head.encode() + b"\r\n\r\n")
            for chunk in body_chunks:
                conn.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while part := conn.recv(65536):
                answer += part
        except ConnectionResetError:
            pass
    return answer


def test_bodies_over_the_cap_are_refused_before_they_are_read(app):
    url, _, _ = app
    join = "POST /gradio_api/queue/join HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
    # 400 MB announced, none sent: the answer comes from the header alone
    announced = http_exchange(url, join + f"Content-Length: {400 * 2**20}")
    assert announced.startswith(b"HTTP/1.1 413") and b"too large" in announced, announced[:300]
    # sent in chunks with no length announced: refused once the cap is passed, without reading the rest
    chunk = b"%x\r\n%s\r\n" % (2**20, b"x" * 2**20)
    streamed = http_exchange(url, join + "Transfer-Encoding: chunked",
                             itertools.repeat(chunk, MAX_BODY_BYTES // 2**20 + 64))
    assert streamed.startswith(b"HTTP/1.1 413") and b"too large" in streamed, streamed[:300]
    # the largest photo the API takes, as a base64 data: URL, fits under the cap and gets the app's own answer
    photo = "data:image/png;base64," + base64.b64encode(bytes(MAX_FILE_BYTES)).decode()
    with pytest.raises(AppError, match="not a readable image"):  # 20 MB of zeros: read, and found not a picture
        Client(url, verbose=False).predict(photo, 40, True, 5, api_name="/noise")


def test_a_client_that_leaves_in_the_middle_of_an_upload_is_a_line_in_the_log(app):
    """A tab closed while its upload is on the way (the sketchpad sends its layers whenever the page changes): the
    server says so in one line, with no traceback, and goes on serving."""
    url, _, log = app
    boundary = "xyz"
    head = (f"POST /gradio_api/upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {2**20}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}")
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode() + png_header(8, 8)
    host, port = url.split("//")[1].rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=PATIENCE) as conn:
        conn.sendall(head.encode() + b"\r\n\r\n" + part)  # far less than the announced megabyte, then gone
    wait_for(lambda: "a client left before it had sent all of its request (POST /gradio_api/upload)" in
             log.read_text(), "the server's note of the client that left")
    assert "Traceback" not in log.read_text()
    assert httpx.get(url, timeout=PATIENCE).status_code == 200


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", status)[1]) / 1024


def test_refused_photos_do_not_stay_in_the_servers_memory(app):
    """Gradio kept each photo sent as a data: URL, refused or not, in the session's record for an hour, and malloc
    kept what was freed: six refused photos of 20.5 MB added about 300 MB for good."""
    url, pid, _ = app
    wait_for(lambda: idle(pid), "the server to go idle", poll=0)
    before = rss_mib(pid)
    photo = "data:image/png;base64," + base64.b64encode(bytes(MAX_FILE_BYTES + 2**19)).decode()  # 27 MB of JSON
    for _ in range(6):
        client = Client(url, verbose=False)
        with pytest.raises(AppError, match="too large"):
            client.predict(photo, 40, True, 5, api_name="/noise")
        client.close()
    wait_for(lambda: rss_mib(pid) < before + 100, "the refused photos' memory to be given back")


def test_the_server_leaves_no_temporary_folders(tmp_path: Path):
    temp = tmp_path / "tmp"
    killed = temp / f"ddpm_app_pid{dead_pid()}-old"  # what a server killed with -9 left
    (killed / "export").mkdir(parents=True)
    port = free_port()
    config = DiffusionConfig(make_tiny_config(), ScheduleConfig(timesteps=20), training={"dataset": "noise"})
    save_pretrained(perturb(seeded_init(lambda: UNet(config.model))), config, tmp_path / "weights" / "faces")
    with serving(["--weights", str(tmp_path / "weights"), "--port", str(port)], app_env() | {"TMPDIR": str(temp)},
                 port, tmp_path / "app.log") as (_, proc):
        assert not killed.exists()
        assert len(list(temp.glob("ddpm_*"))) == 3  # its exports, its figures and the 2-D lab's exports
    assert proc.returncode is not None and not list(temp.glob("ddpm_*")), list(temp.glob("ddpm_*"))


def test_requests_beyond_the_queue_are_told_the_app_is_busy(app):
    url, _, _ = app
    blocker = Client(url, verbose=False).submit("ddpm", 1, 0.0, 9, 4, True, False, api_name="/generate")
    wait_for(blocker.outputs, "the long run to start")  # it holds the one sampling slot

    def settled(job) -> bool:  # waiting in the queue, or answered
        return job.done() or job.status().code == Status.IN_QUEUE

    jobs = []
    for i in range(QUEUE + 2):  # one at a time, each settled before the next, so the order is certain
        jobs.append(Client(url, verbose=False).submit("ddim", 5, 0.0, i, 1, True, False, api_name="/generate"))
        wait_for(lambda: settled(jobs[-1]), f"request {i} to be queued or refused")
    assert not blocker.done(), "the long run ended before the queue filled: make it longer"
    busy = [job for job in jobs if job.done() and "Queue is full" in str(job.exception())]
    assert len(busy) == 2 and jobs[-2:] == busy, [job.status() for job in jobs]
    viewer = Client(url, verbose=False)  # quick views are counted apart from the jobs: never refused as busy here
    assert "No generate run yet" in viewer.predict(1, api_name="/frame")[2]
    assert "No generate run yet" in viewer.predict("generate", api_name="/show_run")[3]
    blocker.cancel()
    for job in jobs[:QUEUE]:  # the waiting ones run once the slot is free
        assert "Done" in job.result(timeout=PATIENCE)[3]


def test_a_cancelled_run_stops_computing_and_frees_the_worker(app):
    url, pid, _ = app
    client = Client(url, verbose=False)
    job = client.submit("ddpm", 1, 0.0, 3, 4, True, False, api_name="/generate")  # 3,000 steps if left alone
    wait_for(job.outputs, "the first preview")
    cost = StepCost(pid, lambda: progress(job.outputs()[-1][3]))
    per_step = cost.measure()
    assert per_step > 0  # the run is computing
    job.cancel()
    cancelled_at, step = cpu_seconds(pid), progress(job.outputs()[-1][3])
    wait_for(lambda: idle(pid), "the server to go idle", poll=0)
    spent, rest = cpu_seconds(pid) - cancelled_at, (T - step) * per_step
    assert spent < 0.25 * rest, f"{spent:.1f} CPU s after the cancel; the rest of the run would take {rest:.1f}"
    assert "Done" in client.predict("ddim", 3, 0.0, 1, 1, True, False, api_name="/generate")[3]  # the worker is free


@pytest.mark.browser
def test_closing_the_tab_stops_the_run(app, chromium):
    from playwright.sync_api import sync_playwright

    url, pid, _ = app
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page()
        page.goto(url)
        page.get_by_role("button", name="Generate", exact=True).wait_for(timeout=PATIENCE * 1000)
        page.get_by_text("DDPM (all T steps)").click()
        page.get_by_role("button", name="Generate", exact=True).click()
        page.wait_for_function(f"() => document.querySelector('#gen-status progress')?.value < {T}",
                               timeout=PATIENCE * 1000)

        def step() -> int:
            return page.evaluate("document.querySelector('#gen-status progress').value")

        per_step = StepCost(pid, step).measure()
        closed_at, at_step = cpu_seconds(pid), step()
        page.close()
        wait_for(lambda: idle(pid), "the server to go idle", poll=0)
        spent, rest = cpu_seconds(pid) - closed_at, (T - at_step) * per_step
        browser.close()
    assert spent < 0.25 * rest, f"{spent:.1f} CPU s after the tab closed; the rest of the run would take {rest:.1f}"
