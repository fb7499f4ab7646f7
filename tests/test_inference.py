"""Preparing a network for sampling: the same samples as the bare network, also when the step is compiled, its
convolutions are packed for oneDNN, or it runs in bf16; and the CPU precision chosen as the hardware allows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PATIENCE, fake_timing, perturb, seeded_init

from ddpm_app import cpu_norm, inference, onednn, samplers
from ddpm_app.inference import Prepared, choose_cpu_precision, cpu_bf16_supported, example_input, prepare, prepare_cpu
from ddpm_app.isa import CpuFeatures, detect
from ddpm_app.models import SeedUNetConfig, UNetConfig, build_model
from ddpm_app.schedule import Schedule, ScheduleConfig

AVX2 = CpuFeatures("an AVX2 CPU", avx2=True, avx512=False, avx512_bf16=False, amx=False)
AVX512_BF16 = CpuFeatures("a Zen 4 CPU", avx2=True, avx512=True, avx512_bf16=True, amx=False)
AMX = CpuFeatures("a Xeon CPU", avx2=True, avx512=True, avx512_bf16=True, amx=True)
needs_onednn = pytest.mark.skipif(not onednn.available(), reason="this PyTorch build has no oneDNN")
needs_bf16 = pytest.mark.skipif(not cpu_bf16_supported(detect()), reason="this CPU has no bf16 in hardware")


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


def chain(model, schedule, seed=3, step_fn=None):
    gen = torch.Generator().manual_seed(seed)
    step_fn = step_fn or (model.ddpm_step if isinstance(model, Prepared) else None)
    return list(samplers.ddpm(model, schedule, (2, 3, 16, 16), generator=gen, clip_x0=True, step_fn=step_fn))


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def test_prepared_model_gives_the_bare_networks_chain(net):
    schedule = Schedule(ScheduleConfig(timesteps=12))
    bare, prepared = chain(net, schedule), chain(prepare(net, "cpu", precision="fp32"), schedule)
    assert len(bare) == len(prepared) == 12
    for a, b in zip(bare, prepared):  # 1e−4: oneDNN sums in another order than PyTorch's own kernels
        for name in ("x_t", "pred_x0", "pred_eps", "x_prev"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-4)


def test_the_sampler_uses_the_step_function_it_is_given(net):
    schedule = Schedule(ScheduleConfig(timesteps=5))
    prepared = prepare(net, "cpu", precision="fp32")
    calls = []

    def counting_step(*args):
        calls.append(args[2])  # tt
        return prepared.ddpm_step(*args)

    steps = chain(prepared, schedule, step_fn=counting_step)
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


# --- oneDNN pre-packed convolutions -----------------------------------------------------------------------------

@needs_onednn
@pytest.mark.parametrize("batch", [1, 3])
def test_packed_network_computes_the_same_eps_at_any_batch(net, batch):
    """Packed for batch 1, the network gives the unpacked ε̂ at batch 1 and at a batch it was not packed for."""
    packed = onednn.pack_convolutions(net, example_input(net))
    x, t = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.arange(batch) * 7
    with torch.inference_mode():
        expected = net(x, t)
        got = packed(x.contiguous(memory_format=torch.channels_last), t)
    assert relative_error(expected, expected.flip(0) + 1) > 0.1  # ε̂ depends on the input: the check can fail
    assert relative_error(got, expected) < 1e-5


@needs_onednn
def test_packing_replaces_every_convolution_and_leaves_the_original_alone(net):
    before = {k: v.clone() for k, v in net.state_dict().items()}
    packed = onednn.pack_convolutions(net, example_input(net))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and not any(isinstance(m, torch.nn.Conv2d) for m in packed.modules())
    pointwise = [c for c in convs if c.kernel_size == (1, 1)]
    assert pointwise and sum(isinstance(m, onednn.PackedPointwise) for m in packed.modules()) == len(pointwise)
    assert sum(isinstance(m, onednn.PackedConv2d) for m in packed.modules()) == len(convs) - len(pointwise)
    as_convs = onednn.pack_convolutions(net, example_input(net), pointwise_as_matmul=False)
    assert sum(isinstance(m, onednn.PackedConv2d) for m in as_convs.modules()) == len(convs)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert any(isinstance(m, torch.nn.Conv2d) for m in net.modules())


@needs_onednn
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_a_pointwise_convolution_as_a_matrix_product_is_the_same_function(dtype, tolerance):
    """A 1×1 convolution run as (N·H·W, C_in) @ Wᵀ: the convolution's values (bf16: its bf16-rounded values) at the
    batch it was packed for and another, in either memory format, returned channels_last and float32."""
    conv = seeded_init(lambda: torch.nn.Conv2d(24, 40, 1), seed=4)
    packed = onednn.PackedPointwise(conv, dtype, rows=1 * 5 * 7)
    bf = (lambda v: v.detach().bfloat16().float()) if dtype == torch.bfloat16 else (lambda v: v.detach())
    for batch, layout in ((1, torch.channels_last), (3, torch.contiguous_format)):
        x = torch.randn(batch, 24, 5, 7, generator=torch.Generator().manual_seed(batch)).contiguous(memory_format=layout)
        with torch.inference_mode():
            got = packed(x)
            expected = torch.nn.functional.conv2d(bf(x), bf(conv.weight), bf(conv.bias))
        assert got.dtype == torch.float32 and got.is_contiguous(memory_format=torch.channels_last)
        assert relative_error(expected, expected.roll(1, dims=1)) > 0.1  # channels differ: a transposed W would fail
        assert relative_error(got, expected) < tolerance
    with pytest.raises(ValueError, match="plain 1×1"):
        onednn.PackedPointwise(torch.nn.Conv2d(4, 4, 1, stride=2))


@needs_onednn
def test_the_seed_network_packs_too():
    """Grouped, strided and 7×7 convolutions: every kind the seed U-Net has."""
    seed = seeded_init(lambda: build_model(SeedUNetConfig(image_size=16, down_channels=(32, 32, 64),
                                                          time_pos_dim=8)), seed=1).eval()
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 900])
    packed = onednn.pack_convolutions(seed, (x, t))
    with torch.inference_mode():
        assert relative_error(packed(x.contiguous(memory_format=torch.channels_last), t), seed(x, t)) < 1e-5


# --- bf16 on the CPU --------------------------------------------------------------------------------------------

@needs_bf16
def test_bf16_network_stays_close_to_fp32_and_returns_float32(net):
    """ε̂ in bf16 within 2 % of fp32 at every timestep tried, and x̂₀/x_{t−1} computed from it in float32."""
    fp32, bf16 = prepare_cpu(net, "fp32"), prepare_cpu(net, "bf16")
    assert bf16.runtime.precision == "bf16" and fp32.runtime.precision == "fp32"
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for step in (75, 250, 999):  # from t = 75 on (7.5 % of T) it runs in bf16
            t = torch.full((2,), step)
            a, b = fp32(x, t), bf16(x, t)
            assert b.dtype == torch.float32
            assert 0 < relative_error(b, a) < 0.02  # > 0: it really ran in bf16
    schedule = Schedule(ScheduleConfig(timesteps=6))
    last = chain(bf16, schedule)[-1]
    assert last.x_prev.dtype == last.pred_x0.dtype == torch.float32


@needs_bf16
def test_a_bf16_convolution_computes_in_bf16_and_hands_back_float32(net):
    """A bf16-packed 3×3 convolution equals F.conv2d on bf16-rounded input, weights and bias (accumulated in
    float32), returned as float32; in the prepared bf16 network every GroupNorm therefore sees float32. Fails if
    bf16 leaks out of the convolutions into the normalisations, attention and residual sums."""
    conv = seeded_init(lambda: torch.nn.Conv2d(4, 8, 3, padding=1), seed=2)
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    packed = onednn.PackedConv2d(conv, list(x.shape), torch.bfloat16)
    bf16 = lambda v: v.detach().bfloat16().float()  # noqa: E731
    with torch.inference_mode():
        got = packed(x)
        expected = torch.nn.functional.conv2d(bf16(x), bf16(conv.weight), bf16(conv.bias), padding=1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)  # the output itself is rounded to bf16
    seen = []
    prepared = prepare_cpu(net, "bf16")
    hooks = [m.register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
             for m in prepared.model.modules() if isinstance(m, cpu_norm.TunedGroupNorm)]
    with torch.inference_mode():
        prepared(*example_input(net))
    for hook in hooks:
        hook.remove()
    assert seen and set(seen) == {torch.float32}


@needs_bf16
def test_only_the_bf16_network_runs_its_pointwise_convolutions_as_matrix_products(net):
    """bf16: every 1×1 convolution a PackedPointwise in bf16 (they were measured faster there); fp32: all packed
    convolutions, as before (not measured faster in fp32, and fp32 is what CPUs without bf16 run)."""
    pointwise = sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) for m in net.modules())
    bf16, fp32 = prepare_cpu(net, "bf16").model, prepare_cpu(net, "fp32").model
    assert pointwise and [m.dtype for m in bf16.modules() if isinstance(m, onednn.PackedPointwise)] == \
        [torch.bfloat16] * pointwise
    assert not any(isinstance(m, onednn.PackedPointwise) for m in fp32.modules())


@needs_bf16
def test_bf16_hands_the_last_steps_to_fp32(net):
    """Near t = 0 bf16 rounding grows: a batch with any t below the cut runs the fp32 network, exactly."""
    fp32, bf16 = prepare_cpu(net, "fp32", timesteps=200), prepare_cpu(net, "bf16", timesteps=200)
    assert bf16.fp32_below_t == 15 and "fp32 for t < 15" in bf16.runtime.reason  # 7.5 % of T = 200
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for t, same in ((torch.tensor([0, 0]), True), (torch.tensor([14, 100]), True),
                        (torch.tensor([15, 15]), False), (torch.tensor([199, 50]), False)):
            assert torch.equal(bf16(x, t), fp32(x, t)) is same


@needs_bf16
def test_in_fp32_is_the_fp32_network_whatever_sampling_runs_in(net):
    """What the teaching views measure with: a bf16 network's fp32 twin gives fp32's ε̂ exactly, at any t."""
    fp32, bf16 = prepare_cpu(net, "fp32"), prepare_cpu(net, "bf16")
    assert fp32.in_fp32() is fp32
    measuring = bf16.in_fp32()
    assert measuring.precision == measuring.runtime.precision == "fp32"
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.tensor([500, 999])
    with torch.inference_mode():
        assert torch.equal(measuring(x, t), fp32(x, t)) and not torch.equal(bf16(x, t), fp32(x, t))


def test_in_fp32_on_cuda_drops_autocast_and_compiling(net):
    """A CUDA network's fp32 form (built here without a GPU: only its settings are checked)."""
    fast = Prepared(net, channels_last=True, precision="fp16", device_type="cuda")
    measuring = fast.in_fp32()
    assert fast.autocast_dtype == torch.float16 and measuring.autocast_dtype is None
    assert measuring.model is net and not measuring.compiled and measuring.precision == "fp32"


# --- the choice of precision ------------------------------------------------------------------------------------

def never_timed():
    raise AssertionError("the speed was measured although the answer did not depend on it")


def test_auto_is_fp32_without_bf16_hardware_and_does_not_time_anything():
    assert choose_cpu_precision("auto", AVX2, never_timed)[0] == "fp32"


@pytest.mark.parametrize("cpu", [AVX512_BF16, AMX])
def test_auto_picks_bf16_only_where_it_is_faster(cpu):
    assert choose_cpu_precision("auto", cpu, lambda: {"fp32": 10.0, "bf16": 7.0})[0] == "bf16"
    assert choose_cpu_precision("auto", cpu, lambda: {"fp32": 10.0, "bf16": 11.0})[0] == "fp32"
    assert choose_cpu_precision("auto", cpu, lambda: {"fp32": 10.0, "bf16": 9.8})[0] == "fp32"  # a tie: fp32
    choice, reason = choose_cpu_precision("auto", cpu, lambda: {"fp32": 10.0, "bf16": 7.0})
    assert "7.0" in reason and "10.0" in reason


def test_overrides_win_over_the_hardware():
    assert choose_cpu_precision("fp32", AMX, never_timed)[0] == "fp32"
    assert choose_cpu_precision("bf16", AVX512_BF16, never_timed)[0] == "bf16"
    with pytest.raises(ValueError, match="AMX or AVX512-BF16"):
        choose_cpu_precision("bf16", AVX2, never_timed)
    with pytest.raises(ValueError, match="CUDA"):
        choose_cpu_precision("fp16", AMX, never_timed)
    with pytest.raises(ValueError, match="auto"):
        choose_cpu_precision("int8", AMX, never_timed)


@needs_bf16
def test_auto_on_this_cpu_keeps_the_timing_it_chose_by(net):
    prepared = prepare_cpu(net, "auto")
    assert prepared.runtime.reason.startswith("auto: bf16 ")
    assert prepared.runtime.ms_per_step > 0 and f"{prepared.runtime.ms_per_step:.1f}" in prepared.runtime.reason


@needs_bf16
def test_auto_runs_each_batch_size_in_the_precision_that_was_faster_there(net, monkeypatch):
    """bf16 faster at one image and slower at four (as on a Xeon with AMX): one image runs bf16, four and more
    run the fp32 network exactly, and the last steps stay fp32 either way."""
    monkeypatch.setattr(inference, "median_ms", fake_timing({}, {1: {"fp32": 22.2, "bf16": 17.5},
                                                              4: {"fp32": 71.2, "bf16": 88.0}}))
    prepared = prepare_cpu(net, "auto", cpu=AMX, batches=(1, 4), timesteps=200)
    fp32, bf16 = prepare_cpu(net, "fp32"), prepare_cpu(net, "bf16")
    assert prepared.precision == prepared.runtime.precision == "bf16" and prepared.runtime.ms_per_step == 17.5
    assert "fp32 at batch 4, 88.0 vs 71.2 ms/step fp32, so fp32 from 4 images up" in prepared.runtime.reason
    gen = torch.Generator().manual_seed(4)
    with torch.inference_mode():
        for batch, step, runs in ((1, 100, bf16), (3, 100, bf16), (4, 100, fp32), (6, 100, fp32), (2, 3, fp32)):
            x, t = torch.randn(batch, 3, 16, 16, generator=gen), torch.full((batch,), step)
            assert torch.equal(prepared(x, t), runs(x, t)), (batch, step)
            assert torch.equal(prepared(x, t), fp32(x, t)) is (runs is fp32)
        x4, t4 = torch.randn(4, 3, 16, 16, generator=gen), torch.full((4,), 100)
        assert torch.equal(prepared.in_fp32()(x4[:1], t4[:1]), fp32(x4[:1], t4[:1]))


@needs_bf16
def test_auto_can_switch_to_bf16_for_larger_batches_only(net, monkeypatch):
    """The other way round: fp32 at one image, bf16 from four, whose measuring twin is still fp32."""
    monkeypatch.setattr(inference, "median_ms", fake_timing({}, {1: {"fp32": 10.0, "bf16": 11.0},
                                                              4: {"fp32": 40.0, "bf16": 30.0}}))
    prepared = prepare_cpu(net, "auto", cpu=AVX512_BF16, batches=(1, 4), timesteps=200)
    fp32, bf16 = prepare_cpu(net, "fp32"), prepare_cpu(net, "bf16")
    assert prepared.precision == "fp32" and (prepared.switch.from_batch, prepared.switch.precision) == (4, "bf16")
    x, t = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(5)), torch.full((5,), 100)
    with torch.inference_mode():
        assert torch.equal(prepared(x[:2], t[:2]), fp32(x[:2], t[:2]))
        assert torch.equal(prepared(x, t), bf16(x, t)) and not torch.equal(prepared(x, t), fp32(x, t))
        assert torch.equal(prepared(x, torch.full((5,), 3)), fp32(x, torch.full((5,), 3)))  # t < 15: fp32
        measuring = prepared.in_fp32()
        assert measuring is not prepared and torch.equal(measuring(x, t), fp32(x, t))


@needs_bf16
def test_auto_without_disagreement_keeps_one_network(net, monkeypatch):
    monkeypatch.setattr(inference, "median_ms", fake_timing({}, {1: {"fp32": 10.0, "bf16": 7.0},
                                                              4: {"fp32": 40.0, "bf16": 30.0}}))
    prepared = prepare_cpu(net, "auto", cpu=AMX, batches=(1, 4))
    assert prepared.precision == "bf16" and prepared.switch is None
    assert "bf16 at batch 4, 30.0 vs 40.0 ms/step fp32" in prepared.runtime.reason


def test_prepare_on_an_avx2_cpu_runs_fp32(net):
    prepared = prepare_cpu(net, "auto", cpu=AVX2)
    assert prepared.precision == prepared.runtime.precision == "fp32"
    assert "AVX2" in prepared.runtime.describe()


@needs_bf16
def test_a_cpu_whose_onednn_is_limited_to_avx2_runs_fp32_although_it_has_bf16():
    """ONEDNN_MAX_CPU_ISA=AVX2 on a CPU with AVX512-BF16: oneDNN refuses bf16 weights there, so "auto" must not
    build a bf16 network (it crashed the app's start before), and asking for bf16 is a clear error."""
    script = """
import torch
from ddpm_app import onednn
from ddpm_app.inference import prepare_cpu
from ddpm_app.isa import detect
from ddpm_app.models import UNetConfig, build_model
assert detect().bf16_native and not onednn.bf16_available()
net = build_model(UNetConfig(image_size=16, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                             attention_resolutions=(8,), head_channels=32, dropout=0.0))
prepared = prepare_cpu(net, "auto")
assert prepared.precision == "fp32", prepared.runtime.reason
try:
    prepare_cpu(net, "bf16")
except ValueError as e:
    assert "bf16: this PyTorch's oneDNN does not run bf16 here, although the CPU has it" in str(e), e
else:
    raise AssertionError("bf16 was built")
print("ok", prepared.runtime.reason)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=PATIENCE,
                          env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0 and done.stdout.startswith("ok auto: this PyTorch's oneDNN does not run bf16 here"), done.stdout + done.stderr


def test_fp16_is_refused_on_the_cpu(net):
    with pytest.raises(ValueError, match="CUDA"):
        prepare(net, "cpu", precision="fp16")


def test_median_ms_in_turns_leaves_the_first_call_of_each_turn_untimed(monkeypatch):
    """The call after a switch of network is slow (another runtime's threads are still about): it is not timed."""
    now = [0.0]
    order = []

    def call(name):
        def run():
            first = not order or order[-1] != name
            order.append(name)
            now[0] += 0.100 if first else (0.002 if name == "a" else 0.003)
        return run

    monkeypatch.setattr(inference.time, "perf_counter", lambda: now[0])
    ms = inference.median_ms({"a": call("a"), "b": call("b")}, (), rounds=2, warmup=1, block=3)
    assert order == (["a"] * 3 + ["b"] * 3) * 3
    assert ms == pytest.approx({"a": 2.0, "b": 3.0})
    # one call per turn (the default): every call after the warm-up round is timed
    order.clear()
    assert inference.median_ms({"a": call("a"), "b": call("b")}, (), rounds=2) == pytest.approx({"a": 100.0,
                                                                                              "b": 100.0})
