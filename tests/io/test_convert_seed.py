"""Converting the tutorial's ``torch.save(model.state_dict())`` file into a model folder, and refusing anything else."""

import builtins
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from conftest import PATIENCE, perturb, seeded_init

from ddpm_app.cli.convert_seed import main
from ddpm_app.diffusion.schedule import ScheduleConfig
from ddpm_app.io.convert_seed import ConversionError, convert, infer_config, read_state_dict
from ddpm_app.io.loading import load_pretrained
from ddpm_app.models import SeedUNet, SeedUNetConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tutorial_pth(seed_model: SeedUNet, tmp_path: Path) -> Path:
    """What the tutorial's training loop writes: the state dict alone."""
    path = tmp_path / "ddpm_T1000_l2_epochs_300.pth"
    torch.save(perturb(seed_model, scale=0.02).state_dict(), path)
    return path


def outputs(model, config) -> torch.Tensor:
    x = torch.randn(2, config.in_channels, config.image_size, config.image_size,
                    generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(x, torch.tensor([3, 700]))


def run_main(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- the round trip -------------------------------------------------------------------------------------

def test_library_conversion_gives_identical_outputs(seed_model, seed_config, tutorial_pth, tmp_path):
    directory, config = convert(tutorial_pth, tmp_path / "out", image_size=16)
    assert config.model == seed_config
    assert config.schedule == ScheduleConfig()
    assert config.training["source_file"] == tutorial_pth.name
    assert "seed tutorial" in config.training["converted_from"]
    with safe_open(directory / "model.safetensors", "pt") as weights:  # the size it was given, checked on load
        assert weights.metadata()["image_size"] == "16"
    loaded = load_pretrained(directory)
    assert loaded.config == config
    assert isinstance(loaded.model, SeedUNet)
    assert torch.equal(outputs(loaded.model, seed_config), outputs(seed_model, seed_config))


def test_cli_conversion_gives_identical_outputs(seed_model, seed_config, tutorial_pth, tmp_path, capsys):
    out = tmp_path / "cli-out"
    code, stdout, stderr = run_main(capsys, tutorial_pth, out, "--image-size", 16, "--schedule", "cosine",
                                    "--timesteps", 500)
    assert code == 0, stderr
    assert str(out) in stdout and stderr == ""
    loaded = load_pretrained(out)
    assert loaded.config.schedule == ScheduleConfig(kind="cosine", timesteps=500)
    assert loaded.schedule.timesteps == 500
    assert torch.equal(outputs(loaded.model, seed_config), outputs(seed_model, seed_config))


def test_default_tutorial_widths_are_inferred(tmp_path):
    model = seeded_init(lambda: SeedUNet(SeedUNetConfig()))
    state = model.state_dict()
    config = infer_config(state, image_size=96)  # the tutorial trains at 96×96
    assert config == SeedUNetConfig(image_size=96)
    assert config.down_channels == (32, 64, 128, 256, 512)


def test_wrapper_prefix_is_stripped(seed_model, seed_config, tmp_path):
    path = tmp_path / "data_parallel.pth"
    torch.save({"module." + k: v for k, v in seed_model.state_dict().items()}, path)
    _, config = convert(path, tmp_path / "out", image_size=16)
    assert config.model == seed_config


# --- refusing what is not a plain state dict --------------------------------------------------------------

class RunsCode:
    """Unpickling this calls ``function(*args)``: the classic malicious-pickle payload."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(marker: Path) -> dict[str, object]:
    return {"os.system": RunsCode(os.system, f"touch '{marker}'"), "open": RunsCode(builtins.open, str(marker), "w")}


@pytest.mark.parametrize("payload", ["os.system", "open"])
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_carrying_code_is_refused_and_not_run(tmp_path, capsys, payload, writer):
    marker = tmp_path / "marker"
    evil = {"init_conv.weight": torch.zeros(1), "x": payloads(marker)[payload]}
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(evil, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(evil, f)

    code, stdout, stderr = run_main(capsys, path, tmp_path / "out")
    assert code == 2
    assert not marker.exists()
    assert not (tmp_path / "out").exists()
    assert stderr.count("\n") == 1 and stderr.startswith("error: ")
    assert str(path) in stderr and "refused" in stderr
    with pytest.raises(ConversionError):
        read_state_dict(path)
    assert not marker.exists()

    # the payload is live: a full unpickle does run it
    if writer == "pickle.dump":
        with open(path, "rb") as f:
            pickle.load(f)
        assert marker.exists()


def test_whole_model_pickle_is_refused_by_name(seed_model, tmp_path, capsys):
    path = tmp_path / "whole_model.pth"
    torch.save(seed_model, path)  # pickles the class, not just tensors
    code, _, stderr = run_main(capsys, path, tmp_path / "out")
    assert code == 2
    assert str(path) in stderr and "SeedUNet" in stderr and "state_dict()" in stderr


@pytest.mark.parametrize("content, message", [
    (b"", "empty or truncated"),
    (b"this is not a checkpoint", "not a"),
    (random.Random(0).randbytes(4096), "not a"),
    (b"PK\x03\x04" + bytes(200), "not a PyTorch checkpoint"),
], ids=["empty", "text", "random-bytes", "broken-zip"])
def test_unreadable_files_give_one_line_errors(tmp_path, capsys, content, message):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    code, _, stderr = run_main(capsys, path, tmp_path / "out")
    assert code == 2
    assert stderr.count("\n") == 1 and str(path) in stderr and message in stderr


@pytest.mark.parametrize("obj, message", [
    ([torch.zeros(3)], "got list"),
    ({}, "empty dict"),
    ({"model": {"w": torch.zeros(1)}, "epoch": 300}, "the entries model, epoch are not tensors"),
])
def test_files_that_are_not_state_dicts(tmp_path, capsys, obj, message):
    path = tmp_path / "not_state.pth"
    torch.save(obj, path)
    code, _, stderr = run_main(capsys, path, tmp_path / "out")
    assert code == 2
    assert str(path) in stderr and message in stderr


def test_missing_file_and_folder(tmp_path, capsys):
    code, _, stderr = run_main(capsys, tmp_path / "nope.pth", tmp_path / "out")
    assert code == 2 and "nope.pth: no such file" in stderr
    code, _, stderr = run_main(capsys, tmp_path, tmp_path / "out")
    assert code == 2 and f"{tmp_path}: not a file" in stderr


def edit(state: dict, drop=(), add=None, reshape=None) -> dict:
    state = {k: v for k, v in state.items() if k not in drop}
    state |= add or {}
    for k, shape in (reshape or {}).items():
        state[k] = torch.zeros(shape)
    return state


@pytest.mark.parametrize("change, expected", [
    (dict(drop=["ups.1.conv2.weight"]), "missing keys: ups.1.conv2.weight"),
    (dict(add={"downs.0.attention.qkv.weight": torch.zeros(3)}), "unexpected keys: downs.0.attention.qkv.weight"),
    (dict(reshape={"downs.0.conv2.weight": (64, 64, 5, 5)}), "wrong shapes: downs.0.conv2.weight"),
    (dict(drop=["init_conv.weight"]), "missing init_conv.weight"),
    (dict(reshape={"downs.0.norm2.weight": (48,)}), "no seed U-Net has widths 32, 48, 64"),
    (dict(reshape={"time_mlp.1.weight": (128,)}), "time_mlp.1.weight has shape (128,)"),
    (dict(reshape={"downs.1.norm2.weight": (64, 1)}), "unexpected keys: downs.1."),
], ids=["missing", "unexpected", "shape", "no-init-conv", "width-not-multiple-of-32", "scalar-time-mlp",
        "bad-norm"])
def test_wrong_keys_are_named(seed_model, tmp_path, capsys, change, expected):
    path = tmp_path / "edited.pth"
    torch.save(edit(seed_model.state_dict(), **change), path)
    code, _, stderr = run_main(capsys, path, tmp_path / "out", "--image-size", 16)
    assert code == 2
    assert stderr.count("\n") == 1 and str(path) in stderr and expected in stderr
    assert not (tmp_path / "out").exists()


def test_image_size_must_fit_the_depth(tutorial_pth, tmp_path, capsys):
    code, _, stderr = run_main(capsys, tutorial_pth, tmp_path / "out", "--image-size", 18)
    assert code == 2 and str(tutorial_pth) in stderr and "image size 18" in stderr


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"\x80\x04not really")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-m", "ddpm_app.cli.convert_seed", str(path), str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=PATIENCE)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and str(path) in result.stderr
