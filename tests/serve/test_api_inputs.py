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
from pathlib import Path

import httpx
import pytest
from conftest import PATIENCE
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from serving import ENDPOINTS, ROOT, serving_tiny_model

from ddpm_app.text import text

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


NOT_READ = ("photo: send an uploaded image file (gradio_client: handle_file(path)) or a data: URL "
            "(data:image/png;base64,…); other paths are not read")
PHOTO_ENDPOINTS = {"/noise": [5, True, 3], "/train_step": [5, 0], "/loss_curve": [5], "/likelihood": [False, 0, True]}


def test_photo_paths_that_are_no_upload_are_never_read_and_the_answer_tells_nothing(app):
    """The repro: an untagged {"path": …} (and a tagged one) naming a server file. A file, a folder, a missing
    file, ``..`` out of the upload folder, a link in it to a file outside, an over-long name and a NUL byte all
    get one message, on every endpoint that takes a photo; an uploaded file works, tagged or not."""
    url, log = app
    from gradio.utils import get_upload_folder

    uploads = Path(get_upload_folder())  # the server's too: the same environment
    link = uploads / f"link-{uuid.uuid4().hex}" / "photo.png"
    link.parent.mkdir(parents=True)
    link.symlink_to(PHOTO)
    try:
        paths = [str(PHOTO), str(PHOTO.relative_to(ROOT)), "weights/faces/samples.png", "../" * 8 + "etc/passwd",
                 "/etc/passwd", "/root/.ssh/id_rsa", "/no/such/file.png", "/etc", str(uploads),
                 f"{uploads}/../../etc/passwd", str(link), "a" * 300, "/tmp/a\x00b"]
        for endpoint, rest in PHOTO_ENDPOINTS.items():
            for path in paths:
                for value in ({"path": path}, {"path": path, "meta": {"_type": "gradio.FileData"}}):
                    assert call(url, endpoint, [value, *rest]) == ("error", NOT_READ), (endpoint, value)
    finally:
        link.unlink()
        link.parent.rmdir()
    uploaded = httpx.post(url + "gradio_api/upload", files={"files": ("p.png", PHOTO.read_bytes(), "image/png")},
                          timeout=PATIENCE).json()[0]
    for value in ({"path": uploaded}, {"path": uploaded, "meta": {"_type": "gradio.FileData"}}):
        kind, outputs = call(url, "/noise", [value, 5, True, 3])
        assert kind == "complete" and "noise seed 3" in outputs[3]
    assert "Traceback" not in log.read_text()


HUGE_INT = 10**400  # json.dumps writes all 401 digits; Python's JSON reader makes it an int again
# one value of every JSON type, and the strings a client might try in a number field
KINDS = {"null": None, "bool": True, "int": 10**6, "huge int": HUGE_INT, "huge float": 1e308, "NaN": math.nan,
         "-Infinity": -math.inf, "'NaN'": "NaN", "'Infinity'": "Infinity", "non-whole": 2.5, "numeric string": "3",
         "blank": "", "100 kB string": "7" * 100_000, "list": [[1, 2], [3]], "object": {"a": 1},
         "wrong choice": "no-such-choice"}
SEED_OK, FLAG_OK = ("null", "blank", "int"), ("bool",)
TEXT_OK = ("null", "'NaN'", "'Infinity'", "numeric string", "blank")  # short text where the data set needs none
UPLOADED = "uploaded photo"  # a placeholder: the fuzz test uploads the photo once and sends Gradio's file object
# each named endpoint's fields in order: (a regex the message must start with, a valid value, the kinds valid there)
FIELDS = {
    "/generate": [("sampler must", "ddim", ()), ("DDIM steps must", 3, ()), ("η \\(eta\\) must", 0.0, ()),
                  ("seed must", 1, SEED_OK), ("number of images must", 1, ()), ("clip x̂₀ must", True, FLAG_OK),
                  ("show ε̂ must", False, FLAG_OK)],
    "/denoise": [("sampler must", "ddim", ()), ("DDIM steps must", 3, ()), ("η \\(eta\\) must", 0.0, ()),
                 ("seed must", 1, SEED_OK), ("clip x̂₀ must", True, FLAG_OK)],
    "/noise": [("photo", UPLOADED, ("null",)), ("t must", 5, ()), ("fix the noise must", True, FLAG_OK),
               ("seed must", 3, SEED_OK)],
    "/train_step": [("(upload a )?photo", UPLOADED, ()), ("t must", 5, ()), ("seed must", 0, SEED_OK)],
    "/loss_curve": [("(upload a )?photo", UPLOADED, ()), ("t must", 5, ())],
    "/likelihood": [("(upload a )?photo", UPLOADED, ()), ("exact must", False, FLAG_OK), ("seed must", 0, SEED_OK),
                    ("clip x̂₀ must", True, FLAG_OK)],
    "/frame": [("frame must", 1, ())],
    "/show_run": [("run must", "generate", ())],
    "/compare": [("t must", 5, ())],
    "/interpolate": [("seed must", 1, SEED_OK), ("seed must", 2, SEED_OK), ("number of images must", 2, ()),
                     ("DDIM steps must", 2, ()), ("η \\(eta\\) must", 0.0, ()), ("clip x̂₀ must", True, FLAG_OK)],
    "/export_figure": [("view must", "training", ())],
    "/select_model": [("model must", "faces", ())],
    "/download_model": [("Hub model id must", "someone/model", ())],
    "/load_folder": [("(model folder must|enter a model folder|.* is outside the weights folders|no folder)", "faces",
                      ())],
    "/toy_forward": [("t must", 5, ()), ("point must", 1, ()), ("schedule must", "linear", ()),
                     ("T \\(timesteps\\) must", 10, ()), ("β start must", 1e-4, ()), ("β end must", 0.02, ())],
    "/toy_train": [("data source must", "preset", ()), ("data set must", "two moons", ()),
                   ("word must", "DDPM", TEXT_OK), ("drawing must", None, ("null",)),
                   ("CSV file must", None, ("null",)), ("pasted points must", "", TEXT_OK + ("100 kB string", "wrong choice")),
                   ("number of data points must", 50, ()), ("data seed must", 0, ("int",)),
                   ("schedule must", "linear", ()), ("T \\(timesteps\\) must", 10, ()), ("β start must", 1e-4, ()),
                   ("β end must", 0.02, ()), ("width must", 8, ()), ("depth must", 1, ()), ("steps must", 1, ()),
                   ("learning rate must", 1e-3, ()), ("seed must", 0, ("int",))],
    "/toy_continue": [("steps must", 1, ())],
    "/toy_sample": [("sampler must", "ddim", ()), ("DDIM steps must", 2, ()),
                    ("reverse variance σ² must", "posterior", ()), ("clip x̂₀ must", True, FLAG_OK),
                    ("number of points must", 10, ()), ("seed must", 0, ("int",)), ("t of the field must", 1, ()),
                    ("arrows must", "score", ())],
    **{f"/toy_export_{what}_{kind}": [] for what in ("training", "paths") for kind in ("gif", "mp4")},
    "/pin": [], "/export_gif": [], "/export_mp4": [], "/export_png": [], "/rescan_models": [],
}


def test_fuzz_every_endpoint_field_and_json_type_gets_a_message_naming_the_field(app):
    """Every named endpoint × field × kind of JSON value, one call at a time from one user who has a photo, a pinned
    run and a newer one, and a noised photo (so that /frame, /compare and /denoise check their values): a wrong value is an error whose message
    starts with the field's name; a value valid there (a blank seed, a flag) is answered. Then every endpoint with
    one value too many and one too few."""
    url, log = app
    assert set(FIELDS) == ENDPOINTS
    session = uuid.uuid4().hex[:12]
    uploaded = httpx.post(url + "gradio_api/upload", files={"files": ("p.png", PHOTO.read_bytes(), "image/png")},
                          timeout=PATIENCE).json()[0]
    photo = {"path": uploaded, "meta": {"_type": "gradio.FileData"}, "orig_name": "p.png"}
    for endpoint, data in (("/generate", ["ddim", 3, 0.0, 1, 1, True, False]), ("/pin", []),
                           ("/generate", ["ddim", 2, 0.0, 2, 1, True, False]), ("/noise", [photo, 5, True, 3]),
                           ("/toy_train", [v for _, v, _ in FIELDS["/toy_train"]])):
        assert call(url, endpoint, data, session)[0] == "complete"
    log_size = log.stat().st_size
    wrong, cases = [], 0
    for endpoint, fields in FIELDS.items():
        valid = [photo if value == UPLOADED else value for _, value, _ in fields]
        for i, (message, _, valid_kinds) in enumerate(fields):
            for kind, value in KINDS.items():
                answer = call(url, endpoint, valid[:i] + [value] + valid[i + 1:], session)
                cases += 1
                ok = (answer[0] == "complete" if kind in valid_kinds else answer[0] == "error"
                      and isinstance(answer[1], str) and re.match(message, answer[1]) and len(answer[1]) < 1000)
                if not ok:
                    wrong.append((endpoint, i, kind, str(answer)[:200]))
        count = f"{endpoint} takes {len(fields)} value"
        for data in (valid + [1], valid[:-1]) if fields else (valid + [1],):
            answer = call(url, endpoint, data, session)
            cases += 1
            if answer[0] != "error" or not (answer[1] or "").startswith(count) or f"got {len(data)}" not in answer[1]:
                wrong.append((endpoint, "count", len(data), str(answer)[:200]))
    assert not wrong, "\n".join(map(str, wrong[:40]))
    assert cases > 550
    # still serving; nothing reached Gradio's generic error handler, and no value sent was copied into the log
    assert "Done" in call(url, "/generate", ["ddim", 3, 0.0, 2, 1, True, False])[1][3]
    assert "Traceback" not in log.read_text()
    assert log.stat().st_size - log_size < 100_000


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


def choose_language(url: str, language: str, session: str) -> None:
    """What the page's language switch does, the way the page does it (through the queue: the event is not in the
    API): this session's user reads ``language`` from now on."""
    config = httpx.get(f"{url}config", timeout=PATIENCE).json()
    switch = next(c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "language")
    event = next(d["id"] for d in config["dependencies"]
                 if d["backend_fn"] and d["inputs"][:1] == [switch] and [switch, "change"] in d["targets"])
    joined = httpx.post(f"{url}gradio_api/queue/join", timeout=PATIENCE, json={
        "data": [language, 5, None], "fn_index": event, "trigger_id": switch, "session_hash": session})
    joined.raise_for_status()
    with httpx.stream("GET", f"{url}gradio_api/queue/data", params={"session_hash": session}, timeout=PATIENCE) as s:
        for line in s.iter_lines():
            if line.startswith("data:") and json.loads(line.removeprefix("data:")).get("msg") == "process_completed":
                assert json.loads(line.removeprefix("data:"))["success"]
                return
    raise AssertionError("the language switch got no answer")


@pytest.mark.parametrize("value, key", [
    ({"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, "upload.photo_not_read"),  # Gradio's own check
    ({"path": "/etc/passwd"}, "upload.photo_not_read"),  # the component's
    ("https://example.com/photo.png", "upload.photo_not_fetched"),
    ("data:image/png;base64,!!!", "error.data_url_base64"),  # the image's own check, before any handler
])
def test_a_photo_refused_before_the_handler_is_answered_in_the_users_language(app, value, key):
    """A photo is checked as Gradio first reads it, before any handler runs and knows the user: the message still
    comes in the language the user's page chose, and in English to a session that chose none (an API client)."""
    url, log = app
    chinese, english = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    choose_language(url, "zh-CN", chinese)
    assert call(url, "/noise", [value, 5, True, 3], chinese) == ("error", text(key, "zh-CN"))
    assert call(url, "/noise", [value, 5, True, 3], english) == ("error", text(key))
    assert text(key, "zh-CN") != text(key)
    assert "Traceback" not in log.read_text()


def test_the_smaller_input_holes_are_messages(app):
    """A 5 MB run name is quoted in 40 characters, escaped, and not copied into the log; a 300-character folder
    name is a message; /compare's t must be the paper's, in 1…T; DDPM refuses DDIM settings that make no sense
    even though it does not use them."""
    url, log = app
    session = uuid.uuid4().hex[:12]
    for endpoint, data in (("/generate", ["ddim", 3, 0.0, 1, 1, True, False]), ("/pin", []),
                           ("/generate", ["ddim", 2, 0.0, 2, 1, True, False])):
        assert call(url, endpoint, data, session)[0] == "complete"
    size = log.stat().st_size
    kind, message = call(url, "/show_run", ["<b>" + "x" * 5_000_000], session)
    assert kind == "error" and message.startswith("run must be one of generate, denoise, got '&lt;b&gt;xxx")
    assert len(message) < 200 and log.stat().st_size - size < 10_000
    kind, message = call(url, "/load_folder", ["x" * 300])
    assert kind == "error" and message.startswith("no folder 'xxxxx") and "the current model stays loaded" in message
    for t in (0, T + 1, 5000, 10**9):
        assert call(url, "/compare", [t], session) == ("error", f"t must be a whole number in 1…{T}, got {t}")
    assert call(url, "/compare", [T], session)[0] == "complete"
    assert call(url, "/generate", ["ddpm", "garbage", 0.0, 1, 1, True, False]) == (
        "error", f"DDIM steps must be a whole number in 1…{T}, got 'garbage'")
    assert call(url, "/generate", ["ddpm", 3, "NaN", 1, 1, True, False]) == (
        "error", "η (eta) must be a number in 0…1, got 'NaN'")
    assert call(url, "/generate", ["ddim", "3", 0.0, 1, 1, True, False]) == (
        "error", f"DDIM steps must be a whole number in 1…{T}, got '3'")
    assert f"Done</b>: {T} steps" in call(url, "/generate", ["ddpm", 3, 0.5, 1, 1, True, False])[1][3]  # all T


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
