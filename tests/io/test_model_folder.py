"""The model folder: save → load gives the same network; every broken folder gives a ModelFolderError naming a file."""

import json
import random
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ddpm_app.io.loading import load_local, load_pretrained
from ddpm_app.io.model_folder import CONFIG_NAME, DiffusionConfig, ModelFolderError, read_config, save_pretrained
from ddpm_app.models import build_model

SHIPPED = Path(__file__).resolve().parents[2] / "weights"


def outputs(model) -> torch.Tensor:
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(x, torch.tensor([1, 15]))


# --- round trips ----------------------------------------------------------------------------------------

def test_save_then_load_is_bit_identical(tiny_model, tiny_diffusion_config, tiny_model_dir):
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_pretrained(tiny_model_dir)
    assert loaded.config == tiny_diffusion_config
    assert loaded.schedule.config == tiny_diffusion_config.schedule
    assert loaded.source == str(tiny_model_dir)
    assert not loaded.model.training
    assert loaded.num_parameters == sum(p.numel() for p in tiny_model.parameters())
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    reference = outputs(tiny_model)
    assert reference.abs().mean() > 1e-3
    assert torch.equal(outputs(loaded), reference)


def test_config_json_is_readable_alone(tiny_model_dir, tiny_diffusion_config):
    data = json.loads((tiny_model_dir / CONFIG_NAME).read_text())
    assert data["arch"] == "ddpm" and data["image_size"] == 16 and data["channels"] == 3
    assert data["schedule"]["timesteps"] == 20
    assert DiffusionConfig.from_dict(data) == tiny_diffusion_config
    assert read_config(tiny_model_dir) == tiny_diffusion_config


def test_sharded_save_round_trips(tiny_model, tiny_diffusion_config, tmp_path):
    directory = save_pretrained(tiny_model, tiny_diffusion_config, tmp_path / "sharded", max_shard_size="100KB")
    shards = sorted(p.name for p in directory.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tiny_model.state_dict())
    assert torch.equal(outputs(load_pretrained(directory)), outputs(tiny_model))


def test_a_tensor_larger_than_the_shard_size_gets_a_shard_of_its_own(tiny_model, tiny_diffusion_config, tmp_path):
    sizes = {k: v.numel() * v.element_size() for k, v in tiny_model.state_dict().items()}
    biggest = max(sizes, key=sizes.get)
    second = sorted(sizes.values())[-2]
    assert second < sizes[biggest]
    shard_size = (second + sizes[biggest]) // 2  # every tensor but the biggest fits in a shard
    directory = save_pretrained(tiny_model, tiny_diffusion_config, tmp_path / "m", max_shard_size=shard_size)
    index = json.loads((directory / "model.safetensors.index.json").read_text())["weight_map"]
    own = index[biggest]
    assert [k for k, f in index.items() if f == own] == [biggest]
    assert (directory / own).stat().st_size > shard_size
    for name in set(index.values()) - {own}:  # tensor bytes within the limit; the file adds a small JSON header
        assert sum(sizes[k] for k, f in index.items() if f == name) <= shard_size
    assert torch.equal(outputs(load_pretrained(directory)), outputs(tiny_model))


def test_resave_leaves_no_stale_weights(tiny_model, tiny_diffusion_config, tmp_path):
    directory = save_pretrained(tiny_model, tiny_diffusion_config, tmp_path / "m", max_shard_size="100KB")
    save_pretrained(tiny_model, tiny_diffusion_config, directory)
    assert sorted(p.name for p in directory.iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(outputs(load_pretrained(directory)), outputs(tiny_model))
    save_pretrained(tiny_model, tiny_diffusion_config, directory, max_shard_size="100KB")
    assert not (directory / "model.safetensors").exists()
    assert torch.equal(outputs(load_pretrained(directory)), outputs(tiny_model))


def test_fp16_export_loads(tiny_model, tiny_diffusion_config, tmp_path):
    directory = save_pretrained(tiny_model, tiny_diffusion_config, tmp_path / "fp16", dtype=torch.float16)
    with safe_open(directory / "model.safetensors", framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    full_size = sum(p.numel() * 4 for p in tiny_model.parameters())
    assert (directory / "model.safetensors").stat().st_size < 0.6 * full_size
    loaded = load_pretrained(directory)
    for key, value in tiny_model.state_dict().items():  # float32 model holding the float16-rounded weights
        assert torch.equal(loaded.model.state_dict()[key], value.half().float()), key
    torch.testing.assert_close(outputs(loaded), outputs(tiny_model), rtol=0, atol=2e-2)


# --- broken folders -------------------------------------------------------------------------------------

def test_truncated_weights(tiny_model_dir):
    weights = tiny_model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelFolderError, match="model.safetensors"):
        load_pretrained(tiny_model_dir)


def test_random_bytes_as_weights(tiny_model_dir):
    (tiny_model_dir / "model.safetensors").write_bytes(random.Random(0).randbytes(5000))
    with pytest.raises(ModelFolderError, match="model.safetensors"):
        load_pretrained(tiny_model_dir)


def test_missing_weights(tiny_model_dir):
    (tiny_model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="model.safetensors"):
        load_pretrained(tiny_model_dir)


def rewrite_config(directory, change) -> None:
    path = directory / CONFIG_NAME
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_unknown_architecture(tiny_model_dir):
    rewrite_config(tiny_model_dir, lambda d: d.update(arch="transformer"))
    with pytest.raises(ModelFolderError, match=r"config\.json.*unknown architecture 'transformer'"):
        load_pretrained(tiny_model_dir)


def test_invalid_json(tiny_model_dir):
    (tiny_model_dir / CONFIG_NAME).write_text('{"format": "ddpm-app", "arch": ')
    with pytest.raises(ModelFolderError, match=r"config\.json: not valid JSON"):
        load_pretrained(tiny_model_dir)


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(format="diffusers"), "format must be 'ddpm-app': not a ddpm-app model config"),
    (lambda d: d.update(format_version=99), "format_version 99 is newer than this app supports"),
    (lambda d: d.pop("schedule"), "missing key 'schedule'"),
    (lambda d: d["model"].update(width=3), "model.unknown ddpm config fields: width"),
    (lambda d: d["schedule"].update(kind="quadratic"), "schedule.kind must be one of linear, cosine, got 'quadratic'"),
    (lambda d: d["schedule"].update(steps=3), "schedule: got an unexpected keyword argument 'steps'"),
    (lambda d: d.update(sampling={"ddim_eta": 1.5}), r"sampling.ddim_eta must be a number in 0…1, got 1\.5"),
    (lambda d: d.update(sampling={"eta": 1}), "sampling: got an unexpected keyword argument 'eta'"),
    (lambda d: d.update(sampling=[1.0]), r"sampling must be a JSON object, got \[1\.0\]"),
], ids=["format", "version", "no-schedule", "model-field", "schedule-kind", "schedule-field", "sampling-eta",
        "sampling-field", "sampling-type"])
def test_bad_config_contents(tiny_model_dir, change, message):
    rewrite_config(tiny_model_dir, change)
    with pytest.raises(ModelFolderError, match=message) as error:
        load_pretrained(tiny_model_dir)
    assert "config.json" in str(error.value)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


# each wrong value a hand-edited or hostile config.json may hold: (change, the field and what it allows)
BAD_VALUES = [
    (lambda d: d.update(format_version="2"), "format_version must be a whole number in 0…1000000, got '2'"),
    (lambda d: d.update(format_version=True), "format_version must be a whole number in 0…1000000, got True"),
    (lambda d: d["schedule"].update(timesteps=1.5), "schedule.timesteps must be a whole number in 1…10000, got 1.5"),
    (lambda d: d["schedule"].update(timesteps=10_000_000), "schedule.timesteps must be a whole number in 1…10000"),
    (lambda d: d["schedule"].update(timesteps="20"), "schedule.timesteps must be a whole number in 1…10000, got '20'"),
    (lambda d: d["schedule"].update(beta_end=None), "schedule.beta_end must be a number in 0…1, got None"),
    (lambda d: d["schedule"].update(beta_start=0.5, beta_end=0.1), "schedule.beta_start and beta_end need 0 <"),
    (lambda d: d["model"].update(dropout="x"), "model.dropout must be a number in 0…1, got 'x'"),
    (lambda d: d["model"].update(head_channels=0), "model.head_channels must be a whole number in 1…2048, got 0"),
    (lambda d: d["model"].update(base_channels=-8), "model.base_channels must be a whole number in 1…2048, got -8"),
    (lambda d: d["model"].update(base_channels=32.0), "model.base_channels must be a whole number in 1…2048, got 32.0"),
    (lambda d: d["model"].update(num_res_blocks=True), "model.num_res_blocks must be a whole number in 1…8, got True"),
    (lambda d: d["model"].update(image_size=4096), "model.image_size must be a whole number in 1…512, got 4096"),
    (lambda d: d["model"].update(in_channels=0), "model.in_channels must be a whole number in 1…4, got 0"),
    (lambda d: d["model"].update(channel_mult=[1, "2"]), r"model.channel_mult\[1\] must be a whole number in 1…16"),
    (lambda d: d["model"].update(channel_mult=7), "model.channel_mult must be a list of 1…8 whole numbers in 1…16"),
    (lambda d: d["model"].update(base_channels=1024, channel_mult=[1, 16]),
     r"model.base_channels·max\(channel_mult\) must be at most 2048 channels"),
    (lambda d: d.update(model=[1]), r"model must be a JSON object, got \[1\]"),
    (lambda d: d.update(arch=["ddpm"]), r"arch: unknown architecture \['ddpm'\]"),
    (lambda d: d.update(image_size=128), "image_size is 128 but the model's is 16; they must agree"),
    (lambda d: d.update(training="a lot"), "training must be a JSON object, got 'a lot'"),
    (lambda d: d.update(training={"notes": nested(40)}), "lists and objects nest more than 16 levels deep"),
]


@pytest.mark.parametrize("change, message", BAD_VALUES)
def test_every_bad_value_in_config_json_is_named_with_what_it_allows(tiny_model_dir, change, message):
    rewrite_config(tiny_model_dir, change)
    with pytest.raises(ModelFolderError, match=message) as error:
        load_pretrained(tiny_model_dir)
    assert str(error.value).startswith(f"{tiny_model_dir / CONFIG_NAME}: ")


def test_nesting_too_deep_for_the_json_parser_is_a_message(tiny_model_dir):
    (tiny_model_dir / CONFIG_NAME).write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ModelFolderError, match=r"config\.json: lists and objects nest more than 16 levels deep"):
        load_pretrained(tiny_model_dir)


def test_a_huge_config_json_is_refused_before_it_is_read(tiny_model_dir):
    (tiny_model_dir / CONFIG_NAME).write_text(" " * (2 << 20) + "{}")
    with pytest.raises(ModelFolderError, match=r"config\.json: 2,097,154 bytes, more than a config\.json may have"):
        load_pretrained(tiny_model_dir)


def recorded_sizes(folder) -> dict[str, str | None]:
    """Each weights file of ``folder`` → the image size its safetensors metadata records (None: none)."""
    sizes = {}
    for path in sorted(folder.glob("model*.safetensors")):
        with safe_open(path, "pt") as f:
            sizes[path.name] = (f.metadata() or {}).get("image_size")
    return sizes


def test_every_weights_file_records_the_image_size_it_was_saved_for(tiny_model, tiny_diffusion_config, tmp_path):
    single = save_pretrained(tiny_model, tiny_diffusion_config, tmp_path / "one")
    sharded = save_pretrained(tiny_model, tiny_diffusion_config, tmp_path / "shards", max_shard_size="100KB")
    assert recorded_sizes(single) == {"model.safetensors": "16"}
    assert len(recorded_sizes(sharded)) > 1 and set(recorded_sizes(sharded).values()) == {"16"}


@pytest.mark.parametrize("max_shard_size", ["5GB", "100KB"])
def test_weights_saved_for_another_image_size_are_refused(tiny_model, tiny_diffusion_config, tmp_path, max_shard_size):
    """A convolutional network's weights run at any image size; the size they were trained at is stored with them, and
    a config.json that asks for another is refused, naming both files, both sizes and the fields to set."""
    folder = save_pretrained(tiny_model, tiny_diffusion_config, tmp_path / "m", max_shard_size=max_shard_size)
    rewrite_config(folder, lambda d: (d.update(image_size=32), d["model"].update(image_size=32)))
    first = min(recorded_sizes(folder))
    with pytest.raises(ModelFolderError) as error:
        load_pretrained(folder)
    assert str(error.value) == (
        f"{folder / CONFIG_NAME}: image_size (and model.image_size) is 32, but {folder / first} records that its "
        "weights were trained at 16×16 (its metadata's image_size). "
        "Set both fields to 16, or train a model at 32×32.")


def without_recorded_size(path) -> None:
    """Write ``path`` again as exports before the record were: the same tensors, no image size in the metadata."""
    save_file(load_file(path), path, metadata={"format": "pt"})


def test_weights_that_record_no_image_size_still_load(tiny_model, tiny_model_dir):
    """Older exports and other people's folders record no size: they load as they did, at config.json's size."""
    without_recorded_size(tiny_model_dir / "model.safetensors")
    assert recorded_sizes(tiny_model_dir) == {"model.safetensors": None}
    assert torch.equal(outputs(load_pretrained(tiny_model_dir)), outputs(tiny_model))


def test_a_recorded_image_size_that_is_not_a_size_is_named(tiny_model_dir):
    weights = tiny_model_dir / "model.safetensors"
    save_file(load_file(weights), weights, metadata={"format": "pt", "image_size": "sixteen"})
    with pytest.raises(ModelFolderError, match=rf"^{re.escape(str(weights))}: its metadata's image_size is 'sixteen', "
                                               r"not an image size\. Re-export or re-download the model\.$"):
        load_pretrained(tiny_model_dir)


@pytest.mark.parametrize("folder", sorted(p.parent for p in SHIPPED.glob("*/config.json")), ids=lambda p: p.name)
def test_every_shipped_weights_file_records_its_config_s_image_size(folder):
    size = str(read_config(folder).image_size)
    assert recorded_sizes(folder) and set(recorded_sizes(folder).values()) == {size}


def test_shapes_are_checked_before_the_network_is_built(tiny_model_dir, monkeypatch):
    """A config far larger than its weights (here 16× the widths) is refused from the weights' headers, before a
    tensor of that size exists."""
    from ddpm_app.io import model_folder

    rewrite_config(tiny_model_dir, lambda d: d["model"].update(base_channels=512))
    monkeypatch.setattr(model_folder, "build_model", lambda config: pytest.fail("built before the check") if
                        torch.get_default_device().type != "meta" else build_model(config))
    with pytest.raises(ModelFolderError, match=r"model\.safetensors: weights do not match config\.json "
                                               r"\(time_embed\.0\.weight is \(128, 32\) in the weights, "
                                               r"\(2048, 512\) by config\.json"):
        load_pretrained(tiny_model_dir)


def test_config_that_disagrees_with_the_weights(tiny_model_dir):
    rewrite_config(tiny_model_dir, lambda d: d["model"].update(base_channels=64))
    with pytest.raises(ModelFolderError, match=r"model\.safetensors: weights do not match config\.json"):
        load_pretrained(tiny_model_dir)


def rewrite_weights(directory, change) -> None:
    path = directory / "model.safetensors"
    state = load_file(path)
    change(state)
    save_file(state, path)


def test_weights_missing_a_layer_are_refused_by_name(tiny_model_dir):
    """Loading is strict: a folder without its attention weights fails, naming a missing key."""
    def drop_attention(state):
        dropped = [k for k in state if ".attn." in k or k.startswith("mid_attn.")]
        assert len(dropped) > 4
        for k in dropped:
            del state[k]

    rewrite_weights(tiny_model_dir, drop_attention)
    with pytest.raises(ModelFolderError, match=r"weights do not match config\.json \(down\.0\.0\.attn\.norm\.weight missing; ") as error:
        load_pretrained(tiny_model_dir)
    assert str(tiny_model_dir / "model.safetensors") in str(error.value)


def test_weights_with_an_extra_tensor_are_refused_by_name(tiny_model_dir):
    rewrite_weights(tiny_model_dir, lambda state: state.update({"extra.weight": torch.zeros(3)}))
    with pytest.raises(ModelFolderError, match=r"weights do not match config\.json \(extra\.weight not in the network\)"):
        load_pretrained(tiny_model_dir)


def test_missing_config_and_missing_folder(tiny_model_dir, tmp_path):
    (tiny_model_dir / CONFIG_NAME).unlink()
    with pytest.raises(ModelFolderError, match=r"config\.json: not found"):
        load_pretrained(tiny_model_dir)
    with pytest.raises(ModelFolderError, match="no such model folder"):
        load_local(tmp_path / "does-not-exist")


# --- the Hub, without a network -------------------------------------------------------------------------

def test_repo_id_while_offline(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # so "someone/tiny-ddpm" cannot be a local folder
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the library reads the variable at import time
    with pytest.raises(ModelFolderError, match="cannot reach the Hugging Face Hub and the model is not cached"):
        load_pretrained("someone/tiny-ddpm", cache_dir=tmp_path / "cache")


def test_repo_id_with_unreachable_hub(monkeypatch, tmp_path, no_hub_network):
    monkeypatch.chdir(tmp_path)
    assert constants.ENDPOINT == no_hub_network and no_hub_network.startswith("http://127.0.0.1:")
    with pytest.raises(ModelFolderError, match="someone/tiny-ddpm: cannot reach the Hugging Face Hub") as error:
        load_pretrained("someone/tiny-ddpm", cache_dir=tmp_path / "cache")
    assert "\n" not in str(error.value)
