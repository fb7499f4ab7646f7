"""OpenVINO as the CPU engine (--cpu-runtime auto/openvino): its network computes the U-Net's ε̂ (any batch, each t
its own, t's features in float32), its f32 network does the measuring, "auto" runs it at every batch where it suits
and PyTorch elsewhere, and a missing or failing OpenVINO is an error that says what to do."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from conftest import PATIENCE, make_tiny_config, perturb, seeded_init

from ddpm_app.models import SeedUNetConfig, build_model
from ddpm_app.runtime import inference, openvino_net
from ddpm_app.runtime.inference import OpenVinoNetwork, prepare_cpu
from ddpm_app.runtime.isa import CpuFeatures
from ddpm_app.runtime.openvino_net import OpenVinoError

AVX2 = CpuFeatures("an AVX2 CPU", avx2=True, avx512=False, avx512_bf16=False, amx=False)
AMX = CpuFeatures("a Xeon CPU", avx2=True, avx512=True, avx512_bf16=True, amx=True)
installed = openvino_net.version() is not None
needs_openvino = pytest.mark.skipif(not installed, reason="OpenVINO is not installed")
ROOT = Path(__file__).resolve().parents[2]


def never_called(*args, **kwargs):
    raise AssertionError("OpenVINO should not be built here")


def ov_network(model, hint="bf16", threads=1):
    return OpenVinoNetwork(openvino_net.convert(model), model.time_features, threads, hint)


@pytest.fixture(scope="module")
def net():
    return perturb(seeded_init(lambda: build_model(make_tiny_config())), scale=0.1).eval()


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


# --- the choice ---------------------------------------------------------------------------------------------------

def test_pytorch_is_the_librarys_default_and_never_builds_openvino(net, monkeypatch):
    monkeypatch.setattr(openvino_net, "convert", never_called)
    prepared = prepare_cpu(net, "auto", cpu=AMX)
    assert prepared.model is net and prepared.runtime.engine.startswith("PyTorch ")


def test_asking_for_openvino_where_it_is_missing_says_how_to_get_it(net, monkeypatch):
    monkeypatch.setattr(openvino_net, "version", lambda: None)
    with pytest.raises(ValueError, match=r"not installed here \(pip install openvino\)"):
        prepare_cpu(net, "auto", runtime="openvino")
    with pytest.raises(OpenVinoError, match="pip install openvino"):
        openvino_net.convert(net)


# --- the network --------------------------------------------------------------------------------------------------

@needs_openvino
@pytest.mark.parametrize("batch", [1, 3])
def test_openvino_fp32_computes_the_networks_eps_at_any_batch_and_each_t(net, batch):
    ov = ov_network(net, "fp32")
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
    ov = ov_network(net, "bf16")
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(7)), torch.tensor([300, 800])
    with torch.inference_mode():
        error = relative_error(ov(x, t), net(x, t))
    assert error < 0.03  # on a CPU without bf16 OpenVINO computes in f32 and the error is ~1e-6


@needs_openvino
def test_each_thread_has_its_own_inference_request(net):
    """Users sampling at once call the network from several threads: each gets its own answer."""
    ov = ov_network(net, "fp32")
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
@pytest.mark.parametrize("batch, ran", [(1, [1, 0]), (2, [1, 1]), (3, [2, 2]), (4, [2, 2]), (5, [3, 3])])
def test_one_image_runs_on_one_stream_and_a_batch_in_two_halves_at_once(net, batch, ran):
    """The one rule: two streams of half the threads; a single image runs on one of them, n ≥ 2 images are split
    into two equal halves, one per stream, an odd batch with its last image repeated, and the halves put back in
    order (the repeat left out) give the network's ε̂ for the whole batch."""
    ov = ov_network(net, "fp32", threads=2)
    x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
    t = torch.tensor([5, 900, 37, 412, 999][:batch])
    with torch.inference_mode():
        out = ov(x, t)
        assert relative_error(out, net(x, t)) < 1e-4
    compiled = ov.compile()
    assert compiled.get_property("NUM_STREAMS") == 2 and not compiled.get_property("ENABLE_CPU_PINNING")
    requests = ov._requests()
    assert [r.get_input_tensor(0).shape[0] if r.get_input_tensor(0).get_size() else 0 for r in requests] == ran


@needs_openvino
def test_with_one_thread_every_batch_is_one_request(net):
    ov = ov_network(net, "fp32", threads=1)
    with torch.inference_mode():
        ov(torch.randn(4, 3, 16, 16), torch.tensor([1, 2, 3, 4]))
    requests = ov._requests()
    assert ov.compile().get_property("NUM_STREAMS") == 1 and len(requests) == 1
    assert requests[0].get_input_tensor(0).shape[0] == 4


@needs_openvino
@pytest.mark.parametrize("threads", [1, 2])
def test_a_call_larger_than_sampling_batches_gives_its_buffers_back(net, monkeypatch, threads):
    """A loss curve's one large call must not hold OpenVINO's buffers for the life of the server: after it the
    compiled network releases them, and the next call (new requests) computes the same ε̂."""
    ov = ov_network(net, "fp32", threads)
    released = []
    small = (torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 7]))
    large_batch = openvino_net.KEPT_BATCH + 1
    large = (torch.randn(large_batch, 3, 16, 16, generator=torch.Generator().manual_seed(1)),
             torch.arange(large_batch))
    with torch.inference_mode():
        before = ov(*small)
        monkeypatch.setattr(ov, "_compiled", SpyOnRelease(ov.compile(), released))
        ov(*small)
        assert released == [] and ov._local.requests is not None  # sampling keeps its requests
        out = ov(*large)
        assert released == [1] and ov._local.requests is None
        assert relative_error(out, net(*large)) < 1e-4
        torch.testing.assert_close(ov(*small), before, rtol=0, atol=0)


class SpyOnRelease:
    """OpenVINO's compiled network that counts its ``release_memory`` calls (and still releases)."""

    def __init__(self, compiled, calls: list):
        self.compiled, self.calls = compiled, calls
        self.create_infer_request = compiled.create_infer_request

    def release_memory(self):
        self.calls.append(1)
        self.compiled.release_memory()


@needs_openvino
def test_a_network_openvino_cannot_convert_raises_its_own_error(net):
    class Untraceable(torch.nn.Module):
        config = make_tiny_config()
        time_features = net.time_features

        def forward_features(self, x, features):
            raise RuntimeError("cannot be traced")

    with pytest.raises(OpenVinoError, match="could not convert the network: RuntimeError"):
        openvino_net.convert(Untraceable())
    with pytest.raises(OpenVinoError, match="does not take t's features"):
        openvino_net.convert(torch.nn.Linear(2, 2))


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


# --- prepare_cpu --------------------------------------------------------------------------------------------------

@needs_openvino
def test_openvino_runs_every_step_and_its_f32_network_does_the_measuring(net, monkeypatch):
    """The graph is converted once; the bf16 network is compiled now, its f32 twin when first measured with."""
    conversions = []
    convert = openvino_net.convert
    monkeypatch.setattr(openvino_net, "convert", lambda model: conversions.append(model) or convert(model))
    prepared = prepare_cpu(net, "auto", cpu=AMX, runtime="openvino")
    assert isinstance(prepared.model, OpenVinoNetwork) and prepared.precision == "bf16"
    assert prepared.model.hint == "bf16" and len(conversions) == 1 and prepared.model._compiled is not None
    twin = prepared.fp32().model
    assert isinstance(twin, OpenVinoNetwork) and twin.hint == "fp32" and twin._compiled is None
    assert prepared.runtime.engine.startswith("OpenVINO ") and "(bf16, built in" in prepared.runtime.describe()
    fp32 = prepare_cpu(net, "fp32")
    gen = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        for batch in (1, 4):
            x = torch.randn(batch, 3, 16, 16, generator=gen)
            for t in (torch.full((batch,), 100), torch.full((batch,), 0)):
                assert torch.equal(prepared(x, t), prepared.model(x, t))
                measured = prepared.fp32()
                assert measured.precision == "fp32" and measured.model is twin
                torch.testing.assert_close(measured(x, t), fp32(x, t), rtol=1e-4, atol=1e-5)
    assert "(fp32, built in" in prepared.fp32().runtime.describe()
    f32 = prepare_cpu(net, "fp32", runtime="openvino")  # OpenVINO in f32: its own twin
    assert isinstance(f32.model, OpenVinoNetwork) and f32.fp32() is f32


def test_auto_is_pytorch_without_openvino_or_without_bf16_in_hardware(net, monkeypatch):
    monkeypatch.setattr(openvino_net, "convert", never_called)
    avx2 = prepare_cpu(net, "auto", cpu=AVX2, runtime="auto")
    assert avx2.model is net and avx2.precision == "fp32" and "no bf16 in hardware" in avx2.runtime.reason
    monkeypatch.setattr(openvino_net, "version", lambda: None)  # not installed: no error, PyTorch
    missing = prepare_cpu(net, "auto", cpu=AMX, runtime="auto")
    assert missing.model is net and missing.precision == "fp32" and "not installed" in missing.runtime.reason


def test_auto_falls_back_to_pytorch_with_a_warning_where_openvino_cannot_build_the_network(net, monkeypatch, caplog):
    def fail(model):
        raise OpenVinoError("OpenVINO could not convert the network: boom")
    monkeypatch.setattr(openvino_net, "version", lambda: "2026.4.1")
    monkeypatch.setattr(openvino_net, "convert", fail)
    with caplog.at_level("WARNING", logger="ddpm_app.runtime.inference"):
        prepared = prepare_cpu(net, "auto", cpu=AMX, runtime="auto")
    assert prepared.model is net and prepared.precision == "fp32" and prepared.fp32() is prepared
    assert "--cpu-runtime auto: OpenVINO could not convert the network: boom; PyTorch runs instead" in caplog.text


@needs_openvino
def test_a_network_openvino_cannot_build_is_an_error_that_says_what_to_do(net, monkeypatch):
    def fail(*args, **kwargs):
        raise OpenVinoError("OpenVINO could not convert or compile the network: boom")
    monkeypatch.setattr(inference, "OpenVinoNetwork", fail)
    with pytest.raises(ValueError, match="--cpu-runtime openvino: .*boom; leave --cpu-runtime at auto"):
        prepare_cpu(net, "auto", runtime="openvino")


@needs_openvino
def test_ctrl_c_after_an_openvino_network_was_used_does_not_crash_the_process():
    """Compiling gives the thread an alternate signal stack in OpenVINO's memory. With a Core per network, that
    memory went with the last network while the stack stayed registered: the trainer's Ctrl-C test, run after
    this file's sampling test in one process, died of SIGSEGV (3 of 3 runs; the order the full suite runs them in).
    Run here in a process of their own."""
    tests = ["tests/runtime/test_openvino.py::"
             "test_openvino_runs_every_step_and_its_f32_network_does_the_measuring",
             "tests/training/test_training.py::test_sigint_stops_at_the_next_step_with_a_checkpoint_and_resumes_exactly"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests], cwd=ROOT,
                          capture_output=True, text=True, timeout=PATIENCE)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert "2 passed" in done.stdout


@needs_openvino
def test_evaluation_can_measure_the_openvino_path(tiny_model_dir):
    """python -m ddpm_app.cli.evaluate --cpu-runtime openvino: its samples and its bound run OpenVINO's network."""
    from ddpm_app.io.loading import load_pretrained
    from ddpm_app.metrics.evaluate import EvalConfig, network

    assert EvalConfig().cpu_runtime == "pytorch" and EvalConfig(cpu_runtime="openvino").cpu_runtime == "openvino"
    loaded = load_pretrained(tiny_model_dir)
    ov = network(loaded, "fp32", False, torch.device("cpu"), "openvino")  # fp32: every CPU runs it
    assert isinstance(ov.model, OpenVinoNetwork) and ov.model.hint == "fp32"
    assert not isinstance(network(loaded, "fp32", False, torch.device("cpu")).model, OpenVinoNetwork)
