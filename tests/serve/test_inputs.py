"""The value checks every handler uses: any JSON value in, a clean value or a message naming the field and its
allowed range out, with one error class for a user's bad value and a config file's; seeds are never rounded; Hub ids
are checked before anything touches the disk or the network; messages quote only a short prefix of what was sent,
and the page gets it HTML-escaped."""

from __future__ import annotations

import math

import gradio as gr
import pytest

from ddpm_app import checks
from ddpm_app.checks import InvalidValue, shown
from ddpm_app.diffusion.samplers import SamplerSettings
from ddpm_app.diffusion.schedule import ScheduleConfig
from ddpm_app.serve import inputs
from ddpm_app.ui.widgets import uploaded_file, user_error, user_errors

# every kind of JSON value a client can send that is not a number: strings (numeric ones too), blanks, null, lists,
# objects, bools
NOT_NUMBERS = ["abc", "7", " 4 ", "0.5", "NaN", "Infinity", "", " ", None, [1], [[1]], {}, {"a": 1}, True, False]
NOT_FINITE = [math.nan, math.inf, -math.inf, 1e308, 10**400, -(10**400)]


@pytest.mark.parametrize("value", NOT_NUMBERS + NOT_FINITE + [2.5, -1, 11])
def test_whole_number_refuses_anything_but_a_whole_number_in_range(value):
    with pytest.raises(InvalidValue, match=r"^frame must be a whole number in 0…10, got "):
        checks.whole_number(value, "frame", 0, 10)


@pytest.mark.parametrize("value, expected", [(0, 0), (10, 10), (3.0, 3)])
def test_whole_number_accepts_whole_numbers(value, expected):
    assert checks.whole_number(value, "frame", 0, 10) == expected


@pytest.mark.parametrize("value", NOT_NUMBERS + NOT_FINITE + [-0.01, 1.01])
def test_real_number_refuses_non_numbers_and_values_out_of_range(value):
    with pytest.raises(InvalidValue, match=r"^η \(eta\) must be a number in 0…1, got "):
        checks.real_number(value, "η (eta)", 0.0, 1.0)


def test_choice_and_flag_take_only_their_values():
    assert checks.choice("ddim", "sampler", ("ddpm", "ddim")) == "ddim"
    assert checks.flag(False, "clip") is False
    for value in ["DDIM", 1, None, ["ddim"], {"ddim": 1}]:
        with pytest.raises(InvalidValue, match="sampler must be one of ddpm, ddim"):
            checks.choice(value, "sampler", ("ddpm", "ddim"))
    for value in ["true", 1, 0, None, [True]]:
        with pytest.raises(InvalidValue, match="clip must be true or false"):
            checks.flag(value, "clip")


def test_text_takes_strings_up_to_its_length_and_null_as_empty_text():
    assert checks.text(None, "word", 5) == "" and checks.text("DDPM", "word", 5) == "DDPM"
    for value in ("longer", 5, ["a"], {"a": 1}, True):
        with pytest.raises(InvalidValue, match=r"^word must be text of at most 5 characters, got "):
            checks.text(value, "word", 5)


def test_a_config_files_bad_value_is_the_same_error_as_a_users_and_the_page_says_it_alike():
    """One error class: config.json's timesteps 1.5 and a user's 1.5 both name the field and its range, and the UI
    turns either into the message the user sees."""
    for bad in (lambda: ScheduleConfig(timesteps=1.5), lambda: checks.whole_number(1.5, "timesteps", 1, 10_000)):
        with pytest.raises(gr.Error, match=r"timesteps must be a whole number in 1…\d+, got 1\.5"):
            with user_errors():
                bad()


@pytest.mark.parametrize("value", [1.5, 0.4, -0.6, -1.5, 2**32, -2, "1.5", "12", "-1", math.nan, math.inf, [1], {},
                                   True])
def test_seeds_are_never_rounded(value):
    with pytest.raises(InvalidValue, match=r"seed must be a whole number in 0…4294967295, or −1 / blank for a "
                                         r"random one; got "):
        checks.resolve_seed(value)


def test_blank_null_and_minus_one_draw_a_seed_and_whole_numbers_are_kept():
    for value in (None, "", "  ", -1, -1.0):
        assert checks.requested_seed(value) is None
        assert 0 <= checks.resolve_seed(value) < 2**31
    assert [checks.resolve_seed(v) for v in (0, 7.0, 12, 2**32 - 1)] == [0, 7, 12, 2**32 - 1]


def test_sampler_settings_use_the_same_checks_and_name_each_setting():
    with pytest.raises(InvalidValue, match=r"DDIM steps must be a whole number in 1…20, got 'ten'"):
        SamplerSettings.checked("ddim", "ten", 0.0, True, 20)
    with pytest.raises(InvalidValue, match=r"η \(eta\) must be a number in 0…1, got nan"):
        SamplerSettings.checked("ddim", 5, math.nan, True, 20)
    with pytest.raises(InvalidValue, match=r"clip x̂₀ must be true or false, got 'no'"):
        SamplerSettings.checked("ddim", 5, 0.0, "no", 20)
    with pytest.raises(InvalidValue, match=r"sampler must be one of ddpm, ddim, got \[\['ddim'\]\]"):
        SamplerSettings.checked([["ddim"]], 5, 0.0, True, 20)


@pytest.mark.parametrize("steps, eta, message", [("garbage", 0.0, r"DDIM steps must be a whole number in 1…20, got 'garbage'"),
                                                 (0, 0.0, r"DDIM steps must be a whole number in 1…20, got 0"),
                                                 (5, "NaN", r"η \(eta\) must be a number in 0…1, got 'NaN'"),
                                                 (5, math.nan, r"η \(eta\) must be a number in 0…1, got nan")])
def test_ddpm_checks_the_ddim_settings_it_does_not_use(steps, eta, message):
    with pytest.raises(InvalidValue, match=message):
        SamplerSettings.checked("ddpm", steps, eta, True, 20)
    # not given is not wrong, and DDPM runs every step with DDPM's noise whatever DDIM's settings are
    assert SamplerSettings.checked("ddpm", None, None, True, 20) == SamplerSettings("ddpm", 20, 1.0, True)
    assert SamplerSettings.checked("ddpm", 3, 0.5, True, 20) == SamplerSettings("ddpm", 20, 1.0, True)


@pytest.mark.parametrize("repo_id", ["a/..", "a/.", "./a", "a/b/c", "a--b/c", "a/b-", "-a/b", "noslash", "", "   ",
                                     "a/" + "b" * 95, "a" * 300, "x" * 5000 + "/y", "<img src=x onerror=alert(1)>/b",
                                     "user/model name", None, 5, ["a/b"], {"repo": "a/b"}])
def test_hub_ids_are_checked_before_any_disk_or_network_access(repo_id, monkeypatch):
    from pathlib import Path
    monkeypatch.setattr(Path, "exists", lambda self: pytest.fail("looked at the disk"))
    with pytest.raises(InvalidValue, match=r"^Hub model id must look like 'user/model-name' \(letters, digits, '-', "
                                         r"'_' and '\.'; at most 96 characters\), got ") as error:
        inputs.hub_model_id(repo_id)
    assert len(str(error.value)) < 160  # never the whole input


def test_good_hub_ids_pass_stripped():
    assert inputs.hub_model_id("  someone/ddpm-faces_v1.2 ") == "someone/ddpm-faces_v1.2"
    assert inputs.hub_model_id("a/" + "b" * 94) == "a/" + "b" * 94  # 96 characters


def test_messages_quote_a_short_prefix_and_the_page_gets_it_escaped():
    assert shown("x" * 1000) == repr("x" * 1000)[:40] + "…"
    assert shown([1, 2]) == "[1, 2]"
    error = user_error("Hub model id …, got '<img src=x onerror=alert(1)>/b'")
    assert "<img" not in error.message and "&lt;img src=x onerror=alert(1)&gt;/b" in error.message


def test_only_files_inside_the_upload_folder_are_read(tmp_path):
    """uploaded_file: a file in the upload folder (or below it) is its real path; a link in it to a file outside,
    ``..`` out of it, a folder, a missing file, a name too long and a NUL byte are all None alike."""
    uploads, outside = tmp_path / "gradio", tmp_path / "secret.png"
    (uploads / "abc").mkdir(parents=True)
    (uploads / "abc" / "photo.png").write_bytes(b"png")
    outside.write_bytes(b"secret")
    (uploads / "abc" / "link.png").symlink_to(outside)
    (uploads / "inner.png").symlink_to(uploads / "abc" / "photo.png")
    real = str(uploads / "abc" / "photo.png")
    assert uploaded_file(real, str(uploads)) == real
    assert uploaded_file(str(uploads / "inner.png"), str(uploads)) == real  # a link that stays inside
    assert uploaded_file(f"{uploads}/abc/../abc/photo.png", str(uploads)) == real
    for path in (str(outside), str(uploads / "abc" / "link.png"), f"{uploads}/abc/../../secret.png", str(uploads),
                 str(uploads / "abc"), str(uploads / "missing.png"), str(uploads / ("a" * 300)), f"{uploads}/a\x00b",
                 "secret.png", ""):
        assert uploaded_file(path, str(uploads)) is None, path
