"""Preparing a network for sampling: the same samples as the bare network, also when the step is compiled."""

from __future__ import annotations

import pytest
import torch
from conftest import perturb, seeded_init

from ddpm_app import samplers
from ddpm_app.inference import Prepared, prepare
from ddpm_app.models import UNetConfig, build_model
from ddpm_app.schedule import Schedule, ScheduleConfig


@pytest.fixture(scope="module")
def net():
    """A small U-Net whose zero-initialised output layer is perturbed: ε̂ depends on x_t and t."""
    config = UNetConfig(image_size=16, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                        attention_resolutions=(8,), head_channels=16, patch_size=1)
    return perturb(seeded_init(lambda: build_model(config))).eval()


def test_prepared_model_is_the_raw_network(net):
    """ε̂ of the prepared network equals the network's own, at every timestep (not t ± 1)."""
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 7, 11])
    with torch.no_grad():
        raw = net(x, t)
        shifted = net(x, t + 1)
    prepared = prepare(net, "cpu")
    assert raw.abs().mean() > 0.05 and (raw - shifted).abs().max() > 1e-3  # a test that can tell t from t + 1
    torch.testing.assert_close(prepared(x, t), raw, rtol=1e-5, atol=1e-5)


def chain(model, schedule, seed=3, step_fn=None):
    gen = torch.Generator().manual_seed(seed)
    step_fn = step_fn or (model.ddpm_step if isinstance(model, Prepared) else None)
    return list(samplers.ddpm(model, schedule, (2, 3, 16, 16), generator=gen, clip_x0=True, step_fn=step_fn))


def test_prepared_model_gives_the_bare_networks_chain(net):
    schedule = Schedule(ScheduleConfig(timesteps=12))
    bare, prepared = chain(net, schedule), chain(prepare(net, "cpu"), schedule)
    assert len(bare) == len(prepared) == 12
    for a, b in zip(bare, prepared):
        for name in ("x_t", "pred_x0", "pred_eps", "x_prev"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-5)


def test_the_sampler_uses_the_step_function_it_is_given(net):
    schedule = Schedule(ScheduleConfig(timesteps=5))
    prepared = prepare(net, "cpu")
    calls = []

    def counting_step(*args):
        calls.append(args[2])  # tt
        return prepared.ddpm_step(*args)

    steps = chain(prepared, schedule, step_fn=counting_step)
    assert [int(tt[0]) for tt in calls] == [4, 3, 2, 1, 0]
    torch.testing.assert_close(steps[-1].x_prev, chain(net, schedule)[-1].x_prev, rtol=1e-5, atol=1e-5)


def test_compiled_step_matches_the_bare_network(net):
    """The code path CUDA uses (torch.compile of the whole step), run on the CPU."""
    schedule = Schedule(ScheduleConfig(timesteps=6))
    compiled = prepare(net, "cpu", compile=True)
    assert compiled.compiled
    bare, fast = chain(net, schedule), chain(compiled, schedule)
    for a, b in zip(bare, fast):
        torch.testing.assert_close(a.x_prev, b.x_prev, rtol=1e-4, atol=1e-4)


def test_fp16_is_refused_on_the_cpu(net):
    with pytest.raises(ValueError, match="CUDA"):
        prepare(net, "cpu", precision="fp16")
    assert prepare(net, "cpu").half is False
