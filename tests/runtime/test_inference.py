"""Preparing a network for sampling: the same samples as the bare network, also when the step is compiled; and the
CPU engine chosen once, by a rule, from the CPU and what is installed."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb, seeded_init
from tiny_app import needs_bf16

from ddpm_app.diffusion import samplers
from ddpm_app.diffusion.schedule import Schedule, ScheduleConfig
from ddpm_app.models import UNetConfig, build_model
from ddpm_app.runtime.inference import Network, Runtime, choose_cpu_engine, prepare, prepare_cpu
from ddpm_app.runtime.isa import CpuFeatures

AVX2 = CpuFeatures("an AVX2 CPU", avx2=True, avx512=False, avx512_bf16=False, amx=False)
AVX512_BF16 = CpuFeatures("a Zen 4 CPU", avx2=True, avx512=True, avx512_bf16=True, amx=False)
AMX = CpuFeatures("a Xeon CPU", avx2=True, avx512=True, avx512_bf16=True, amx=True)


@pytest.fixture(scope="module")
def net():
    """A small U-Net whose zero-initialised output layer is perturbed: ε̂ depends on x_t and t."""
    config = UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(8,), head_channels=16, patch_size=1)
    # perturbed: zero-initialised output layers would make every ε̂ zero and every check trivial
    return perturb(seeded_init(lambda: build_model(config)), scale=0.1).eval()


def test_prepared_model_is_the_raw_network(net):
    """ε̂ of the prepared network equals the network's own, at every timestep (not t ± 1)."""
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 7, 11])
    with torch.no_grad():
        raw = net(x, t)
        shifted = net(x, t + 1)
    prepared = prepare(net, "cpu", precision="fp32")
    assert raw.abs().mean() > 0.05 and (raw - shifted).abs().max() > 1e-3  # a test that can tell t from t + 1
    torch.testing.assert_close(prepared(x, t), raw, rtol=1e-5, atol=1e-5)


def chain(model, schedule, seed=3):
    gen = torch.Generator().manual_seed(seed)
    return list(samplers.ddpm(model, schedule, (2, 3, 16, 16), generator=gen, clip_x0=True))


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def test_prepared_model_gives_the_bare_networks_chain(net):
    schedule = Schedule(ScheduleConfig(timesteps=12))
    bare, prepared = chain(net, schedule), chain(prepare(net, "cpu", precision="fp32"), schedule)
    assert len(bare) == len(prepared) == 12
    for a, b in zip(bare, prepared):  # 1e−4: channels_last kernels sum in another order
        for name in ("x_t", "pred_x0", "pred_eps", "x_prev"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-4)


def test_ddpm_runs_the_networks_own_step_where_it_has_one(net):
    """The sampler is handed one object; a network with its own (fused) step has every step run by it."""
    schedule = Schedule(ScheduleConfig(timesteps=5))
    prepared = prepare(net, "cpu", precision="fp32")
    calls = []

    class Counting:  # the prepared network, counting the steps it is asked to run
        def __call__(self, x, t):
            return prepared(x, t)

        def ddpm_step(self, *args):
            calls.append(args[2])  # tt
            return prepared.ddpm_step(*args)

    assert isinstance(prepared, samplers.FusedNetwork) and not isinstance(net, samplers.FusedNetwork)
    steps = chain(Counting(), schedule)
    assert [int(tt[0]) for tt in calls] == [4, 3, 2, 1, 0]
    torch.testing.assert_close(steps[-1].x_prev, chain(net, schedule)[-1].x_prev, rtol=1e-4, atol=1e-4)


def test_compiled_step_matches_the_bare_network(net):
    """The code path CUDA uses (torch.compile of the whole step), run on the CPU."""
    schedule = Schedule(ScheduleConfig(timesteps=6))
    compiled = prepare(net, "cpu", compile=True)
    assert compiled.compiled
    bare, fast = chain(net, schedule), chain(compiled, schedule)
    for a, b in zip(bare, fast):
        torch.testing.assert_close(a.x_prev, b.x_prev, rtol=1e-4, atol=1e-4)


@needs_bf16
def test_fp32_is_the_fp32_network_whatever_sampling_runs_in(net):
    """What the teaching views measure with: a bf16 network's fp32 twin gives fp32's ε̂ (OpenVINO f32 against PyTorch,
    to float rounding), at any t, where the bf16 network does not."""
    fp32, bf16 = prepare_cpu(net, "fp32"), prepare_cpu(net, "auto", runtime="auto")
    assert fp32.fp32() is fp32 and bf16.precision == "bf16"
    measuring = bf16.fp32()
    assert measuring.precision == measuring.runtime.precision == "fp32"
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.tensor([500, 999])
    with torch.inference_mode():
        reference = fp32(x, t)
        assert relative_error(measuring(x, t), reference) < 1e-4 < relative_error(bf16(x, t), reference)


def test_fp32_on_cuda_drops_autocast_and_compiling(net):
    """A CUDA network's fp32 form (built here without a GPU: only its settings are checked)."""
    fast = Network(net, Runtime("cuda", "fp16", True, "auto"), "cuda", channels_last=True, autocast=torch.float16,
                   compile=True)
    measuring = fast.fp32()
    assert fast.autocast_dtype == torch.float16 and measuring.autocast_dtype is None and fast.fp32() is measuring
    assert measuring.model is net and not measuring.compiled and measuring.precision == "fp32"
    assert measuring.channels_last and measuring.device == torch.device("cuda")


def test_a_cpu_engines_bf16_network_cannot_be_built_without_its_fp32_twin(net):
    """Its fp32 form is another network (OpenVINO's f32): without it, measuring would silently run bf16."""
    with pytest.raises(ValueError, match="fp32 twin"):
        Network(net, Runtime("cpu", "bf16", False, "asked for"), "cpu")


# --- the CPU engine: one rule, nothing timed ------------------------------------------------------------------

@pytest.mark.parametrize("runtime, precision, cpu, openvino, expected", [
    # auto: OpenVINO in bf16 where it is installed and the CPU has bf16 in hardware, else PyTorch in fp32
    ("auto", "auto", AMX, "2026.4.1", ("openvino", "bf16")),
    ("auto", "auto", AVX512_BF16, "2026.4.1", ("openvino", "bf16")),
    ("auto", "auto", AVX2, "2026.4.1", ("pytorch", "fp32")),
    ("auto", "auto", AMX, None, ("pytorch", "fp32")),
    ("auto", None, AVX2, None, ("pytorch", "fp32")),
    # the precision asked for, on the engine the machine has
    ("auto", "fp32", AMX, "2026.4.1", ("openvino", "fp32")),
    ("auto", "tf32", AMX, "2026.4.1", ("openvino", "fp32")),
    ("auto", "bf16", AVX512_BF16, "2026.4.1", ("openvino", "bf16")),
    # an engine asked for
    ("pytorch", "auto", AMX, "2026.4.1", ("pytorch", "fp32")),
    ("openvino", "auto", AVX2, "2026.4.1", ("openvino", "fp32")),
    ("openvino", "auto", AMX, "2026.4.1", ("openvino", "bf16")),
])
def test_the_engine_follows_one_rule_from_the_cpu_and_what_is_installed(runtime, precision, cpu, openvino, expected):
    engine = choose_cpu_engine(runtime, precision, cpu, openvino)
    assert (engine.runtime, engine.precision) == expected
    assert engine.reason == "asked for" if runtime != "auto" else engine.reason.startswith("auto: ")


@pytest.mark.parametrize("runtime, precision, cpu, openvino, message", [
    ("auto", "bf16", AVX2, "2026.4.1", "bf16 needs a CPU with AMX or AVX512-BF16"),
    ("auto", "bf16", AMX, None, "bf16 on the CPU runs in OpenVINO"),
    ("pytorch", "bf16", AMX, "2026.4.1", "bf16 on the CPU runs in OpenVINO"),
    ("openvino", "auto", AMX, None, "OpenVINO is not installed here"),
    ("auto", "fp16", AMX, "2026.4.1", "fp16 sampling is for CUDA"),
    ("tensorrt", "auto", AMX, "2026.4.1", "cpu runtime must be one of"),
])
def test_what_the_machine_cannot_run_is_an_error_that_says_why(runtime, precision, cpu, openvino, message):
    with pytest.raises(ValueError, match=message):
        choose_cpu_engine(runtime, precision, cpu, openvino)


def test_the_same_network_runs_every_batch_size_and_every_step(net):
    """No routing inside the call: whatever the batch or t, the one network prepared is the one called."""
    prepared = prepare_cpu(net, "auto", runtime="auto")
    seen, twin = [], []
    hooks = [prepared.model.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[0]))]
    if prepared.fp32().model is not prepared.model:
        hooks.append(prepared.fp32().model.register_forward_pre_hook(lambda _, args: twin.append(args[0].shape[0])))
    try:
        with torch.inference_mode():
            for batch in (1, 2, 3, 4, 7):
                for t in (0, 1, 500, 999):
                    assert prepared(torch.randn(batch, 3, 16, 16), torch.full((batch,), t)).shape == (batch, 3, 16, 16)
    finally:
        for hook in hooks:
            hook.remove()
    assert seen == [b for b in (1, 2, 3, 4, 7) for _ in range(4)] and twin == []


def test_prepare_on_an_avx2_cpu_runs_pytorch_in_fp32(net):
    prepared = prepare_cpu(net, "auto", cpu=AVX2, runtime="auto")
    assert prepared.precision == prepared.runtime.precision == "fp32" and prepared.model is net
    assert "AVX2" in prepared.runtime.describe() and "no bf16 in hardware" in prepared.runtime.reason


def test_fp16_is_refused_on_the_cpu(net):
    with pytest.raises(ValueError, match="CUDA"):
        prepare(net, "cpu", precision="fp16")
