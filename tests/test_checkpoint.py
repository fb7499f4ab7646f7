"""The model folder: save → load gives the same network; every broken folder gives a ModelFolderError naming a file."""

import json
import random

import pytest
import torch
from huggingface_hub import constants
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ddpm_app.model_folder import (CONFIG_NAME, DiffusionConfig, ModelFolderError, load_local, load_pretrained,
                                   read_config, save_pretrained)


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
    (lambda d: d.update(format="diffusers"), "not a ddpm-app model config"),
    (lambda d: d.update(format_version=99), "newer than this app supports"),
    (lambda d: d.pop("schedule"), "missing key 'schedule'"),
    (lambda d: d["model"].update(width=3), "unknown ddpm config fields: width"),
    (lambda d: d["schedule"].update(kind="quadratic"), "unknown schedule"),
    (lambda d: d["schedule"].update(steps=3), "bad schedule"),
    (lambda d: d.update(sampling={"ddim_eta": 1.5}), "ddim_eta must be a number from 0 to 1, got 1.5"),
    (lambda d: d.update(sampling={"eta": 1}), "bad sampling defaults: .*unexpected keyword argument 'eta'"),
    (lambda d: d.update(sampling=[1.0]), "bad sampling defaults: \"sampling\" must be a JSON object"),
], ids=["format", "version", "no-schedule", "model-field", "schedule-kind", "schedule-field", "sampling-eta",
        "sampling-field", "sampling-type"])
def test_bad_config_contents(tiny_model_dir, change, message):
    rewrite_config(tiny_model_dir, change)
    with pytest.raises(ModelFolderError, match=message) as error:
        load_pretrained(tiny_model_dir)
    assert "config.json" in str(error.value)


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
    with pytest.raises(ModelFolderError, match=r"weights do not match config\.json .*Missing key.*attn\.") as error:
        load_pretrained(tiny_model_dir)
    assert str(tiny_model_dir / "model.safetensors") in str(error.value)


def test_weights_with_an_extra_tensor_are_refused_by_name(tiny_model_dir):
    rewrite_weights(tiny_model_dir, lambda state: state.update({"extra.weight": torch.zeros(3)}))
    with pytest.raises(ModelFolderError, match=r"weights do not match config\.json .*Unexpected key.*extra\.weight"):
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
