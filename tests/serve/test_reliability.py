"""Bad input to the handlers (images, values, model folders) gives a message naming the problem, and the next
request works; the Hub download asks only for data files and never leaks a token."""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from conftest import assert_pictures_close, make_tiny_config, noised_photo_picture, perturb, seeded_init
from PIL import Image, ImageFile

from ddpm_app import image
from ddpm_app.diffusion.schedule import ScheduleConfig
from ddpm_app.image import load_image
from ddpm_app.io import loading
from ddpm_app.io.model_folder import DiffusionConfig, ModelFolderError, save_pretrained
from ddpm_app.models import UNet
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.ui import kit
from ddpm_app.ui import page as ui
from ddpm_app.views.state import UserState

T = 20
PHOTO = Path(kit.ASSETS) / "portrait.png"


def save_tiny(directory: Path, seed: int = 0) -> Path:
    config = DiffusionConfig(make_tiny_config(), ScheduleConfig(timesteps=T), training={"dataset": "noise"})
    return save_pretrained(perturb(seeded_init(lambda: UNet(config.model), seed), seed), config, directory)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    save_tiny(root / "faces")
    return root


@pytest.fixture
def handlers(weights: Path, tmp_path: Path) -> ui.Handlers:
    return ui.Handlers(ModelLibrary(weights, "cpu"), preview_interval=None, export_dir=tmp_path / "exports")


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width × height 8-bit RGB pixels but holds only a few bytes of data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def saved(tmp_path: Path, name: str, img: Image.Image, **kw) -> str:
    path = tmp_path / name
    img.save(path, **kw)
    return str(path)


# -- bad image files ----------------------------------------------------------------------------------------------

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n"


def truncated_png(tmp_path: Path) -> str:
    data = (tmp_path / "full.png")
    Image.open(PHOTO).save(data)
    (tmp_path / "truncated.png").write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    return str(tmp_path / "truncated.png")


BAD_FILES = {
    "text": (lambda d: (d / "notes.png").write_text("not an image") and str(d / "notes.png"), "not a readable image"),
    "empty": (lambda d: (d / "empty.png").write_bytes(b"") or str(d / "empty.png"), "the file is empty"),
    "truncated": (truncated_png, "not a readable image"),
    "zero-size": (lambda d: (d / "zero.png").write_bytes(png_header(0, 0)) and str(d / "zero.png"),
                  "the image is empty \\(0×0 pixels\\)"),
    "zero-width": (lambda d: (d / "zero-w.png").write_bytes(png_header(0, 40)) and str(d / "zero-w.png"),
                   "the image is empty \\(0×40 pixels\\)"),
    "eps": (lambda d: (d / "a.eps").write_bytes(EPS) and str(d / "a.eps"),
            "not a readable image \\(unknown or unsupported format\\); use a PNG, JPEG, WebP, GIF, BMP or TIFF"),
    "bomb 30000×30000": (lambda d: (d / "bomb.png").write_bytes(png_header(30_000, 30_000)) and str(d / "bomb.png"),
                         "the image is too large \\(over 40,000,000 pixels\\)"),
    "bomb just over the limit": (lambda d: (d / "bomb2.png").write_bytes(png_header(8_000, 5_001))
                                 and str(d / "bomb2.png"), "the image is too large"),
    "missing": (lambda d: str(d / "nowhere.png"), "file not found"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_image_files_give_a_message_and_the_next_request_works(handlers: ui.Handlers, tmp_path: Path, kind,
                                                                   monkeypatch):
    make, message = BAD_FILES[kind]
    path = make(tmp_path)
    user = UserState()
    with monkeypatch.context() as m:
        if kind.startswith("bomb"):  # refused from the header: never decoded
            m.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("decoded a bomb"))
        with pytest.raises(gr.Error, match=message):
            handlers.noise(path, 5, True, -1, user)
    assert_pictures_close(handlers.noise(str(PHOTO), 5, True, 3, user)[2], noised_photo_picture(PHOTO, 16, 5, 3, T))


def test_only_the_supported_decoders_are_tried(tmp_path: Path, monkeypatch):
    """An EPS file is valid to Pillow (it would run Ghostscript to draw it); the app does not even parse it."""
    from PIL import EpsImagePlugin

    (tmp_path / "a.eps").write_bytes(EPS)
    assert Image.open(tmp_path / "a.eps").format == "EPS"  # Pillow alone would take it
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: pytest.fail("parsed an EPS file"))
    with pytest.raises(image.ImageError, match="unknown or unsupported format"):
        load_image(tmp_path / "a.eps", 16)
    assert image.FORMATS == ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")


def float_tiff(tmp_path: Path, values: np.ndarray) -> Path:
    path = tmp_path / "float.tif"
    Image.fromarray(values.astype(np.float32), mode="F").save(path)
    assert Image.open(path).mode == "F"
    return path


def test_float_tiffs_in_0_1_are_read_as_such(tmp_path: Path):
    ramp = np.tile(np.linspace(0.0, 1.0, 16, dtype=np.float32), (16, 1))  # black on the left, white on the right
    x = load_image(float_tiff(tmp_path, ramp), 16)  # (3, 16, 16) in [−1, 1]
    assert x[:, :, 0].max() < -0.9 and x[:, :, -1].min() > 0.9
    np.testing.assert_allclose(x[0, 0].numpy(), 2 * ramp[0] - 1, atol=0.02)


def test_a_large_float_tiff_is_averaged_down_before_its_pixels_become_arrays(tmp_path: Path):
    """Rescaling went through float64 copies of the whole image, 8 bytes a pixel (about 1 GB for 6,300² pixels);
    the arrays made now are a small fraction of the decoded image (4 bytes a pixel)."""
    side = 2000
    ramp = np.tile(np.linspace(0.0, 1.0, side, dtype=np.float32), (side, 1))
    path = float_tiff(tmp_path, ramp)
    tracemalloc.start()  # NumPy's arrays are traced; Pillow's own image memory is not
    try:
        x = load_image(path, 16)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < side * side, f"{peak / 2**20:.0f} MiB of arrays for a {4 * side * side / 2**20:.0f} MiB image"
    assert x[:, :, 0].max() < -0.9 and x[:, :, -1].min() > 0.9  # still black on the left, white on the right


def test_float_tiffs_in_other_ranges_are_refused_with_the_reason(tmp_path: Path):
    with pytest.raises(image.ImageError, match=r"floating-point image with values in -3…2 .* floats in 0…1"):
        load_image(float_tiff(tmp_path, np.linspace(-3, 2, 256).reshape(16, 16)), 16)
    with pytest.raises(image.ImageError, match="not numbers \\(NaN or infinity\\)"):
        load_image(float_tiff(tmp_path, np.full((16, 16), np.nan)), 16)


def test_a_data_url_over_the_size_limit_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(image.base64, "b64decode", lambda *a, **k: pytest.fail("decoded it"))
    too_big = "data:image/png;base64," + "A" * (image.MAX_FILE_BYTES // 3 * 4 + 8)
    with pytest.raises(image.ImageError, match="the file is too large \\(20.0 MB; at most 20 MB\\)"):
        image.read_data_url(too_big)
    with pytest.raises(image.ImageError, match="the file is too large"):
        image.read_data_url("data:image/png," + "%41" * (image.MAX_FILE_BYTES + 10))


def test_files_over_the_size_limit_are_refused_before_opening(handlers: ui.Handlers, tmp_path: Path, monkeypatch):
    path = saved(tmp_path, "photo.png", Image.open(PHOTO))
    monkeypatch.setattr(image, "MAX_FILE_BYTES", Path(path).stat().st_size - 1)
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("opened a file over the limit"))
    with pytest.raises(gr.Error, match="the file is too large .* at most"):
        handlers.noise(path, 5, True, -1, UserState())


def odd_but_valid(tmp_path: Path) -> dict[str, str]:
    rgb = Image.open(PHOTO).convert("RGB").resize((40, 30))
    palette = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    frames = [Image.new("RGB", (20, 20), c) for c in ("red", "blue", "green")]
    wide = Image.new("RGB", (1, 300), "orange")
    sixteen = Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100)  # mode I;16
    return {
        "cmyk": saved(tmp_path, "cmyk.jpg", rgb.convert("CMYK")),
        "16-bit": saved(tmp_path, "sixteen.png", sixteen),
        "palette+transparency": saved(tmp_path, "palette.png", palette, transparency=0),
        "1×300": saved(tmp_path, "strip.png", wide),
        "300×1": saved(tmp_path, "strip2.png", wide.transpose(Image.Transpose.ROTATE_90)),
        "animated gif": saved(tmp_path, "anim.gif", frames[0], save_all=True, append_images=frames[1:]),
        "animated webp": saved(tmp_path, "anim.webp", frames[0], save_all=True, append_images=frames[1:],
                               lossless=True),
    }


def test_odd_but_valid_images_are_used(handlers: ui.Handlers, tmp_path: Path):
    user = UserState()
    for kind, path in odd_but_valid(tmp_path).items():
        x0 = handlers.noise(path, 5, True, -1, user)[0]
        expected = ((load_image(path, 16) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(x0, expected, err_msg=kind)


def test_animated_images_use_their_first_frame(tmp_path: Path):
    paths = odd_but_valid(tmp_path)
    for kind in ("animated gif", "animated webp"):
        x = load_image(paths[kind], 8)
        # exactly the first frame's pure red (255, 0, 0) everywhere: not the blue or green frames, nor a blend
        assert x[0].eq(1.0).all() and x[1:].eq(-1.0).all(), kind


def test_huge_exif_rotated_photo_is_upright_and_decoded_reduced(tmp_path: Path):
    """A 6000×4000 JPEG whose EXIF says 'rotate 90°': left half dark, so upright its top half is dark."""
    arr = np.full((4000, 6000, 3), 230, np.uint8)
    arr[:, :3000] = 20
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    path = saved(tmp_path, "big.jpg", Image.fromarray(arr), exif=exif, quality=80)
    assert image.open_image(path, 16).size == (750, 500)  # JPEG draft mode: decoded at 1/8 scale
    x = load_image(path, 16)
    assert x.shape == (3, 16, 16)
    # upright, the top rows are the dark level 20 and the bottom rows the light 230, to JPEG's rounding (fails if
    # the rotation is ignored or applied the wrong way, which leaves a left/right split)
    top, bottom = x[:, :6].mean(), x[:, 10:].mean()
    assert float(top) == pytest.approx(20 / 127.5 - 1, abs=0.03)
    assert float(bottom) == pytest.approx(230 / 127.5 - 1, abs=0.03)


# -- wrong values through the API -------------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (("ddim", "ten", 0.0, 1, 1), "DDIM steps must be a whole number in 1…20"),
    (("ddim", None, 0.0, 1, 1), "DDIM steps must be a whole number in 1…20"),
    (("ddim", 2.5, 0.0, 1, 1), "DDIM steps must be a whole number in 1…20"),
    (("ddim", 5, "lots", 1, 1), "η \\(eta\\) must be a number in 0…1"),
    (("ddim", 5, None, 1, 1), "η \\(eta\\) must be a number in 0…1"),
    (("ddim", 5, -0.1, 1, 1), "η \\(eta\\) must be a number in 0…1"),
    (("ddim", 5, float("nan"), 1, 1), "η \\(eta\\) must be a number in 0…1"),
    (("ddim", 5, 0.0, "abc", 1), "seed must be a whole number in 0…4294967295"),
    (("ddim", 5, 0.0, 10**400, 1), "seed must be a whole number in 0…4294967295"),
    (("ddim", 5, 0.0, float("inf"), 1), "seed must be a whole number in 0…4294967295"),
    (("ddim", 5, 0.0, [1], 1), "seed must be a whole number in 0…4294967295"),
    (("ddim", 5, 0.0, 1, "two"), "number of images must be a whole number in 1…4"),
    (("ddim", 5, 0.0, 1, 1000), "number of images must be a whole number in 1…4"),
    ((None, 5, 0.0, 1, 1), "sampler must be one of ddpm, ddim"),
])
def test_wrong_type_values_name_the_allowed_range(handlers: ui.Handlers, args, message):
    sampler, steps, eta, seed, batch = args
    with pytest.raises(gr.Error, match=message):
        next(handlers.generate(sampler, steps, eta, seed, batch, True, False, UserState()))


@pytest.mark.parametrize("t", [0, T + 1, "x", None, 2.5, 10**400])
def test_wrong_t_names_the_allowed_range(handlers: ui.Handlers, t):
    """t is the paper's, 1…T: 0 (the data x₀ itself) and T + 1 are outside."""
    with pytest.raises(gr.Error, match=f"t must be a whole number in 1…{T}"):
        handlers.noise(str(PHOTO), t, True, -1, UserState())


# -- broken model folders -----------------------------------------------------------------------------------------


def break_unknown_arch(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    config["arch"] = "transformer-xl"
    (folder / "config.json").write_text(json.dumps(config))
    return r"config\.json: arch: unknown architecture 'transformer-xl'"


def break_truncated(folder: Path) -> str:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return r"model\.safetensors: not a readable safetensors file"


def break_not_safetensors(folder: Path) -> str:
    (folder / "model.safetensors").write_bytes(b"PK\x03\x04 this is a zip, or a pickle, or anything else" * 10)
    return r"model\.safetensors: not a readable safetensors file"


def break_shapes(folder: Path) -> str:
    config = json.loads((folder / "config.json").read_text())
    config["model"]["base_channels"] = 64  # weights were saved for 32
    (folder / "config.json").write_text(json.dumps(config))
    return r"model\.safetensors: weights do not match config\.json \(time_embed\.0\.weight is \(128, 32\) in the weights, \(256, 64\) by config\.json"


def break_missing_folder(folder: Path) -> str:
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
    return "no such model folder"


@pytest.mark.parametrize("breaker", [break_unknown_arch, break_truncated, break_not_safetensors, break_shapes,
                                     break_missing_folder])
def test_broken_model_folder_names_the_file_and_the_last_good_model_keeps_serving(tmp_path: Path, breaker):
    root = tmp_path / "weights"
    save_tiny(root / "faces")
    save_tiny(root / "broken", seed=1)
    h = ui.Handlers(ModelLibrary(root, "cpu"), preview_interval=None, export_dir=tmp_path / "exports")
    user = UserState()
    before = list(h.generate("ddim", 3, 0.0, 7, 1, True, False, user))[-1][0]
    message = breaker(root / "broken")  # broken after the app started: found when it is picked
    with pytest.raises(gr.Error, match=message) as error:
        h.select_model("broken", user)
    assert str(root / "broken") in str(error.value) and "Traceback" not in str(error.value)
    assert user.model in (None, "faces")
    after = list(h.generate("ddim", 3, 0.0, 7, 1, True, False, user))[-1][0]
    np.testing.assert_array_equal(before, after)  # the same model, still serving


def test_missing_weights_folder_is_a_one_line_error(tmp_path: Path):
    with pytest.raises(ModelFolderError, match="no models in .*nowhere"):
        ModelLibrary(tmp_path / "nowhere", "cpu")


# -- the Hub ----------------------------------------------------------------------------------------------------


def test_hub_download_asks_only_for_config_weights_card_and_pictures(monkeypatch, tmp_path: Path):
    import huggingface_hub

    asked = {}

    def fake_snapshot_download(repo_id, **kwargs):
        asked.update(kwargs, repo_id=repo_id)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    assert loading.download("someone/model") == tmp_path
    assert asked["repo_id"] == "someone/model"
    assert sorted(asked["allow_patterns"]) == sorted(["config.json", "*.safetensors", "*.safetensors.index.json",
                                                      "README.md", "*.png", "heldout.json"])
    assert "trust_remote_code" not in asked
    for pattern in asked["allow_patterns"]:
        for unsafe in (".bin", ".pt", ".pth", ".pkl", ".ckpt", ".py"):
            assert not pattern.endswith(unsafe)


def test_a_failed_download_never_shows_the_token(handlers: ui.Handlers, monkeypatch):
    secret = "hf_" + "q" * 34
    monkeypatch.setenv("HF_TOKEN", secret)
    with pytest.raises(gr.Error) as error:
        handlers.download_model("someone/private-model", UserState())
    assert secret not in str(error.value) and "the current model stays loaded" in str(error.value)
