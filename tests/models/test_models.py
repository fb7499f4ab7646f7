"""The U-Nets: shapes, timestep conditioning, and the seed network against the tutorial's layout and forward pass."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_config, perturb, seeded_init

from ddpm_app.models import SeedUNet, SeedUNetConfig, UNet, arch_name, build_model, make_config
from ddpm_app.models.seed import upsample_conv3x3

# --- the DDPM U-Net -------------------------------------------------------------------------------------

# --- the DDPM U-Net: forward pass, re-implemented with functional ops from its state dict ----------------

def reference_group_norm(x: torch.Tensor, sd: dict, p: str) -> torch.Tensor:
    """GroupNorm with the largest group count ≤ 32 dividing the channels (improved-diffusion's normalization)."""
    return F.group_norm(x, math.gcd(x.shape[1], 32), sd[p + "weight"], sd[p + "bias"], eps=1e-5)


def reference_res_block(sd: dict, p: str, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """skip(x) + conv₂(SiLU(GN(conv₁(SiLU(GN(x))))·(1 + scale) + shift)), (scale, shift) = Linear(emb)."""
    h = F.conv2d(F.silu(reference_group_norm(x, sd, p + "norm1.")), sd[p + "conv1.weight"], sd[p + "conv1.bias"],
                 padding=1)
    c = F.linear(emb, sd[p + "emb.weight"], sd[p + "emb.bias"])
    out_ch = h.shape[1]
    scale, shift = c[:, :out_ch, None, None], c[:, out_ch:, None, None]
    h = reference_group_norm(h, sd, p + "norm2.") * (1 + scale) + shift
    h = F.conv2d(F.silu(h), sd[p + "conv2.weight"], sd[p + "conv2.bias"], padding=1)
    skip = F.conv2d(x, sd[p + "skip.weight"], sd[p + "skip.bias"]) if x.shape[1] != out_ch else x
    return skip + h


def reference_attention(sd: dict, p: str, x: torch.Tensor, head_channels: int) -> torch.Tensor:
    """x + proj(softmax(q·kᵀ/√d)·v), per head, over the H·W positions; q, k, v from a 1×1 conv of GN(x)."""
    b, c, height, width = x.shape
    heads = max(1, c // head_channels)
    d = c // heads
    qkv = F.conv2d(reference_group_norm(x, sd, p + "norm."), sd[p + "qkv.weight"], sd[p + "qkv.bias"])
    q, k, v = (qkv[:, i * c:(i + 1) * c].reshape(b, heads, d, height * width) for i in range(3))  # (B, heads, d, HW)
    weights = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(d), dim=-1)  # (B, heads, HW, HW)
    out = torch.einsum("bhij,bhdj->bhdi", weights, v).reshape(b, c, height, width)
    return x + F.conv2d(out, sd[p + "proj.weight"], sd[p + "proj.bias"])


def reference_unet(sd: dict, config, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ε_θ(x, t) of the DDPM U-Net (Ho et al. 2020, appendix B), computed from the config and the weights alone."""
    base, p = config.base_channels, config.patch_size
    half = base // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=1)  # (B, base)
    emb = F.linear(F.silu(F.linear(emb, sd["time_embed.0.weight"], sd["time_embed.0.bias"])),
                   sd["time_embed.2.weight"], sd["time_embed.2.bias"])  # (B, 4·base)

    def block(prefix: str, h: torch.Tensor, resolution: int) -> torch.Tensor:
        h = reference_res_block(sd, prefix + "res.", h, emb)
        if resolution in config.attention_resolutions:
            h = reference_attention(sd, prefix + "attn.", h, config.head_channels)
        return h

    h = F.pixel_unshuffle(x, p) if p > 1 else x
    h = F.conv2d(h, sd["input_conv.weight"], sd["input_conv.bias"], padding=1)
    resolution, levels = config.image_size // p, len(config.channel_mult)
    skips = [h]
    for level in range(levels):
        for i in range(config.num_res_blocks):
            h = block(f"down.{level}.{i}.", h, resolution)
            skips.append(h)
        if level < levels - 1:
            h = F.conv2d(h, sd[f"downsample.{level}.weight"], sd[f"downsample.{level}.bias"], stride=2, padding=1)
            skips.append(h)
            resolution //= 2
    h = reference_res_block(sd, "mid1.", h, emb)
    h = reference_attention(sd, "mid_attn.", h, config.head_channels)
    h = reference_res_block(sd, "mid2.", h, emb)
    for j in range(levels):  # j = 0 is the deepest level
        for i in range(config.num_res_blocks + 1):
            h = block(f"up.{j}.{i}.", torch.cat([h, skips.pop()], dim=1), resolution)
        if j < levels - 1:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = F.conv2d(h, sd[f"upsample.{j}.weight"], sd[f"upsample.{j}.bias"], padding=1)
            resolution *= 2
    assert not skips
    out = F.conv2d(F.silu(reference_group_norm(h, sd, "out_norm.")), sd["out_conv.weight"], sd["out_conv.bias"],
                   padding=1)
    return F.pixel_shuffle(out, p) if p > 1 else out


@pytest.mark.parametrize("overrides", [
    dict(),  # attention at 8×8 (level 1, two heads of 32 channels) and in the middle
    dict(attention_resolutions=()),  # attention only in the middle
    dict(patch_size=2, image_size=16),  # 2×2 patches: the network runs at 8×8
    dict(patch_size=2, image_size=32, num_res_blocks=2),  # patches, two blocks a level, attention after patching
    dict(image_size=32, channel_mult=(1, 2, 2), attention_resolutions=(16, 8)),
    dict(image_size=32, channel_mult=(1, 2, 2), attention_resolutions=(16,), head_channels=16, in_channels=1),
], ids=["tiny", "no-attention", "patched", "patched-two-blocks", "three-levels", "three-levels-grey"])
def test_unet_forward_matches_the_functional_reference(overrides):
    config = make_tiny_config(**overrides)
    model = perturb(seeded_init(lambda: UNet(config))).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, config.in_channels, config.image_size, config.image_size, generator=g)
    t = torch.tensor([0, 17, 999])
    with torch.no_grad():
        ours = model(x, t)
        theirs = reference_unet(model.state_dict(), config, x, t)
    assert ours.shape == x.shape
    assert ours.abs().mean() > 0.05  # the perturbed output layer is not zero: a real comparison
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_unet_attention_is_built_where_asked():
    with_attn = UNet(make_tiny_config(attention_resolutions=(8,)))
    without = UNet(make_tiny_config(attention_resolutions=()))
    count = lambda m: sum(type(module).__name__ == "Attention" for module in m.modules())  # noqa: E731
    # the middle block always attends; level 1 (8×8) adds one per down and per up ResBlock
    assert count(without) == 1
    assert count(with_attn) == 1 + 1 + 2


def test_unet_output_depends_on_timestep_and_input(tiny_model):
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = tiny_model(x, torch.tensor([10])), tiny_model(x, torch.tensor([900]))
        c = tiny_model(x.flip(-1), torch.tensor([10]))
    assert (a - b).abs().mean() > 1e-3
    assert (a - c).abs().mean() > 1e-3


def test_unet_starts_as_zero_predictor():
    # zero-initialised output conv (improved-diffusion): an untrained network predicts ε̂ = 0
    model = UNet(make_tiny_config())
    with torch.no_grad():
        assert torch.equal(model(torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([5])), torch.zeros(1, 3, 16, 16))


def test_unet_config_rejects_indivisible_size():
    with pytest.raises(ValueError):
        make_tiny_config(image_size=18)
    with pytest.raises(ValueError):
        make_tiny_config(image_size=16, patch_size=3)


def test_registry_round_trips_configs(tiny_config, seed_config):
    for config in (tiny_config, seed_config):
        name = arch_name(config)
        assert make_config(name, config.to_dict()) == config
        assert type(build_model(config)) is {"ddpm": UNet, "seed": SeedUNet}[name]
    with pytest.raises(ValueError):
        make_config("transformer", {})
    with pytest.raises(ValueError):
        make_config("ddpm", {"width": 3})


# --- the seed tutorial's U-Net: state-dict layout ------------------------------------------------------

def tutorial_block(prefix: str, in_ch: int, out_ch: int, time_dim: int, up: bool) -> dict[str, tuple]:
    """Parameter shapes of the tutorial's ``AttnBlock(in_ch, out_ch, time_mlp_dim, up)``, in its order."""
    shapes = {
        "time_condition.0.weight": (time_dim, time_dim), "time_condition.0.bias": (time_dim,),
        "time_condition.2.weight": (2 * out_ch, time_dim), "time_condition.2.bias": (2 * out_ch,),
        "norm1.weight": (in_ch,), "norm1.bias": (in_ch,),
        "norm2.weight": (out_ch,), "norm2.bias": (out_ch,),
    }
    if in_ch != out_ch:
        shapes |= {"short_cut.weight": (out_ch, in_ch, 1, 1), "short_cut.bias": (out_ch,)}
    sample = "sample.1" if up else "sample"  # Sequential(Upsample, Conv2d) going up, a strided Conv2d going down
    shapes |= {f"{sample}.weight": (in_ch, in_ch, 3, 3), f"{sample}.bias": (in_ch,)}
    shapes |= {"conv1.weight": (out_ch, in_ch // 32, 3, 3), "conv1.bias": (out_ch,),  # groups=32
               "conv2.weight": (out_ch, out_ch, 3, 3), "conv2.bias": (out_ch,)}
    return {prefix + k: v for k, v in shapes.items()}


def tutorial_layout(image_channel: int = 3, init_dim: int = 32,
                    down_channels=((32, 64), (64, 128), (128, 256), (256, 512)),
                    up_channels=((512 + 512, 256), (256 + 256, 128), (128 + 128, 64), (64 + 64, 32)),
                    time_pos_dim: int = 32) -> dict[str, tuple]:
    """The tutorial's ``Unet().state_dict()`` as key → shape, written from its __init__."""
    time_dim = 4 * time_pos_dim
    shapes = {"init_conv.weight": (init_dim, image_channel, 7, 7), "init_conv.bias": (init_dim,),
              "time_mlp.1.weight": (time_dim, time_pos_dim), "time_mlp.1.bias": (time_dim,)}
    for i, (c_in, c_out) in enumerate(down_channels):
        shapes |= tutorial_block(f"downs.{i}.", c_in, c_out, time_dim, up=False)
    for i, (c_in, c_out) in enumerate(up_channels):
        shapes |= tutorial_block(f"ups.{i}.", c_in, c_out, time_dim, up=True)
    shapes |= {"output.weight": (image_channel, init_dim, 1, 1), "output.bias": (image_channel,)}
    return shapes


def test_seed_unet_state_dict_matches_the_tutorial_exactly():
    state = SeedUNet(SeedUNetConfig()).state_dict()
    actual = {k: tuple(v.shape) for k, v in state.items()}
    expected = tutorial_layout()
    assert sorted(actual) == sorted(expected)
    assert actual == expected
    assert list(actual) == list(expected)  # same registration order, too
    # a few entries spelled out
    assert actual["downs.0.time_condition.0.weight"] == (128, 128)
    assert actual["downs.0.conv1.weight"] == (64, 1, 3, 3)
    assert actual["ups.0.sample.1.weight"] == (1024, 1024, 3, 3)
    assert actual["ups.0.conv1.weight"] == (256, 32, 3, 3)
    assert actual["time_mlp.1.weight"] == (128, 32)
    assert actual["output.weight"] == (3, 32, 1, 1)
    assert "downs.0.sample.weight" in actual and "downs.0.short_cut.weight" in actual
    assert all(v.dtype == torch.float32 for v in state.values())
    assert sum(math.prod(s) for s in expected.values()) == sum(p.numel() for p in SeedUNet().parameters())


def test_small_seed_unet_layout_follows_the_same_rule(seed_config):
    state = SeedUNet(seed_config).state_dict()
    expected = tutorial_layout(down_channels=((32, 64), (64, 64)), up_channels=((128, 64), (128, 32)))
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert "downs.1.short_cut.weight" not in state  # nn.Identity when the widths agree


def test_seed_config_validation():
    with pytest.raises(ValueError):
        SeedUNetConfig(init_dim=32, down_channels=(64, 128))  # must start with init_dim
    with pytest.raises(ValueError):
        SeedUNetConfig(down_channels=(32, 48))  # GroupNorm(32) and groups=32 need multiples of 32
    with pytest.raises(ValueError):
        SeedUNetConfig(image_size=40)  # four halvings need a multiple of 16


# --- the seed net cannot see the amplitude of x_t ------------------------------------------------------------

def test_the_seed_net_is_blind_to_the_amplitude_of_x_t_and_the_ddpm_unet_is_not(seed_config, tiny_model):
    """The tutorial's first block normalises init_conv's output with GroupNorm(32, 32), one channel per group, and every
    block normalises its whole input, shortcut included: ε_θ(c·x_t, t) = ε_θ(x_t, t) for c > 0, so the network cannot
    tell how much noise x_t holds (the likely cause of the colour noise that deterministic DDIM leaves with it:
    docs/evaluation.md). The DDPM U-Net's ε̂ changes with the amplitude."""
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([3, 700])
    seed_net = perturb(seeded_init(lambda: SeedUNet(seed_config)), scale=0.02).eval()
    with torch.no_grad():
        for c in (1.5, 4.0):  # exactly, but for GroupNorm's ε (1e-5) next to the variance
            torch.testing.assert_close(seed_net(c * x, t), seed_net(x, t), rtol=1e-4, atol=1e-4)
        change = (tiny_model(1.5 * x, t) - tiny_model(x, t)).abs().mean() / tiny_model(x, t).abs().mean()
    assert change > 0.05


def test_the_seed_net_with_branch_norms_sees_the_amplitude_and_loads_the_same_state_dict(seed_config):
    """block_norm="branch" keeps every module and key (a tutorial checkpoint loads strictly) but leaves the shortcut
    un-normalised, so ε̂ changes with the amplitude of x_t."""
    blind = perturb(seeded_init(lambda: SeedUNet(seed_config)), scale=0.02).eval()
    seeing = SeedUNet(dataclasses.replace(seed_config, block_norm="branch")).eval()
    seeing.load_state_dict(blind.state_dict(), strict=True)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([3, 700])
    with torch.no_grad():
        change = (seeing(1.5 * x, t) - seeing(x, t)).abs().mean() / seeing(x, t).abs().mean()
    assert change > 0.05
    with pytest.raises(ValueError, match="block_norm"):
        SeedUNetConfig(block_norm="output")


# --- the seed tutorial's U-Net: forward pass, re-implemented with functional ops -----------------------

def tutorial_time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """SinusoidalPosEmb: [sin(t·ω_k), cos(t·ω_k)] with ω_k = exp(−k·ln(10000)/(dim/2 − 1))."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1)))
    args = t[:, None] * freqs[None, :]
    return torch.cat((args.sin(), args.cos()), dim=-1)


def tutorial_block_forward(sd: dict, p: str, x: torch.Tensor, time_emb: torch.Tensor, up: bool,
                           branch_norm: bool = False) -> torch.Tensor:
    """One block as the tutorial writes it; ``branch_norm`` moves norm1 after the resampling, onto the branch alone."""
    def norm1(v):
        return F.group_norm(v, 32, sd[p + "norm1.weight"], sd[p + "norm1.bias"])

    x = x if branch_norm else norm1(x)
    if up:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = F.conv2d(x, sd[p + "sample.1.weight"], sd[p + "sample.1.bias"], padding=1)
    else:
        x = F.conv2d(x, sd[p + "sample.weight"], sd[p + "sample.bias"], stride=2, padding=1)
    h = F.conv2d(F.silu(norm1(x) if branch_norm else x), sd[p + "conv1.weight"], sd[p + "conv1.bias"], padding=1,
                 groups=32)
    c = F.linear(F.silu(F.linear(time_emb, sd[p + "time_condition.0.weight"], sd[p + "time_condition.0.bias"])),
                 sd[p + "time_condition.2.weight"], sd[p + "time_condition.2.bias"])
    out_ch = h.shape[1]
    scale, shift = c[:, :out_ch, None, None], c[:, out_ch:, None, None]
    h = h * (scale + 1) + shift
    h = F.silu(F.group_norm(h, 32, sd[p + "norm2.weight"], sd[p + "norm2.bias"]))
    h = F.conv2d(h, sd[p + "conv2.weight"], sd[p + "conv2.bias"], padding=1)
    if p + "short_cut.weight" in sd:
        x = F.conv2d(x, sd[p + "short_cut.weight"], sd[p + "short_cut.bias"])
    return h + x


def tutorial_forward(sd: dict, img: torch.Tensor, time: torch.Tensor, branch_norm: bool = False) -> torch.Tensor:
    time_pos_dim = sd["time_mlp.1.weight"].shape[1]
    time_emb = F.gelu(F.linear(tutorial_time_embedding(time, time_pos_dim), sd["time_mlp.1.weight"],
                               sd["time_mlp.1.bias"]))
    x = F.conv2d(img, sd["init_conv.weight"], sd["init_conv.bias"], padding=3)
    n = sum(1 for k in sd if k.startswith("downs.") and k.endswith(".norm1.weight"))
    skips = []
    for i in range(n):
        x = tutorial_block_forward(sd, f"downs.{i}.", x, time_emb, up=False, branch_norm=branch_norm)
        skips.append(x)
    for i in range(n):
        x = tutorial_block_forward(sd, f"ups.{i}.", torch.cat((x, skips.pop()), dim=1), time_emb, up=True,
                                   branch_norm=branch_norm)
    return F.conv2d(x, sd["output.weight"], sd["output.bias"])


@pytest.mark.parametrize("subpixel", [False, True], ids=["literal-upsampling", "transposed-conv-upsampling"])
@pytest.mark.parametrize("config", [
    SeedUNetConfig(image_size=16, down_channels=(32, 64, 64)),
    SeedUNetConfig(image_size=16),  # the tutorial's default widths, 16×16 → 1×1 at the bottom
    SeedUNetConfig(image_size=16, in_channels=1, init_dim=64, down_channels=(64, 96), time_pos_dim=16),
], ids=["small", "default-widths", "grey"])
@pytest.mark.parametrize("block_norm", ["input", "branch"])
def test_seed_unet_forward_matches_the_tutorial(config, subpixel, block_norm):
    config = dataclasses.replace(config, block_norm=block_norm)
    model = perturb(seeded_init(lambda: SeedUNet(config)), scale=0.02).eval()
    model.subpixel = subpixel
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, config.in_channels, config.image_size, config.image_size, generator=g)
    t = torch.tensor([0, 17, 999])
    with torch.no_grad():
        ours = model(x, t)
        theirs = tutorial_forward(model.state_dict(), x, t, branch_norm=block_norm == "branch")
    assert ours.shape == x.shape
    assert ours.abs().mean() > 1e-2  # not a degenerate comparison of two zeros
    # float32 rounding, at the output's scale (un-normalised shortcuts let "branch" outputs grow)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5 * max(1.0, ours.abs().max().item()))


# --- nearest ×2 upsampling + 3×3 conv as one transposed conv ---------------------------------------------

@pytest.mark.parametrize("shape", [(2, 5, 7, 6), (1, 1, 1, 1), (3, 4, 2, 9)])
def test_upsample_conv3x3_is_upsample_then_conv_in_value_and_gradient(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, shape[1], 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, generator=g, dtype=torch.float64, requires_grad=True)
    ours = upsample_conv3x3(x, w, b)
    literal = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, b, padding=1)
    assert ours.shape == (shape[0], 3, 2 * shape[2], 2 * shape[3])
    torch.testing.assert_close(ours, literal, rtol=1e-12, atol=1e-12)
    upstream = torch.randn(ours.shape, generator=g, dtype=torch.float64)  # a generic ∂L/∂y
    for a, b_ in zip(torch.autograd.grad(ours, (x, w, b), upstream), torch.autograd.grad(literal, (x, w, b), upstream)):
        torch.testing.assert_close(a, b_, rtol=1e-12, atol=1e-12)


def test_upsample_conv3x3_gets_each_border_tap_right():
    """A kernel with a single 1 copies the upsampled image shifted by one pixel, zeros entering at the border."""
    x = torch.arange(1.0, 5.0, dtype=torch.float64).reshape(1, 1, 2, 2)  # [[1, 2], [3, 4]]
    up = F.interpolate(x, scale_factor=2, mode="nearest")[0, 0]  # (4, 4)
    for dy in range(3):
        for dx in range(3):
            w = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
            w[0, 0, dy, dx] = 1.0
            expected = F.pad(up, (1, 1, 1, 1))[dy:dy + 4, dx:dx + 4]  # out[i, j] = up[i + dy − 1, j + dx − 1]
            assert torch.equal(upsample_conv3x3(x, w, None)[0, 0], expected)


def test_seed_unet_trains_the_same_with_either_upsampling(seed_config):
    model = perturb(seeded_init(lambda: SeedUNet(seed_config)), scale=0.02)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, seed_config.image_size, seed_config.image_size, generator=g)
    t = torch.tensor([3, 900])
    grads = []
    for subpixel in (False, True):
        model.subpixel = subpixel
        assert model.subpixel is subpixel and all(block.subpixel is subpixel for block in model.ups)
        model.zero_grad()
        model.eval()(x, t).square().mean().backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters()})
    assert any(grads[0][name].abs().max() > 0 for name in grads[0] if name.endswith("sample.1.weight"))
    # float32 rounding, measured against the largest gradient entry: some gradients are zero in exact arithmetic
    # (a bias right before a GroupNorm) and hold only rounding noise in either form
    scale = max(grad.abs().max().item() for grad in grads[0].values())
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-5 * scale, msg=name)
