"""Gradio's record of a session (its State values, the latest value of every component) goes once nobody holds it: a
page or client that left goes after a grace time, a caller with no heartbeat once unused for the time-to-live; an
open page keeps everything, however long it is idle."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import gradio as gr
import httpx
import pytest
from conftest import PATIENCE
from gradio.state_holder import StateHolder
from gradio_client import Client
from serving import serving_tiny_model

from ddpm_app.serve.sessions import GRACE_S, Sessions

GRACE, TTL = 30.0, 1800.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def holder() -> StateHolder:
    """Gradio's own session store, for a page with one gr.State (its ``state``)."""
    with gr.Blocks() as demo:
        state = gr.State([])
    holder = StateHolder()
    holder.set_blocks(demo)
    holder.state = state
    return holder


def used(holder: StateHolder, session: str, seconds_ago: float) -> None:
    """``session`` made a request ``seconds_ago`` (Gradio creates its record on the first)."""
    holder[session]
    holder.time_last_used[session] = datetime.now() - timedelta(seconds=seconds_ago)


def test_a_session_that_left_goes_after_the_grace_time_with_its_results(holder):
    clock, left = Clock(), []
    sessions = Sessions(left.append, TTL, grace=GRACE, clock=clock)
    used(holder, "tab", 0)
    holder["tab"][holder.state._id].append("the user's state")
    sessions.connected("tab")
    sessions.disconnected("tab")  # the tab closed
    clock.now = GRACE
    assert sessions.sweep(holder) == [] and "tab" in holder
    clock.now = GRACE + 0.1
    assert sessions.sweep(holder) == ["tab"] and left == ["tab"]
    assert "tab" not in holder.session_data and "tab" not in holder.time_last_used
    assert holder["tab"][holder.state._id] == []  # a request now starts afresh


def test_an_open_page_keeps_its_session_however_long_it_is_idle(holder):
    clock = Clock()
    sessions = Sessions(lambda session: pytest.fail(f"{session} released"), TTL, grace=GRACE, clock=clock)
    used(holder, "page", 10 * TTL)
    sessions.connected("page")
    sessions.connected("page")  # a second heartbeat of the same session (a reconnection before the first ended)
    sessions.disconnected("page")
    clock.now = 10 * TTL
    assert sessions.sweep(holder) == [] and "page" in holder


def test_a_page_that_connects_again_within_the_grace_time_keeps_its_session(holder):
    clock = Clock()
    sessions = Sessions(lambda session: pytest.fail(f"{session} released"), TTL, grace=GRACE, clock=clock)
    used(holder, "page", 0)
    sessions.connected("page")
    sessions.disconnected("page")
    clock.now = GRACE / 2
    sessions.connected("page")
    clock.now = 10 * GRACE
    assert sessions.sweep(holder) == [] and "page" in holder


def test_a_caller_without_a_heartbeat_goes_once_unused_for_the_time_to_live(holder):
    left = []
    sessions = Sessions(left.append, TTL, grace=GRACE, clock=Clock())
    used(holder, "fresh", TTL - 60)
    used(holder, "stale", TTL + 1)
    assert sessions.sweep(holder) == ["stale"] and left == ["stale"]
    assert list(holder.session_data) == ["fresh"]


# --- on a real server --------------------------------------------------------------------------------------------

def recorded(url: str, session: str) -> bool:
    """Whether the server still holds Gradio's record of ``session`` (its deep-link route answers "" when not)."""
    answer = httpx.get(f"{url}gradio_api/deep_link", params={"session_hash": session}, timeout=PATIENCE)
    answer.raise_for_status()
    return answer.json() != ""


@pytest.mark.slow
def test_a_closed_clients_session_is_forgotten_and_an_open_ones_is_kept(tmp_path):
    """Gradio kept a closed session's record, inputs and State values included, until 10,000 newer sessions pushed it
    out; now it goes GRACE_S after the client closes, while a client that stays open, idle all that time, keeps its
    run."""
    with serving_tiny_model(tmp_path, 20) as (url, _, _):
        leaving, staying = Client(url, verbose=False), Client(url, verbose=False)
        for client in (leaving, staying):
            client.predict("ddim", 4, 0.0, 1, 2, True, False, api_name="/generate")
            assert recorded(url, client.session_hash)
        leaving.close()  # its heartbeat connection closes
        closed = time.monotonic()
        while recorded(url, leaving.session_hash):
            assert time.monotonic() - closed < PATIENCE, "the closed client's session was never forgotten"
            time.sleep(0.5)
        assert time.monotonic() - closed > GRACE_S  # not before the grace time
        assert recorded(url, staying.session_hash)  # idle for longer than the grace time, and kept
        assert "frame 2/4" in staying.predict(2, api_name="/frame")[2]
        staying.close()
