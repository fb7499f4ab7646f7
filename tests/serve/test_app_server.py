"""``python app.py`` as a real server on a free localhost port, driven through every API endpoint with gradio_client."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
from conftest import make_tiny_config, perturb, seeded_init, wait_for
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from serving import ENDPOINTS, ROOT, log_trouble, serving_app

from ddpm_app.diffusion.schedule import ScheduleConfig
from ddpm_app.io.model_folder import DiffusionConfig, save_pretrained
from ddpm_app.models import UNet

PHOTO = ROOT / "ddpm_app" / "assets" / "landscape.png"
T = 3000  # enough DDPM steps that a run is surely still going when it is stopped, however slow the machine


def test_log_trouble_finds_what_gradio_writes():
    log = """* Running on local URL:  http://127.0.0.1:7860
/venv/gradio/utils.py:1042: UserWarning: Expected 2 arguments for function <lambda>, received 1.
  warnings.warn(
Traceback (most recent call last):
  File "app.py", line 1
A function (show_stopped) returned too many output values (needed: 4, returned: 7). Ignoring extra values.
A  function (frame) didn't return enough output values (needed: 6, returned: 2).
A run of 20 steps finished
"""
    assert log_trouble(log) == [log.splitlines()[i] for i in (1, 2, 3, 5, 6)]
    assert log_trouble("* Running on local URL:  http://127.0.0.1:7860\nloaded faces\n") == []


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """app.py serving two tiny models ("faces" 16×16 RGB with T = 300, "small" 8×8 grey), and its URL."""
    root = tmp_path_factory.mktemp("server")
    weights = root / "weights"
    for name, size, channels, timesteps in (("faces", 16, 3, T), ("small", 8, 1, 10)):
        config = DiffusionConfig(make_tiny_config(image_size=size, in_channels=channels),
                                 ScheduleConfig(timesteps=timesteps), training={"dataset": "noise"})
        save_pretrained(perturb(seeded_init(lambda: UNet(config.model))), config, weights / name)
    with serving_app(weights, root / "app.log") as (url, _):
        yield url


@pytest.mark.slow
def test_every_endpoint_through_gradio_client(server: str):
    client = Client(server, verbose=False)
    named = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert named == ENDPOINTS

    # generate: the final images, the seed used, and the frame slider at the last stored step
    x_t, x0, eps, status, seed, slider = client.predict("ddim", 6, 0.0, 11, 2, True, False, api_name="/generate")
    assert seed == "11" and "Done" in status and slider["value"] == 6  # frames numbered from 1
    assert Image.open(x_t).size == Image.open(x0).size == Image.open(eps).size
    again = client.predict("ddim", 6, 0.0, 11, 2, True, False, api_name="/generate")
    assert Image.open(again[0]).tobytes() == Image.open(x_t).tobytes()  # same seed, same images

    f_xt, f_x0, label, *_ = client.predict(3, api_name="/frame")
    assert "frame 3/6" in label and Image.open(f_xt).size == Image.open(x_t).size
    assert Image.open(client.predict(api_name="/export_gif")).n_frames == 6
    assert Image.open(client.predict(api_name="/export_png")).size == tuple(32 * n for n in Image.open(x_t).size)
    if importlib.util.find_spec("imageio_ffmpeg"):
        assert Path(client.predict(api_name="/export_mp4")).stat().st_size > 0
    else:  # MP4 needs imageio-ffmpeg: without it the endpoint says so
        with pytest.raises(AppError, match="MP4 export needs the imageio-ffmpeg package"):
            client.predict(api_name="/export_mp4")

    # noise a photo, then denoise it
    q_x0, q_eps, q_xt, numbers, strip, plot, start, note = client.predict(
        handle_file(str(PHOTO)), 40, True, 5, api_name="/noise")
    assert "t = 40" in numbers and "noise seed 5" in numbers and Image.open(q_xt).size == (16, 16)
    assert Image.open(plot).width > Image.open(plot).height and Image.open(strip).width > Image.open(strip).height
    sd = client.predict("ddim", 10, 0.0, 3, True, api_name="/denoise")
    assert "PSNR" in sd[3] and sd[4] == "3" and sd[5]["value"] == 10
    assert "SDEdit from t = 40, DDIM, 10 steps" in client.predict(1, api_name="/frame")[2]

    # models: switch this client's model; a Hub download fails cleanly (offline) and keeps it
    summary, card, samples, header, t_slider, steps, sd_steps, batch, clip, sd_clip, eta, sd_eta, pick = client.predict(
        "small", api_name="/select_model")
    assert "small" in header and t_slider["maximum"] == 10 and steps["value"] == sd_steps["value"] == 10
    assert batch["value"] == 4 and clip["value"] is sd_clip["value"] is True
    assert eta["value"] == sd_eta["value"] == 0
    with pytest.raises(AppError, match="the current model stays loaded"):
        client.predict("someone/nothing-here", api_name="/download_model")
    x_small = client.predict("ddpm", 1, 0.0, 1, 1, True, False, api_name="/generate")[0]
    assert Image.open(x_small).size == (8, 8)  # one 8×8 grey image from the small model


@pytest.mark.slow
def test_teaching_endpoints_through_gradio_client(server: str):
    client = Client(server, verbose=False)
    photo = handle_file(str(PHOTO))

    # the training view: Algorithm 1 on the photo, then its loss against t
    x0, eps, x_t, pred, heat, numbers, plot = client.predict(photo, 120, 4, api_name="/train_step")
    assert "t = 120" in numbers and "noise seed 4" in numbers and Image.open(heat).size == (16, 16)
    plot, summary = client.predict(photo, 120, api_name="/loss_curve")
    assert "25 timesteps, 3 ε each" in summary and "No held-out curve" in summary
    assert Image.open(plot).width > Image.open(plot).height

    # the likelihood of the photo: progress, then the bound and what it means
    status, plot, verdict = client.predict(photo, False, 2, True, api_name="/likelihood")
    assert "Done" in status and "bits/dim (estimate from 50 timesteps)" in verdict
    job = client.submit(photo, False, 3, True, api_name="/likelihood")
    job.result()
    assert any("progress" in out[0] and "Done" not in out[0] for out in job.outputs())  # streamed progress

    # a Generate run and a Denoise run, kept apart; the reverse step explained in Frames
    client.predict("ddim", 6, 0.0, 11, 1, True, False, api_name="/generate")
    client.predict(photo, 40, True, 5, api_name="/noise")
    client.predict("ddim", 5, 0.0, 3, True, api_name="/denoise")
    f_xt, f_x0, label, update, terms, which, change = client.predict(3, api_name="/frame")
    assert which == "denoise" and "SDEdit" in label and "\\hat\\varepsilon" in update and Image.open(terms).width > 0
    assert Image.open(change).width > 0
    slider, *shown = client.predict("generate", api_name="/show_run")
    assert shown[5] == "generate" and "DDIM, 6 steps" in shown[2]

    # runs side by side: pin DDIM-6, run DDIM-3 from the same seed, scrub both
    caption = client.predict(api_name="/pin")[0]
    assert "Pinned **A**: DDIM, 6 steps" in caption
    client.predict("ddim", 3, 0.0, 11, 1, True, False, api_name="/generate")
    image, caption = client.predict(150, api_name="/compare")
    assert "**B** (latest): DDIM, 3 steps" in caption and Image.open(image).width > 4 * 16

    # interpolation and a slide figure of it
    strip, status = client.predict(1, 2, 5, 4, 0.0, True, api_name="/interpolate")
    assert "Done" in status and Image.open(strip).width > 5 * 16
    figure = Image.open(client.predict("interpolation", api_name="/export_figure"))
    assert figure.height >= 512 and figure.width >= 5 * 512
    with pytest.raises(AppError, match="upload a photo"):
        client.predict(None, 3, 0, api_name="/train_step")


@pytest.mark.slow
def test_errors_are_messages_and_the_server_keeps_serving(server: str):
    client = Client(server, verbose=False)
    with pytest.raises(AppError, match="number of images must be a whole number in 1…4, got 9"):
        client.predict("ddim", 5, 0.0, 1, 9, True, False, api_name="/generate")
    with pytest.raises(AppError, match="η \\(eta\\) must be a number in 0…1, got 3.0"):
        client.predict("ddim", 5, 3.0, 1, 1, True, False, api_name="/generate")
    with pytest.raises(AppError, match="seed must be a whole number"):
        client.predict("ddim", 5, 0.0, -7, 1, True, False, api_name="/generate")
    with pytest.raises(AppError, match="Noise a photo in the Forward tab first"):
        client.predict("ddim", 5, 0.0, 1, True, api_name="/denoise")
    with pytest.raises(AppError, match="nothing to export yet"):
        client.predict(api_name="/export_gif")
    assert "Done" in client.predict("ddim", 3, 0.0, 1, 1, True, False, api_name="/generate")[3]


@pytest.mark.slow
def test_cancelling_a_run_keeps_the_computed_steps(server: str):
    client = Client(server, verbose=False)
    job = client.submit("ddpm", 1, 0.0, 21, 4, True, False, api_name="/generate")
    wait_for(job.outputs, "the first preview")
    job.cancel()
    wait_for(job.done, "the job to end")
    # the stretch of steps in progress when Stop arrived finishes, then the run is marked stopped
    label = wait_for(lambda: stopped_label(client), "the run to be marked stopped", poll=0.1)
    done = int(label.split("stopped after ")[1].split(" ")[0])
    assert 1 <= done < T
    time.sleep(1.0)  # not a deadline: nothing may run on after Stop, however long we look
    assert client.predict(1, api_name="/frame")[2] == label
    assert Image.open(client.predict(api_name="/export_gif")).n_frames == min(done, 120)  # the GIF's frame cap


def stopped_label(client: Client) -> str | None:
    """The frame label of this client's run once it says the run was stopped, else None."""
    label = client.predict(1, api_name="/frame")[2]
    return label if "stopped after" in label else None
