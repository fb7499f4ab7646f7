"""The 2-D lab's endpoints through a real server (``python app.py``, gradio_client): /toy_train streams and returns
the losses, /toy_sample returns the data and the samples as [x, y] lists, bad data get messages naming what was
wrong, and the server keeps serving."""

from __future__ import annotations

import math

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from serving import serving_tiny_model

DATA = ["preset", "two moons", "DDPM", None, None, ""]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serving_tiny_model(tmp_path_factory.mktemp("lab-app"), 20) as (url, _, _):
        yield url


def train_args(*, data=DATA, count=200, steps=200, timesteps=100):
    return (*data, count, 0, "linear", timesteps, 1e-4, 0.02, 32, 2, steps, 3e-3, 0)


def test_train_then_sample(server):
    client = Client(server, verbose=False)
    out = client.predict(*train_args(), api_name="/toy_train")
    losses = out[5]
    assert losses["steps"] == 200 and len(losses["losses"]) == 200
    assert all(math.isfinite(v) for v in losses["losses"])
    assert losses["noise_energy_distance"] > 0
    more = client.predict(100, api_name="/toy_continue")[5]
    assert more["steps"] == 300 and more["losses"][:200] == losses["losses"]
    sampled = client.predict("ddim", 20, "posterior", True, 50, 0, 50, "score", api_name="/toy_sample")[4]
    assert len(sampled["data"]) == 200 and len(sampled["samples"]) == 50
    assert all(len(p) == 2 and all(math.isfinite(v) for v in p) for p in sampled["samples"])


def test_points_sent_as_text(server):
    client = Client(server, verbose=False)
    text = "x,y\n" + "\n".join(f"{i / 10},{(i % 5) / 10}" for i in range(40))
    out = client.predict(*train_args(data=["text", "two moons", "DDPM", None, None, text], steps=20),
                         api_name="/toy_train")
    assert out[5]["steps"] == 20


@pytest.mark.parametrize("data, count, message", [
    (["text", "two moons", "DDPM", None, None, "1,2\n3,x\n"], 200, "line 2 of the CSV must be two numbers"),
    (["text", "two moons", "DDPM", None, None, "[[1, 2], [NaN, 1]]"], 200, "point 2 holds NaN"),
    (["drawing", "two moons", "DDPM", None, None, ""], 200, "the drawing is blank"),
    (["csv", "two moons", "DDPM", None, None, ""], 200, "upload a CSV file"),
    (["preset", "circles", "DDPM", None, None, ""], 200, "data set must be one of"),
    (DATA, 10**6, "number of data points must be a whole number in 50…5000"),
])
def test_bad_data_gets_a_message(server, data, count, message):
    client = Client(server, verbose=False)
    with pytest.raises(AppError, match=message):
        client.predict(*train_args(data=data, count=count), api_name="/toy_train")


def test_bad_settings_and_sampling_first(server):
    client = Client(server, verbose=False)
    with pytest.raises(AppError, match="steps must be a whole number in 1…20000"):
        client.predict(*train_args(steps=10**9), api_name="/toy_train")
    with pytest.raises(AppError, match="T \\(timesteps\\) must be a whole number"):
        client.predict(*train_args(timesteps="many"), api_name="/toy_train")
    with pytest.raises(AppError, match="press Train first"):
        client.predict("ddpm", 20, "posterior", True, 50, 0, 10, "score", api_name="/toy_sample")
    assert client.predict(*train_args(steps=10), api_name="/toy_train")[5]["steps"] == 10  # still serving
