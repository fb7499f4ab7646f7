"""The models in weights/: each loads, has its card and license, stays under the file-size limit, and samples."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ddpm_app.diffusion import samplers
from ddpm_app.diffusion.schedule import Schedule
from ddpm_app.image import load_image
from ddpm_app.io.loading import load_pretrained
from ddpm_app.runtime.inference import prepare

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / "weights"
SHIPPED = sorted(d.name for d in WEIGHTS.iterdir() if (d / "config.json").is_file())
MAX_FILE_BYTES = 16 * 2 ** 20


def oversized_files(folder: Path, limit: int = MAX_FILE_BYTES) -> list[str]:
    """Files over ``limit``, except safetensors shards that hold a single tensor (one that alone exceeds it)."""
    bad = []
    for f in sorted(folder.iterdir()):
        if f.stat().st_size <= limit:
            continue
        if f.suffix == ".safetensors":
            with safe_open(f, framework="pt") as weights:
                if len(list(weights.keys())) == 1:
                    continue
        bad.append(f.name)
    return bad


def test_the_size_rule_allows_only_single_tensor_shards_over_the_limit(tmp_path):
    from safetensors.torch import save_file
    save_file({"big": torch.zeros(300)}, tmp_path / "one.safetensors")  # 1,200 bytes of data
    save_file({"a": torch.zeros(150), "b": torch.zeros(150)}, tmp_path / "two.safetensors")
    (tmp_path / "samples.png").write_bytes(b"x" * 1100)
    (tmp_path / "config.json").write_text("{}")
    assert oversized_files(tmp_path, limit=1000) == ["samples.png", "two.safetensors"]


def test_the_faces_emoji_and_seed_faces_models_ship():
    assert {"faces", "emoji", "seed-faces"} <= set(SHIPPED)


def test_the_app_lists_every_shipped_model():
    from ddpm_app.serve.library import find_models
    assert set(find_models(WEIGHTS)) == set(SHIPPED)


def test_seed_faces_is_the_tutorial_s_network_and_its_card_says_so():
    config = json.loads((WEIGHTS / "seed-faces" / "config.json").read_text())
    assert config["arch"] == "seed"
    card = (WEIGHTS / "seed-faces" / "README.md").read_text()
    assert "the seed tutorial's own U-Net" in card and "| the tutorial | this model |" in card


@pytest.fixture(scope="module", params=SHIPPED)
def shipped(request):
    return request.param, load_pretrained(WEIGHTS / request.param)


def test_files_are_small_enough_and_the_card_names_the_license(shipped):
    name, _ = shipped
    folder = WEIGHTS / name
    assert oversized_files(folder) == []
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: ddpm-app\nlicense: ")
    assert "## Evaluation" in card and "![samples](samples.png)" in card
    assert (folder / "samples.png").is_file()
    expected = {"faces": "non-commercial", "emoji": "CC-BY-4.0"}.get(name)
    if expected:
        assert expected in card


def test_config_records_the_training(shipped):
    name, loaded = shipped
    training = json.loads((WEIGHTS / name / "config.json").read_text())["training"]
    assert training["weights"] == "ema" and training["images_seen"] > 1_000_000 and training["hardware"]
    assert loaded.config.image_size == 64 and loaded.config.channels == 3


def test_the_card_readme_and_held_out_figures_quote_the_model_s_own_evaluation(shipped):
    """After a retraining, the evaluation report in docs/eval/, the stored held-out bits/dim and the headline
    figures of the card and the README must all be the new model's. Where the report left the exact bound out
    (``--skip-bpd``), the card and the README quote the trainer's estimate in ``heldout.json`` and call it one."""
    name, _ = shipped
    report = json.loads((ROOT / "docs" / "eval" / f"{name}-eval.json").read_text())
    stored = json.loads((WEIGHTS / name / "heldout.json").read_text())["bpd"]
    bound = report["bpd"]
    if bound is None:
        assert report["config"]["skip_bpd"] and not stored["exact"]
        bound, label = stored, " (estimate)"
    else:
        assert bound["exact"] and bound["num_images"] >= 300
        assert stored["total"] == pytest.approx(bound["total"], abs=1e-9)
        label = ""
    quoted = f"{bound['total']:.3f} ± {bound['stderr']:.3f}{label}"
    assert quoted in (WEIGHTS / name / "README.md").read_text()
    assert quoted in (ROOT / "README.md").read_text()
    if "utkface" in report["data"]:  # the face models: the card's FD-UTK at sampling seed 0
        assert f"{report['faces']['fd_samples_test']:.2f}" in (WEIGHTS / name / "README.md").read_text()


RECORDED = Path(__file__).resolve().parents[1] / "recorded" / "shipped_outputs.safetensors"
PICTURES = [Path(__file__).resolve().parents[2] / "ddpm_app" / "assets" / f"{name}.png" for name in ("portrait", "smiley")]


def test_forward_pass_matches_the_recorded_outputs(shipped):
    """ε̂ on fixed inputs equals what scripts/record_shipped_outputs.py recorded (re-record only after retraining)."""
    name, loaded = shipped
    recorded = load_file(RECORDED)
    assert sorted(k.split("/", 1)[1] for k in recorded if k.startswith("eps/")) == SHIPPED
    with torch.no_grad():
        eps = loaded.model(recorded["x"].float(), recorded["t"])
    assert recorded["eps/" + name].abs().mean() > 0.5
    torch.testing.assert_close(eps, recorded["eps/" + name], rtol=1e-4, atol=2e-4)


@pytest.mark.parametrize("t", [300, 600])
def test_the_trained_network_predicts_the_noise_of_noised_pictures(shipped, t):
    """E‖ε − ε_θ(√ᾱ_t·x₀ + √(1−ᾱ_t)·ε, t)‖² is far below 1 (the error of ε̂ = 0) on two pictures it never saw."""
    _, loaded = shipped
    x0 = torch.stack([load_image(p, 64) for p in PICTURES])  # (2, 3, 64, 64)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(t))
    tt = torch.full((2,), t)
    x_t = loaded.schedule.q_sample(x0, tt, eps)
    with torch.no_grad():
        mse = ((loaded.model(x_t, tt) - eps) ** 2).mean(dim=(1, 2, 3))
    assert (mse < 0.05).all(), mse  # measured 0.003–0.021 for both models


def test_the_prepared_network_samples_exactly_as_the_loaded_one(shipped):
    """prepare() in fp32 (channels_last, eval, no grad) changes the speed, not the chain:
    same seed, same DDIM images."""
    _, loaded = shipped
    schedule = Schedule(loaded.config.schedule)

    def run(model, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return samplers.final(samplers.ddim(model, schedule, (2, 3, 64, 64), steps=4, eta=0.5, generator=gen,
                                            clip_x0=True))

    prepared = prepare(loaded.model, "cpu", precision="fp32")
    raw = run(loaded.model, 0)
    # channels_last kernels sum in another order: float32 rounding, far below one 8-bit level (2/255)
    torch.testing.assert_close(run(prepared, 0), raw, rtol=0, atol=1e-3)
    assert raw.abs().max() <= 1.0 + 1e-5  # with clipping, the last DDIM step returns x̂₀ in [−1, 1]
    assert (run(prepared, 1) - raw).abs().mean() > 0.1  # the seed decides the images


def test_early_guesses_are_saturated_noise_and_the_layout_settles_by_t700(shipped):
    """What the Frames help says about x̂₀ along a clipped DDIM chain: at t = 999 most values sit at ±1 and
    neighbouring pixels differ like noise (not a blurry average); by t ≈ 700 x̂₀ is close to the final image."""
    _, loaded = shipped
    model = prepare(loaded.model, "cpu")
    schedule = Schedule(loaded.config.schedule)
    steps = list(samplers.ddim(model, schedule, (2, 3, 64, 64), steps=20, clip_x0=True,
                               generator=torch.Generator().manual_seed(0)))
    final = steps[-1].x_prev
    first = steps[0].pred_x0
    assert steps[0].t == 999
    assert (first.abs() > 0.99).float().mean() > 0.4  # saturated colours
    neighbour_difference = (first[..., 1:, :] - first[..., :-1, :]).abs().mean()
    assert neighbour_difference > 2 * (final[..., 1:, :] - final[..., :-1, :]).abs().mean()  # noise, not blur
    settled = next(s for s in steps if s.t <= 700).pred_x0
    assert torch.corrcoef(torch.stack([settled.flatten(), final.flatten()]))[0, 1] > 0.7


def test_a_seeds_image_is_the_same_in_any_batch_and_any_view():
    """Generate's images at one, three and four images and Interpolate's end images, for the same seeds and settings,
    through the network the app runs on this machine with two threads, as on a 2-core machine (OpenVINO bf16 where it
    is installed and the CPU has bf16 in hardware, PyTorch fp32 elsewhere): at most 2 grey levels apart. DDIM with
    η = 0, so the seed's x_T alone decides the image."""
    from ddpm_app.diffusion.samplers import SamplerSettings
    from ddpm_app.image import to_uint8
    from ddpm_app.serve.served import ServedModel

    torch.manual_seed(0)
    loaded = load_pretrained(WEIGHTS / "faces")
    served = ServedModel("faces", loaded, prepare(loaded.model, "cpu", cpu_runtime="auto", cpu_threads=2))
    settings = SamplerSettings("ddim", 20, 0.0, True)

    def images(steps) -> torch.Tensor:
        return to_uint8(samplers.final(steps)).int()  # (B, C, H, W) grey levels

    four = images(served.sample(settings, 4, seed=5))
    one = images(served.sample(settings, 1, seed=5))
    three = images(served.sample(settings, 3, seed=5))
    ends = images(served.interpolate(5, 8, 4, settings))
    other = images(served.sample(settings, 1, seed=8))
    for a, b in ((one[0], four[0]), (three, four[:3]), (ends[0], one[0]), (ends[-1], other[0])):
        assert (a - b).abs().max() <= 2, served.runtime.describe()
    assert (one[0] - other[0]).abs().max() > 50  # different seeds: different faces, so the test can fail
