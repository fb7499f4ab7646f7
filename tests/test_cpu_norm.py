"""ddpm_app.cpu_norm: GroupNorm kernels for the CPU, each chosen per input shape and batch size by timing."""

from __future__ import annotations

import pytest
import torch
from conftest import fake_timing

from ddpm_app import cpu_norm, inference
from ddpm_app.inference import cpu_bf16_supported, example_input, prepare_cpu
from ddpm_app.isa import detect


def norm_with_weights(groups: int, channels: int, seed: int) -> torch.nn.GroupNorm:
    norm = torch.nn.GroupNorm(groups, channels)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(channels, generator=gen))
        norm.bias.copy_(torch.randn(channels, generator=gen))
    return norm


@pytest.mark.parametrize("kernel", cpu_norm.KERNELS)
@pytest.mark.parametrize("shape, groups", [((1, 48, 16, 16), 16), ((4, 96, 8, 8), 32), ((3, 144, 4, 4), 16),
                                           ((2, 64, 32, 32), 32)])
def test_every_kernel_is_groupnorm_and_keeps_channels_last(kernel, shape, groups):
    """Against nn.GroupNorm on inputs with a per-channel offset (mean 3× the spread in some channels), float64
    reference; the output stays channels_last. The check can fail: a wrong group layout or affine misses by far."""
    norm = norm_with_weights(groups, shape[1], seed=1)
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(shape, generator=gen) * 2 + 6 * torch.rand(1, shape[1], 1, 1, generator=gen))
    x = x.contiguous(memory_format=torch.channels_last)
    expected = torch.nn.functional.group_norm(x.double(), groups, norm.weight.double(), norm.bias.double())
    got = cpu_norm.TunedGroupNorm(norm).kernel(kernel, x)
    assert got.dtype == torch.float32 and got.is_contiguous(memory_format=torch.channels_last)
    wrong_groups = torch.nn.functional.group_norm(x.double(), groups // 2, norm.weight.double(), norm.bias.double())
    assert (wrong_groups - expected).abs().max() > 1e-2
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)


def test_a_batch_uses_the_choice_of_the_largest_tuned_batch_not_above_it():
    norm = cpu_norm.TunedGroupNorm(torch.nn.GroupNorm(4, 8))
    assert norm.choice(1) == norm.choice(7) == "native"  # untuned
    norm.choices = {4: "sums", 1: "nchw"}
    assert [norm.choice(b) for b in (1, 2, 3, 4, 5, 16)] == ["nchw"] * 3 + ["sums"] * 3
    norm.choices = {4: "sums"}
    assert norm.choice(1) == "sums"  # below every tuned size: the smallest one's
    with pytest.raises(ValueError, match="unknown GroupNorm kernel 'fast'"):
        norm.kernel("fast", torch.zeros(1, 8, 2, 2))


def test_the_kernel_a_batch_runs_is_the_one_chosen_for_it(monkeypatch):
    norm = cpu_norm.TunedGroupNorm(norm_with_weights(4, 8, seed=3))
    norm.choices = {1: "nchw", 4: "sums"}
    ran = []
    original = norm.kernel
    monkeypatch.setattr(norm, "kernel", lambda name, x: ran.append((name, x.shape[0])) or original(name, x))
    for batch in (1, 3, 4, 6):
        norm(torch.randn(batch, 8, 4, 4, generator=torch.Generator().manual_seed(batch)))
    assert ran == [("nchw", 1), ("nchw", 3), ("sums", 4), ("sums", 6)]


def test_tuning_times_each_shape_once_and_gives_each_norm_the_fastest_kernel(tiny_model):
    """Each distinct input shape of each batch size is timed once; every GroupNorm gets the kernel its shape's
    timing put first, per batch size (a fake timer that favours kernels by the input's batch and width)."""
    timed: list[tuple[int, ...]] = []

    def timer(calls):
        x_shape = calls["native"].args[1].shape  # the input bound into the kernel calls
        timed.append(tuple(x_shape))
        best = "sums" if x_shape[0] == 4 and x_shape[1] > 32 else ("nchw" if x_shape[0] == 4 else "native")
        return {name: (0.5 if name == best else 2.0) for name in calls}

    model = tiny_model.to(memory_format=torch.channels_last)
    norms_before = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    tuned = cpu_norm.tune_group_norms(model, {1: example_input(model, 1), 4: example_input(model, 4)}, timer)
    norms = [m for m in tuned.modules() if isinstance(m, cpu_norm.TunedGroupNorm)]
    assert len(norms) == len(norms_before) and not any(isinstance(m, torch.nn.GroupNorm) for m in tuned.modules())
    assert len(timed) == len(set(timed)) and {s[0] for s in timed} == {1, 4}
    widths = {m.weight.numel() for m in norms}
    assert len(widths) > 1  # both branches of the fake timer are used
    for norm in norms:
        wide = norm.weight.numel() > 32
        assert norm.choices == {1: "native", 4: "sums" if wide else "nchw"}
    assert cpu_norm.kernel_counts(tuned, 1) == {"native": len(norms)}


def test_a_prepared_network_with_timed_kernels_computes_the_same_eps(tiny_model, monkeypatch):
    """Tuned for real on this machine (whatever kernels it picks), and with every GroupNorm forced to each kernel:
    the prepared network's ε̂ equals the plain network's at batch 1 and 4."""
    monkeypatch.setattr(inference, "time_group_norm_kernels",
                        lambda calls: inference.median_ms(calls, (), rounds=2, warmup=1))
    prepared = prepare_cpu(tiny_model, "fp32")
    norms = [m for m in prepared.model.modules() if isinstance(m, cpu_norm.TunedGroupNorm)]
    assert norms and all(set(n.choices) == {1, 4} for n in norms)
    for forced in (None,) + cpu_norm.KERNELS:
        for norm in norms:
            if forced:
                norm.choices = {1: forced, 4: forced}
        for batch in (1, 4):
            x, t = example_input(tiny_model, batch)
            with torch.inference_mode():
                expected, got = tiny_model(x, t), prepared(x, t)
            assert (expected - got).norm() / expected.norm() < 1e-5, (forced, batch)


@pytest.mark.skipif(not cpu_bf16_supported(detect()), reason="this CPU has no bf16 in hardware")
def test_preparing_both_precisions_times_each_groupnorm_shape_once(tiny_model, monkeypatch):
    """"auto" on a bf16 CPU builds the fp32 and the bf16 network; their GroupNorms see the same float32 inputs, so the
    kernels are timed for the first and given to the second: as many timings as distinct (batch, shape), not twice."""
    timed = []

    def timer(calls):
        timed.append(tuple(calls["native"].args[1].shape))
        return {name: (0.5 if name == "nchw" else 1.0) for name in calls}

    monkeypatch.setattr(inference, "time_group_norm_kernels", timer)
    monkeypatch.setattr(inference, "median_ms", fake_timing({}, {1: {"fp32": 10.0, "bf16": 7.0},
                                                              4: {"fp32": 40.0, "bf16": 30.0}}))
    prepared = prepare_cpu(tiny_model, "auto", batches=(1, 4))
    fp32 = prepared.fp32_model  # the other network built, kept for the last steps
    assert prepared.precision == "bf16" and fp32 is not None and fp32 is not prepared.model
    assert len(timed) == len(set(timed)) and {s[0] for s in timed} == {1, 4}
    for network in (prepared.model, fp32):
        norms = [m for m in network.modules() if isinstance(m, cpu_norm.TunedGroupNorm)]
        assert norms and all(n.choices == {1: "nchw", 4: "nchw"} for n in norms)
