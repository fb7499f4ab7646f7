"""``python app.py`` driven with raw HTTP and gradio_client: every endpoint answers every kind of wrong value with
a message naming the field, seeds are never rounded, Hub ids and photos are checked however they arrive, and a
user's run is released when the user leaves. The server keeps serving throughout."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import struct
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import PATIENCE
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from test_app_server import ROOT, serving_tiny_model

pytestmark = pytest.mark.slow

T = 20
PHOTO = ROOT / "ddpm_app" / "assets" / "portrait.png"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """app.py serving a tiny 16×16 model (T = 20): (url, log)."""
    with serving_tiny_model(tmp_path_factory.mktemp("api"), T) as (url, _, log):
        yield url, log


def call(url: str, endpoint: str, data: list, session: str | None = None) -> tuple[str, object]:
    """One request through Gradio's HTTP API: ("complete", outputs) or ("error", the message or None)."""
    body = json.dumps({"data": data, "session_hash": session or uuid.uuid4().hex[:12]})  # NaN, Infinity as is
    posted = httpx.post(f"{url}gradio_api/call{endpoint}", content=body, timeout=PATIENCE,
                        headers={"content-type": "application/json"})
    posted.raise_for_status()
    event = None
    with httpx.stream("GET", f"{url}gradio_api/call{endpoint}/{posted.json()['event_id']}", timeout=PATIENCE) as s:
        for line in s.iter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                data = json.loads(line.removeprefix("data:"))
                return event, data.get("error") if isinstance(data, dict) else data
    raise AssertionError(f"{endpoint}: the stream ended without an answer")


HUGE_INT = 10**400  # json.dumps writes all 401 digits; Python's JSON reader makes it an int again
BAD = {"string": "abc", "blank": "", "null": None, "NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf,
       "huge float": 1e308, "huge int": HUGE_INT, "nested list": [[1, 2], [3]], "object": {"a": 1}, "bool": True}
# each endpoint's fields: (name in the message, a valid value, the bad kinds that are valid there)
FIELDS = {
    "/generate": [("sampler", "ddim", ()), ("DDIM steps", 3, ()), ("η \\(eta\\)", 0.0, ()),
                  ("seed", 1, ("blank", "null")), ("number of images", 1, ()), ("clip x̂₀", True, ("bool",)),
                  ("show ε̂", False, ("bool",))],
    "/denoise": [("sampler", "ddim", ()), ("DDIM steps", 3, ()), ("η \\(eta\\)", 0.0, ()),
                 ("seed", 1, ("blank", "null")), ("clip x̂₀", True, ("bool",))],
    "/noise": [("photo", None, ("null",)), ("t", 5, ()), ("fix the noise", True, ("bool",)),
               ("seed", 3, ("blank", "null"))],
    "/frame": [("frame", 1, ())],
    "/select_model": [("model", "faces", ())],
    "/download_model": [("Hub model id", "someone/model", ())],
}


def test_every_endpoint_answers_every_kind_of_wrong_value_with_a_message_naming_the_field(app):
    url, log = app
    cases = [(endpoint, i, kind) for endpoint, fields in FIELDS.items() for i, (_, _, valid) in enumerate(fields)
             for kind in BAD if kind not in valid]

    def send(case):  # each case is a new user (Gradio's HTTP API streams one event per session at a time)
        endpoint, i, kind = case
        data = [value for _, value, _ in FIELDS[endpoint]]
        data[i] = BAD[kind]
        session = uuid.uuid4().hex[:12]
        if endpoint == "/frame":  # a run to pick frames from
            assert call(url, "/generate", ["ddim", 3, 0.0, 1, 1, True, False], session)[0] == "complete"
        return case, call(url, endpoint, data, session)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(send, cases))
    wrong = [(case, answer) for case, answer in answers
             if answer[0] != "error" or not isinstance(answer[1], str)
             or not re.match(FIELDS[case[0]][case[1]][0] + " must", answer[1])]
    assert not wrong, wrong[:5]
    assert len(answers) > 100
    # still serving, and nothing reached Gradio's generic error handler
    assert "Done" in call(url, "/generate", ["ddim", 3, 0.0, 2, 1, True, False])[1][3]
    assert "Traceback" not in log.read_text()


@pytest.mark.parametrize("seed", [1.5, 0.4, -0.6])
def test_fractional_seeds_are_refused_not_rounded(app, seed):
    url, _ = app
    client = Client(url, verbose=False)
    message = "seed must be a whole number in 0…4294967295, or −1 / blank for a random one"
    with pytest.raises(AppError, match=message):
        client.predict("ddim", 3, 0.0, seed, 1, True, False, api_name="/generate")
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(PHOTO)), 5, True, seed, api_name="/noise")
    client.predict(handle_file(str(PHOTO)), 5, True, 3, api_name="/noise")
    with pytest.raises(AppError, match=message):
        client.predict("ddim", 3, 0.0, seed, True, api_name="/denoise")
    assert client.predict("ddim", 3, 0.0, 7, 1, True, False, api_name="/generate")[4] == "7"


@pytest.mark.parametrize("repo_id", ["a/..", "a/.", "a/" + "b" * 95, "x" * 300, "<img src=x onerror=alert(1)>/b"])
def test_bad_hub_ids_get_a_short_escaped_message(app, repo_id):
    url, log = app
    kind, message = call(url, "/download_model", [repo_id])
    assert kind == "error" and message.startswith("Hub model id must look like 'user/model-name'"), message
    assert "the current model stays loaded" in message and len(message) < 250
    assert "<img" not in message and ("&lt;img" in message or "<" not in repo_id)
    assert "Traceback" not in log.read_text()


def png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def jpeg_bytes() -> bytes:
    out = io.BytesIO()
    Image.open(PHOTO).convert("RGB").save(out, "JPEG")
    return out.getvalue()


BAD_PHOTOS = {  # file contents → the message, whichever way the file arrives
    "bomb": (png_header(30_000, 30_000), "the image is too large \\(over 40,000,000 pixels\\)"),
    "zero width": (png_header(0, 10), "the image is empty \\(0×10 pixels\\)"),
    "truncated jpeg": (jpeg_bytes()[:300], "not a readable image"),
    "garbage": (b"garbage" * 50, "not a readable image \\(unknown or unsupported format\\)"),
    "eps": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "unknown or unsupported format"),
    "empty": (b"", "the file is empty"),
}


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.mark.parametrize("kind", BAD_PHOTOS)
def test_a_bad_photo_gets_the_same_message_by_upload_and_by_data_url(app, tmp_path: Path, kind):
    url, log = app
    data, message = BAD_PHOTOS[kind]
    (tmp_path / "photo.png").write_bytes(data)
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(tmp_path / "photo.png")), 5, True, 3, api_name="/noise")
    for value in ({"path": None, "url": data_url(data)}, data_url(data)):
        answer = call(url, "/noise", [value, 5, True, 3])
        assert answer[0] == "error" and re.search(message, answer[1] or ""), (kind, answer)
    assert "Traceback" not in log.read_text()


def test_photos_by_data_url_work_and_keep_the_upload_size_limit(app):
    url, _ = app
    good = data_url(PHOTO.read_bytes())
    answer = call(url, "/noise", [{"path": None, "url": good}, 5, True, 3])
    assert answer[0] == "complete" and "noise seed 3" in answer[1][3]
    # over the file limit, under the server's cap on request bodies (larger ones are answered 413 unread)
    too_big = "data:image/bmp;base64," + base64.b64encode(b"BM" + bytes(21_500_000)).decode()
    answer = call(url, "/noise", [{"path": None, "url": too_big}, 5, True, 3])
    assert answer == ("error", "the file is too large (20.5 MB; at most 20 MB)")
    upload = httpx.post(url + "gradio_api/upload", timeout=PATIENCE,
                        files={"files": ("big.bmp", b"BM" + bytes(21_900_000), "image/bmp")})
    assert upload.status_code == 413  # the same limit on the upload route


@pytest.mark.parametrize("value", [
    {"path": "http://127.0.0.1:9/photo.png", "meta": {"_type": "gradio.FileData"}},
    {"path": None, "url": "https://example.com/photo.png"},
    "https://example.com/photo.png",
    base64.b64encode(b"\x89PNG not a data URL").decode(),
    {"path": None},
    17,
])
def test_other_ways_of_sending_a_photo_are_refused_clearly(app, value):
    url, log = app
    kind, message = call(url, "/noise", [value, 5, True, 3])
    assert kind == "error" and message and message.startswith(("photos are not fetched from web addresses",
                                                              "photo must be an uploaded image file")), message
    assert "Traceback" not in log.read_text()


def test_a_users_run_is_released_when_the_user_leaves(app):
    url, _ = app
    leaving, staying = Client(url, verbose=False), Client(url, verbose=False)
    for client in (leaving, staying):
        client.predict("ddim", 4, 0.0, 1, 2, True, False, api_name="/generate")
        assert "frame 2/4" in client.predict(2, api_name="/frame")[2]
    session = leaving.session_hash
    assert "frame 2/4" in call(url, "/frame", [2], session)[1][2]  # the same user, by raw HTTP
    leaving.close()  # its heartbeat connection closes: the page's unload event
    deadline = time.monotonic() + PATIENCE  # a guard against hanging only
    while "no longer kept" not in call(url, "/frame", [1], session)[1][2]:
        assert time.monotonic() < deadline, "the run of a user who left was never released"
        time.sleep(0.2)
    assert "frame 2/4" in staying.predict(2, api_name="/frame")[2]
