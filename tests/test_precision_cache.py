"""The CPU precision choice remembered per machine and model: reused under the same key, timed again under another
(with a log line), and a file that cannot be read, parsed or written never stops the app."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
from conftest import fake_timing, make_tiny_config, perturb, seeded_init

from ddpm_app import inference
from ddpm_app.inference import cpu_bf16_supported, prepare_cpu
from ddpm_app.isa import CpuFeatures, detect
from ddpm_app.models import build_model
from ddpm_app.precision_cache import (CACHE_DIR_ENV, FILE_NAME, FORMAT, NETWORKS, ChoiceKey, PrecisionCache,
                                      RememberedChoice, default_cache_dir, model_identity)

AVX512_BF16 = CpuFeatures("a Zen 4 CPU", avx2=True, avx512=True, avx512_bf16=True, amx=False)
AMX = CpuFeatures("a Xeon CPU", avx2=True, avx512=True, avx512_bf16=True, amx=True)
LOG = "ddpm_app.precision_cache"
needs_bf16 = pytest.mark.skipif(not cpu_bf16_supported(detect()), reason="this CPU has no bf16 in hardware")


@pytest.fixture(scope="module")
def net():
    return perturb(seeded_init(lambda: build_model(make_tiny_config())), scale=0.1).eval()


def key(**changes) -> ChoiceKey:
    fields = dict(cpu="a Zen 4 CPU", isa="avx2 avx512 avx512_bf16", threads=2, torch="2.14.1", model="UNet 0123",
                  batch=1, networks=NETWORKS)
    return ChoiceKey(**{**fields, **changes})


BF16_FASTER = RememberedChoice("bf16", {"fp32": 10.0, "bf16": 7.0}, "2026-11-29 15:00 UTC")
BF16_SLOWER = RememberedChoice("fp32", {"fp32": 10.0, "bf16": 12.0}, "2026-11-29 15:00 UTC")


# --- the key ----------------------------------------------------------------------------------------------------

def test_key_holds_the_cpu_its_flags_threads_torch_model_and_batch(net):
    k = ChoiceKey.of(AMX, net, batch=4, threads=2, torch_version="2.14.1")
    assert (k.cpu, k.isa, k.threads, k.torch, k.batch) == ("a Xeon CPU", "avx2 avx512 avx512_bf16 amx", 2, "2.14.1", 4)
    assert ChoiceKey.of(AVX512_BF16, net, 4, 2, "2.14.1").isa == "avx2 avx512 avx512_bf16"
    assert k.model.startswith("UNet ")


def test_model_identity_follows_the_config_not_the_weights(net):
    same = perturb(seeded_init(lambda: build_model(make_tiny_config()), seed=5), scale=0.3)
    wider = build_model(make_tiny_config(base_channels=48))
    assert model_identity(same) == model_identity(net)
    assert model_identity(wider) != model_identity(net)


# --- the file ---------------------------------------------------------------------------------------------------

def test_a_stored_choice_is_found_under_its_key_and_survives_a_new_cache_object(tmp_path):
    path = tmp_path / "sub" / FILE_NAME  # the folder is made on the first store
    PrecisionCache(path).store(key(), BF16_FASTER)
    PrecisionCache(path).store(key(model="UNet 4567"), BF16_SLOWER)
    again = PrecisionCache(path)
    assert again.lookup(key()) == BF16_FASTER
    assert again.lookup(key(model="UNet 4567")) == BF16_SLOWER
    assert again.lookup(key(model="UNet 89ab")) is None


def test_storing_again_under_a_key_replaces_its_entry(tmp_path):
    cache = PrecisionCache(tmp_path / FILE_NAME)
    cache.store(key(), BF16_FASTER)
    cache.store(key(), BF16_SLOWER)
    assert cache.lookup(key()) == BF16_SLOWER
    assert len(json.loads(cache.path.read_text())["entries"]) == 1


@pytest.mark.parametrize("change", [dict(threads=4), dict(torch="2.13.0"), dict(cpu="another CPU"),
                                    dict(isa="avx2 avx512 avx512_bf16 amx"), dict(batch=4), dict(networks=1)])
def test_an_entry_made_under_another_key_is_not_used_and_a_log_line_says_why(tmp_path, caplog, change):
    cache = PrecisionCache(tmp_path / FILE_NAME)
    cache.store(key(**change), BF16_FASTER)  # made on another machine, thread count, PyTorch or batch
    with caplog.at_level(logging.INFO, LOG):
        assert cache.lookup(key()) is None
    (field, theirs), = change.items()
    assert f"{field}: {theirs} (here: {getattr(key(), field)})" in caplog.text


def test_a_timing_stored_before_the_networks_changed_is_not_reused(net, tmp_path, caplog):
    """A file written by the code before the networks' version was kept (no "networks" in its keys) holds timings of
    other networks: it is read as version 1, not used, and the log line names the version."""
    path = tmp_path / FILE_NAME
    current = ChoiceKey.of(AMX, net, batch=4)
    assert current.networks == NETWORKS > 1
    old_key = {k: v for k, v in dataclasses.asdict(current).items() if k != "networks"}
    path.write_text(json.dumps({"format": FORMAT, "entries": [
        {"key": old_key, "precision": "fp32", "ms_per_step": {"fp32": 71.2, "bf16": 88.0}, "measured": "then"}]}))
    with caplog.at_level(logging.INFO, LOG):
        assert PrecisionCache(path).lookup(current) is None
    assert f"networks: 1 (here: {NETWORKS})" in caplog.text
    assert PrecisionCache(path).lookup(dataclasses.replace(current, networks=1)).precision == "fp32"  # it was read


def test_entries_of_other_models_are_passed_over_without_a_word(tmp_path, caplog):
    cache = PrecisionCache(tmp_path / FILE_NAME)
    cache.store(key(model="UNet 4567", threads=8), BF16_FASTER)
    with caplog.at_level(logging.INFO, LOG):
        assert cache.lookup(key()) is None
    assert caplog.text == ""


@pytest.mark.parametrize("content", [b"\x00\xff garbage", b'{"format": 1, "entries": [', b"[1, 2, 3]",
                                     b'{"format": 99, "entries": []}', b'{"format": 1, "entries": "none"}'])
def test_a_corrupt_or_foreign_file_is_ignored_with_a_log_line_and_replaced_on_the_next_store(tmp_path, caplog,
                                                                                            content):
    cache = PrecisionCache(tmp_path / FILE_NAME)
    cache.path.write_bytes(content)
    with caplog.at_level(logging.WARNING, LOG):
        assert cache.lookup(key()) is None
    assert "ignored" in caplog.text and str(cache.path) in caplog.text
    cache.store(key(), BF16_FASTER)
    assert cache.lookup(key()) == BF16_FASTER


def test_a_malformed_entry_is_skipped_and_the_good_ones_still_count(tmp_path, caplog):
    cache = PrecisionCache(tmp_path / FILE_NAME)
    cache.store(key(), BF16_FASTER)
    data = json.loads(cache.path.read_text())
    good = data["entries"][0]
    data["entries"] = [{"key": good["key"]}, {**good, "ms_per_step": {"fp32": "fast"}}, "text", good]
    cache.path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, LOG):
        assert cache.lookup(key()) == BF16_FASTER
    assert caplog.text.count("malformed entry") == 3


def test_an_unreadable_or_unwritable_place_is_passed_over(tmp_path, caplog):
    (tmp_path / FILE_NAME).mkdir()  # a folder where the file should be: reading and replacing it both fail
    cache = PrecisionCache(tmp_path / FILE_NAME)
    with caplog.at_level(logging.INFO, LOG):
        assert cache.lookup(key()) is None
        cache.store(key(), BF16_FASTER)  # no exception
    assert "cannot read" in caplog.text and "not written" in caplog.text
    blocked = PrecisionCache(tmp_path / "a-file" / FILE_NAME)  # its folder cannot be made: a file is in the way
    (tmp_path / "a-file").write_text("")
    blocked.store(key(), BF16_FASTER)
    assert blocked.lookup(key()) is None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []  # no temporary file left


def test_the_cache_folder_comes_from_the_environment():
    assert default_cache_dir({CACHE_DIR_ENV: "/data/ddpm"}) == default_cache_dir({CACHE_DIR_ENV: "/data/ddpm/"})
    assert str(default_cache_dir({CACHE_DIR_ENV: "/data/ddpm"})) == "/data/ddpm"
    assert str(default_cache_dir({"XDG_CACHE_HOME": "/xdg"})) == "/xdg/ddpm-app"
    assert default_cache_dir({}).parts[-2:] == (".cache", "ddpm-app")
    assert PrecisionCache.default({CACHE_DIR_ENV: "/data/ddpm"}).path == default_cache_dir(
        {CACHE_DIR_ENV: "/data/ddpm"}) / FILE_NAME


# --- prepare_cpu with a cache -----------------------------------------------------------------------------------

TIMED = len(inference.TIMED_BATCHES)  # "auto" times once per batch size in TIMED_BATCHES


@needs_bf16
@pytest.mark.parametrize("timings, chosen", [({"fp32": 10.0, "bf16": 7.0}, "bf16"),
                                             ({"fp32": 10.0, "bf16": 12.0}, "fp32")])
def test_auto_times_once_then_reuses_the_remembered_choice(net, tmp_path, monkeypatch, timings, chosen):
    cache = PrecisionCache(tmp_path / FILE_NAME)
    timing = fake_timing(timings)
    monkeypatch.setattr(inference, "median_ms", timing)
    first = prepare_cpu(net, "auto", cache=cache)
    assert timing.calls == TIMED and first.precision == chosen and first.runtime.ms_per_step == timings[chosen]
    stored = cache.lookup(ChoiceKey.of(detect(), net, 1))
    assert stored.precision == chosen and stored.ms_per_step == timings
    second = prepare_cpu(net, "auto", cache=cache)  # a restart: the same machine, threads, PyTorch and model
    assert timing.calls == TIMED and second.precision == chosen and second.switch is None
    assert "remembered" in second.runtime.reason and stored.measured in second.runtime.reason
    assert second.runtime.ms_per_step is None  # not timed now: the app times the chosen network itself


@needs_bf16
def test_a_remembered_choice_for_another_thread_count_is_timed_again(net, tmp_path, monkeypatch, caplog):
    cache = PrecisionCache(tmp_path / FILE_NAME)
    here = ChoiceKey.of(detect(), net, 1)
    cache.store(ChoiceKey(**{**here.__dict__, "threads": here.threads + 7}), BF16_FASTER)
    timing = fake_timing({"fp32": 10.0, "bf16": 12.0})
    monkeypatch.setattr(inference, "median_ms", timing)
    with caplog.at_level(logging.INFO, LOG):
        prepared = prepare_cpu(net, "auto", cache=cache)
    assert timing.calls == TIMED and prepared.precision == "fp32"
    assert f"threads: {here.threads + 7} (here: {here.threads})" in caplog.text
    assert cache.lookup(here).precision == "fp32"


def test_without_bf16_hardware_or_with_a_precision_asked_for_nothing_is_timed_or_stored(net, tmp_path,
                                                                                         monkeypatch):
    cache = PrecisionCache(tmp_path / FILE_NAME)
    monkeypatch.setattr(inference, "median_ms", fake_timing({}))
    avx2 = CpuFeatures("an AVX2 CPU", avx2=True, avx512=False, avx512_bf16=False, amx=False)
    assert prepare_cpu(net, "auto", cpu=avx2, cache=cache).precision == "fp32"
    assert prepare_cpu(net, "fp32", cache=cache).precision == "fp32"
    assert inference.median_ms.calls == 0 and not cache.path.exists()


@needs_bf16
def test_an_unusable_cache_file_leaves_auto_timing_as_before_and_is_replaced(net, tmp_path, monkeypatch):
    cache = PrecisionCache(tmp_path / FILE_NAME)
    cache.path.write_bytes(b"\x00 not json")
    timing = fake_timing({"fp32": 10.0, "bf16": 12.0})
    monkeypatch.setattr(inference, "median_ms", timing)
    prepared = prepare_cpu(net, "auto", cache=cache)
    assert prepared.precision == "fp32" and timing.calls == TIMED and prepared.runtime.ms_per_step == 10.0
    assert cache.lookup(ChoiceKey.of(detect(), net, 1)).ms_per_step == {"fp32": 10.0, "bf16": 12.0}


@needs_bf16
def test_each_batch_size_is_remembered_apart_with_its_own_choice(net, tmp_path, monkeypatch):
    """bf16 faster at one image and slower at four: both choices stored under their own batch, and a restart
    rebuilds the same switch without timing anything."""
    cache = PrecisionCache(tmp_path / FILE_NAME)
    one, four = {"fp32": 10.0, "bf16": 7.0}, {"fp32": 30.0, "bf16": 40.0}
    timing = fake_timing({}, at_batch={1: one, 4: four})
    monkeypatch.setattr(inference, "median_ms", timing)
    first = prepare_cpu(net, "auto", batches=(1, 4), cache=cache)
    assert timing.batches == [1, 4] and first.precision == "bf16" and first.switch.precision == "fp32"
    assert cache.lookup(ChoiceKey.of(detect(), net, 1)).ms_per_step == one
    assert cache.lookup(ChoiceKey.of(detect(), net, 4)).precision == "fp32"
    second = prepare_cpu(net, "auto", batches=(1, 4), cache=cache)
    assert timing.calls == 2 and second.precision == "bf16"
    assert (second.switch.from_batch, second.switch.precision) == (4, "fp32")
    assert "fp32 from 4 images up" in second.runtime.reason
    stored_one, stored_four = (cache.lookup(ChoiceKey.of(detect(), net, b)) for b in (1, 4))
    assert f"at batch 1 (timed {stored_one.measured})" in second.runtime.reason  # each timing says when it was made
    assert f"ms/step fp32 (timed {stored_four.measured})" in second.runtime.reason
    assert second.runtime.reason.count(f"remembered in {cache.path}") == 1
