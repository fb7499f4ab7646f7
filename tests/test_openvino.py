"""OpenVINO as a CPU runtime (--cpu-runtime auto/openvino): its network computes the U-Net's ε̂ (any batch, each t
its own, t's features in float32), its f32 network takes the last steps and the measuring, "auto" runs it below four
images only where it suits and PyTorch from there up, PyTorch keeps one thread while it runs, and a missing or
failing OpenVINO is an error that says what to do."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import PATIENCE, fake_timing, make_tiny_config, perturb, seeded_init

from ddpm_app import inference, openvino_net
from ddpm_app.inference import OpenVinoNetwork, choose_cpu_precision, cpu_bf16_supported, prepare_cpu
from ddpm_app.isa import CpuFeatures, detect
from ddpm_app.models import SeedUNetConfig, build_model
from ddpm_app.openvino_net import OpenVinoError

AVX2 = CpuFeatures("an AVX2 CPU", avx2=True, avx512=False, avx512_bf16=False, amx=False)
AMX = CpuFeatures("a Xeon CPU", avx2=True, avx512=True, avx512_bf16=True, amx=True)
installed = openvino_net.version() is not None
needs_openvino = pytest.mark.skipif(not installed, reason="OpenVINO is not installed")
ROOT = Path(__file__).resolve().parents[1]
needs_bf16 = pytest.mark.skipif(not cpu_bf16_supported(detect()), reason="this CPU has no bf16 in hardware")


def never_timed():
    raise AssertionError("nothing should be timed here")


@pytest.fixture(scope="module")
def net():
    return perturb(seeded_init(lambda: build_model(make_tiny_config())), scale=0.1).eval()


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


# --- the choice ---------------------------------------------------------------------------------------------------

def test_openvino_runs_in_the_precision_asked_for_without_timing(monkeypatch):
    monkeypatch.setattr(openvino_net, "version", lambda: "2026.4.1")
    assert choose_cpu_precision("auto", AMX, never_timed, "openvino") == (
        "openvino", "auto: bf16 in hardware on AMX + AVX-512")
    assert choose_cpu_precision("auto", AVX2, never_timed, "openvino") == (
        "openvino-fp32", "auto: no bf16 in hardware on AVX2")
    assert choose_cpu_precision("fp32", AMX, never_timed, "openvino")[0] == "openvino-fp32"
    assert choose_cpu_precision("bf16", AMX, never_timed, "openvino")[0] == "openvino"
    with pytest.raises(ValueError, match="AMX or AVX512-BF16"):
        choose_cpu_precision("bf16", AVX2, never_timed, "openvino")
    with pytest.raises(ValueError, match="cpu runtime must be one of auto, pytorch, openvino"):
        choose_cpu_precision("auto", AMX, never_timed, "onnx")


def test_pytorch_is_the_default_and_never_builds_openvino(net, monkeypatch):
    monkeypatch.setattr(inference, "OpenVinoNetwork", lambda *a, **k: never_timed())
    monkeypatch.setattr(inference, "median_ms", fake_timing({"fp32": 10.0, "bf16": 7.0}))
    prepared = prepare_cpu(net, "auto", cpu=AMX, batches=(1,)) if cpu_bf16_supported(detect()) else prepare_cpu(net)
    assert prepared.runtime.engine == "" and "OpenVINO" not in prepared.runtime.describe()


def test_asking_for_openvino_where_it_is_missing_says_how_to_get_it(net, monkeypatch):
    monkeypatch.setattr(openvino_net, "version", lambda: None)
    with pytest.raises(ValueError, match=r"not installed here \(pip install openvino\)"):
        prepare_cpu(net, "auto", runtime="openvino")
    with pytest.raises(OpenVinoError, match="pip install openvino"):
        OpenVinoNetwork(net, 1)


# --- the network --------------------------------------------------------------------------------------------------

@needs_openvino
@pytest.mark.parametrize("batch", [1, 3])
def test_openvino_fp32_computes_the_networks_eps_at_any_batch_and_each_t(net, batch):
    ov = OpenVinoNetwork(net, 1, "fp32")
    gen = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, 16, 16, generator=gen).contiguous(memory_format=torch.channels_last)
    t = torch.tensor([5, 900, 37][:batch])
    with torch.inference_mode():
        ref, out = net(x, t), ov(x, t)
        shifted = net(x, t + 1)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert relative_error(out, ref) < 1e-4 < relative_error(shifted, ref)  # it can tell t from t + 1
    assert "OpenVINO" in ov.describe() and "fp32" in ov.describe()


@needs_openvino
def test_openvino_bf16_stays_within_a_bf16_rounding_of_fp32(net):
    ov = OpenVinoNetwork(net, 1, "bf16")
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7)), torch.tensor([300, 800])
    with torch.inference_mode():
        error = relative_error(ov(x, t), net(x, t))
    assert error < 0.03  # on a CPU without bf16 OpenVINO computes in f32 and the error is ~1e-6


@needs_openvino
def test_each_thread_has_its_own_inference_request(net):
    """Users sampling at once call the network from several threads: each gets its own answer."""
    ov = OpenVinoNetwork(net, 1, "fp32")
    inputs = [(torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(i)), torch.tensor([i, 10 * i]))
              for i in range(4)]
    results, errors = {}, []

    def work(i):
        try:
            with torch.inference_mode():
                for _ in range(20):
                    out = ov(*inputs[i])
                    assert relative_error(out, net(*inputs[i])) < 1e-4
                results[i] = out
        except AssertionError as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and len(results) == 4


@needs_openvino
def test_a_network_openvino_cannot_convert_raises_its_own_error(net):
    class Untraceable(torch.nn.Module):
        config = make_tiny_config()
        time_features = net.time_features

        def forward_features(self, x, features):
            raise RuntimeError("cannot be traced")

    with pytest.raises(OpenVinoError, match="could not convert the network: RuntimeError"):
        OpenVinoNetwork(Untraceable(), 1)
    with pytest.raises(OpenVinoError, match="does not take t's features"):
        OpenVinoNetwork(torch.nn.Linear(2, 2), 1)


@pytest.mark.parametrize("config", [make_tiny_config(), SeedUNetConfig(image_size=16, down_channels=(32, 64),
                                                                       time_pos_dim=32, init_dim=32)])
def test_both_networks_split_at_ts_features_without_changing_their_function(config):
    """What OpenVINO is handed (x_t and t's sines and cosines) gives the network's own ε̂, for each architecture."""
    model = perturb(seeded_init(lambda: build_model(config)), scale=0.1).eval()
    x, t = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.tensor([0, 411, 999])
    with torch.inference_mode():
        features = model.time_features(t)
        assert features.shape[0] == 3 and features.dtype == torch.float32 and features.abs().max() <= 1
        assert torch.equal(model.forward_features(x, features), model(x, t))
        assert not torch.equal(model.forward_features(x, model.time_features(t + 1)), model(x, t))


@needs_openvino
def test_the_converted_graph_is_kept_and_read_back_at_the_next_start(net, tmp_path, monkeypatch, caplog):
    """Converting is most of OpenVINO's build; a kept graph gives the same ε̂, and other weights get their own."""
    graphs = tmp_path / "openvino"
    first = openvino_net.convert(net, graphs)
    kept = sorted(p.name for p in graphs.iterdir())
    assert len(kept) == 2 and kept[0].endswith(".bin") and kept[1].endswith(".xml")
    calls = []
    real = openvino_net._convert
    monkeypatch.setattr(openvino_net, "_convert", lambda *a: calls.append(a) or real(*a))
    again = openvino_net.convert(net, graphs)
    assert calls == []  # read back, not converted
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)), torch.tensor([3, 600])
    with torch.inference_mode():
        eps = [OpenVinoNetwork(net, 1, "fp32", c)(x, t) for c in (first, again)]
    torch.testing.assert_close(eps[1], eps[0], rtol=1e-6, atol=1e-6)
    other = perturb(seeded_init(lambda: build_model(make_tiny_config())), scale=0.2).eval()
    assert openvino_net.graph_key(other, "v") != openvino_net.graph_key(net, "v")
    (graphs / kept[1]).write_text("not a graph")  # a damaged file: converted again, with a log line
    with caplog.at_level("WARNING", logger="ddpm_app.openvino_net"):
        openvino_net.convert(net, graphs)
    assert len(calls) == 1 and "could not be read" in caplog.text


# --- prepare_cpu --------------------------------------------------------------------------------------------------

@needs_openvino
def test_openvino_runs_every_step_with_its_f32_network_for_the_last_steps_and_for_measuring(net, monkeypatch):
    """No step goes back to PyTorch's network: its idle OpenMP threads would spin on the cores OpenVINO's threads
    need. The graph is converted once and compiled in both precisions."""
    monkeypatch.setattr(inference, "median_ms", lambda *a, **k: never_timed())  # nothing is timed
    conversions = []
    convert = openvino_net.convert
    monkeypatch.setattr(openvino_net, "convert", lambda model, *a: conversions.append(model) or convert(model, *a))
    prepared = prepare_cpu(net, "auto", cpu=AMX, timesteps=200, runtime="openvino")
    assert isinstance(prepared.model, OpenVinoNetwork) and prepared.precision == "bf16" and prepared.switch is None
    assert prepared.model.hint == "bf16" and len(conversions) == 1
    assert isinstance(prepared.fp32_model, OpenVinoNetwork) and prepared.fp32_model.hint == "fp32"
    assert prepared.runtime.engine.startswith("OpenVINO ") and "OpenVINO" in prepared.runtime.describe()
    assert "oneDNN" not in prepared.runtime.describe() and prepared.runtime.ms_per_step is None
    assert prepared.runtime.reason == "auto: bf16 in hardware on AMX + AVX-512; fp32 for t < 15"
    fp32 = prepare_cpu(net, "fp32")
    gen = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        for batch in (1, 4):
            x, t = torch.randn(batch, 3, 16, 16, generator=gen), torch.full((batch,), 100)
            assert torch.equal(prepared(x, t), prepared.model(x, t))
            small_t = torch.full((batch,), 14)  # below 7.5 % of T = 200: OpenVINO's f32 network
            assert torch.equal(prepared(x, small_t), prepared.fp32_model(x, small_t))
            measured = prepared.in_fp32()
            assert measured.precision == "fp32" and measured.model is prepared.fp32_model
            torch.testing.assert_close(measured(x, t), fp32(x, t), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(prepared(x, small_t), fp32(x, small_t), rtol=1e-4, atol=1e-5)
    f32 = prepare_cpu(net, "fp32", runtime="openvino")  # OpenVINO in f32: no twin needed
    assert isinstance(f32.model, OpenVinoNetwork) and f32.fp32_model is None and f32.in_fp32() is f32


@pytest.fixture
def threads_restored():
    saved = torch.get_num_threads()
    yield saved
    torch.set_num_threads(saved)


@needs_openvino
@needs_bf16
def test_auto_runs_openvino_below_four_images_and_pytorch_from_there_up(net, monkeypatch, threads_restored):
    """Each side with its own fp32 network for the last steps; PyTorch keeps one thread while OpenVINO's network
    runs and gets its threads back for its own network. Only batch 4 is timed (bf16 against fp32 in PyTorch)."""
    timing = fake_timing({"fp32": 10.0, "bf16": 7.0})
    monkeypatch.setattr(inference, "median_ms", timing)
    prepared = prepare_cpu(net, "auto", cpu=AMX, timesteps=200, runtime="auto", threads=2)
    assert timing.batches == [4]
    assert isinstance(prepared.model, OpenVinoNetwork) and prepared.model.hint == "bf16"
    assert isinstance(prepared.fp32_model, OpenVinoNetwork) and prepared.fp32_model.hint == "fp32"
    switch = prepared.switch
    assert switch.from_batch == inference.OPENVINO_BELOW_BATCH == 4 and switch.precision == "bf16"
    assert not isinstance(switch.model, OpenVinoNetwork) and not isinstance(switch.fp32_model, OpenVinoNetwork)
    described = prepared.runtime.describe()
    assert "OpenVINO" in described and "below 4 images; from 4 images up PyTorch bf16" in described
    assert "bf16 faster on AMX + AVX-512, 7.0 vs 10.0 ms/step fp32 at batch 4" in described
    pytorch_bf16, pytorch_fp32 = prepare_cpu(net, "bf16", timesteps=200), prepare_cpu(net, "fp32")
    gen = torch.Generator().manual_seed(5)
    with torch.inference_mode():
        for batch, bf16, fp32, threads in ((1, prepared.model, prepared.fp32_model, 1),
                                            (3, prepared.model, prepared.fp32_model, 1),
                                            (4, pytorch_bf16, pytorch_fp32, 2), (1, prepared.model, None, 1)):
            x = torch.randn(batch, 3, 16, 16, generator=gen)
            t, small_t = torch.full((batch,), 100), torch.full((batch,), 14)
            torch.set_num_threads(2 if threads == 1 else 1)  # whatever it was, the call sets it
            eps = prepared(x, t)
            assert torch.get_num_threads() == threads and torch.equal(eps, bf16(x, t))
            if fp32 is not None:
                eps = prepared(x, small_t)
                assert torch.get_num_threads() == threads and torch.equal(eps, fp32(x, small_t))
    measured = prepared.in_fp32()
    assert measured.model is prepared.fp32_model and measured.torch_threads == 2


def test_auto_is_pytorch_without_openvino_or_without_bf16_in_hardware(net, monkeypatch):
    monkeypatch.setattr(inference, "OpenVinoNetwork", lambda *a, **k: never_timed())
    monkeypatch.setattr(openvino_net, "convert", lambda *a, **k: never_timed())
    assert not inference.openvino_suits("auto", AVX2) and not inference.openvino_suits("fp32", AMX)
    avx2 = prepare_cpu(net, "auto", cpu=AVX2, runtime="auto")  # fp32, nothing timed
    assert avx2.runtime.engine == "" and avx2.precision == "fp32" and avx2.switch is None
    asked_fp32 = prepare_cpu(net, "fp32", cpu=AMX, runtime="auto")
    assert asked_fp32.runtime.engine == "" and asked_fp32.precision == "fp32"
    monkeypatch.setattr(openvino_net, "version", lambda: None)  # not installed: no error, PyTorch
    assert not inference.openvino_suits("auto", AMX)
    monkeypatch.setattr(inference, "median_ms", fake_timing({"fp32": 10.0, "bf16": 12.0}))
    missing = prepare_cpu(net, "auto", cpu=AMX, batches=(1,), runtime="auto")
    assert missing.runtime.engine == "" and missing.precision == "fp32"


@needs_bf16
def test_auto_falls_back_to_pytorch_with_a_warning_where_openvino_cannot_build_the_network(net, monkeypatch, caplog):
    def fail(model, *args):
        raise OpenVinoError("OpenVINO could not convert the network: boom")
    monkeypatch.setattr(openvino_net, "version", lambda: "2026.4.1")
    monkeypatch.setattr(openvino_net, "convert", fail)
    monkeypatch.setattr(inference, "median_ms", fake_timing({"fp32": 10.0, "bf16": 7.0}))
    with caplog.at_level("WARNING", logger="ddpm_app.inference"):
        prepared = prepare_cpu(net, "auto", cpu=AMX, runtime="auto")
    assert prepared.runtime.engine == "" and prepared.precision == "bf16" and prepared.switch is None
    assert "--cpu-runtime auto: OpenVINO could not convert the network: boom; PyTorch runs every batch" in caplog.text


@needs_openvino
def test_a_network_openvino_cannot_build_is_an_error_that_says_what_to_do(net, monkeypatch):
    def fail(*args, **kwargs):
        raise OpenVinoError("OpenVINO could not convert or compile the network: boom")
    monkeypatch.setattr(inference, "OpenVinoNetwork", fail)
    with pytest.raises(ValueError, match="--cpu-runtime openvino: .*boom; leave --cpu-runtime at pytorch"):
        prepare_cpu(net, "auto", runtime="openvino")


@needs_openvino
def test_ctrl_c_after_an_openvino_network_was_used_does_not_crash_the_process():
    """Compiling gives the thread an alternate signal stack in OpenVINO's memory. With a Core per network, that
    memory went with the last network while the stack stayed registered: the trainer's Ctrl-C test, run after
    this file's sampling test in one process, died of SIGSEGV (3 of 3 runs; the order the full suite runs them in).
    Run here in a process of their own."""
    tests = ["tests/test_openvino.py::"
             "test_openvino_runs_every_step_with_its_f32_network_for_the_last_steps_and_for_measuring",
             "tests/test_training.py::test_sigint_stops_at_the_next_step_with_a_checkpoint_and_resumes_exactly"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                          capture_output=True, text=True, timeout=PATIENCE)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "2 passed" in done.stdout


@needs_openvino
def test_evaluation_can_measure_the_openvino_path(tiny_model_dir):
    """python -m ddpm_app.evaluate --cpu-runtime openvino: its samples and its bound run OpenVINO's network."""
    from ddpm_app.evaluate import EvalConfig, network
    from ddpm_app.model_folder import load_pretrained

    assert EvalConfig().cpu_runtime == "pytorch" and EvalConfig(cpu_runtime="openvino").cpu_runtime == "openvino"
    loaded = load_pretrained(tiny_model_dir)
    ov = network(loaded, "fp32", False, torch.device("cpu"), "openvino")  # fp32: every CPU runs it
    assert isinstance(ov.model, OpenVinoNetwork) and ov.model.hint == "fp32"
    assert not isinstance(network(loaded, "fp32", False, torch.device("cpu")).model, OpenVinoNetwork)
