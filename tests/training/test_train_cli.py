"""train.py end to end on tiny folders and zips: exit codes, messages, resume, export, model card, push offline."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import json
import re
import zipfile
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants, metadata_load
from PIL import Image
from tiny_packs import UTK_TEST, UTK_TRAIN, utkface_pack
from tiny_runs import MODEL, SCHEDULE, train_args, write_folder

import train
from ddpm_app.diffusion.schedule import Schedule
from ddpm_app.io.data import load_pack
from ddpm_app.io.loading import load_pretrained
from ddpm_app.metrics import heldout
from ddpm_app.metrics.eps_mse import held_out_mse, held_out_set
from ddpm_app.models import build_model, make_config
from ddpm_app.training import config, export
from ddpm_app.training import trainer as training
from ddpm_app.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ddpm_app.training.config import TrainConfig

FAKE_TOKEN = "hf_fakeTokenForTests0123456789abcdefXYZ"


@pytest.fixture
def no_token(monkeypatch, tmp_path):
    """No Hugging Face token anywhere: not in the environment, not in a token file."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-here"))


def write_corrupted(folder: Path) -> list[str]:
    """A truncated PNG, random bytes named .jpg and an empty file; returns their names."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="PNG")
    (folder / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "noise.jpg").write_bytes(bytes(range(256)) * 4)
    (folder / "empty.png").write_bytes(b"")
    return ["empty.png", "noise.jpg", "truncated.png"]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished CLI run on a folder of 8 PNGs plus 3 broken files, asked to push with no token at the end."""
    root = tmp_path_factory.mktemp("cli-run")
    data = write_folder(root / "pictures")
    broken = write_corrupted(data)
    out = root / "run"
    mp = pytest.MonkeyPatch()
    mp.delenv("HF_TOKEN", raising=False)
    mp.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    mp.setattr(constants, "HF_TOKEN_PATH", str(root / "no-token-here"))
    mp.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # never reached: there is no token
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        code = train.main(train_args(data, out, "--split", "", "--name", "Tiny shapes", "--hardware", "test CPU",
                                     "--push-to-hub", "someone/tiny-ddpm"))
    mp.undo()
    return {"code": code, "stdout": stdout.getvalue(), "stderr": stderr.getvalue(), "out": out, "data": data,
            "broken": broken}


# -- --help ---------------------------------------------------------------------------------------------------------

def test_help_lists_every_option_with_its_help_text(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for option in ("--data", "--split", "--out", "--steps", "--batch-size", "--lr", "--lr-decay", "--resume",
                   "--push-to-hub", "--arch", "--base-channels", "--schedule", "--timesteps", "--no-compile"):
        assert option in text, option
    assert "total optimizer steps of the run (default: 20000)" in " ".join(text.split())
    assert "image folder or .zip pack" in text
    assert "--no-channels-last" in text and "(default: off on CUDA; on a CPU, on for the ddpm U-Net)" in " ".join(text.split())
    assert "{constant,cosine}" in text and "{uniform,min-snr}" in text
    assert not re.search(r"\(default: [^)]*\)\s*\(default:", text)  # each default stated once
    for sub in ("export", "push"):
        with pytest.raises(SystemExit) as e:
            train.main([sub, "--help"])
        assert e.value.code == 0
    assert "--ckpt" in capsys.readouterr().out


# -- a full run -----------------------------------------------------------------------------------------------------

def test_run_trains_skips_broken_files_and_exports(trained):
    out = trained["out"]
    assert "warning: skipped 3 unreadable image file(s) of 11" in trained["stderr"]
    assert "batch 8, lr 0.001 (warm-up 0 steps, constant), EMA 0.9, not compiled" in trained["stderr"]
    assert re.search(r"start-up: [0-9.]+ s to import, [0-9.]+ s to load the data, [0-9.]+ s to build the model, "
                     r"[0-9.]+ s to time a step, [0-9.]+ s for the first step: the first step ended [0-9.]+ s after the "
                     r"start",
                     trained["stdout"] + trained["stderr"])
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt["step"] == 12 and ckpt["data"]["images"] == 8 and ckpt["data"]["split"] is None
    assert {p.name for p in (out / "export").iterdir()} == {"config.json", "model.safetensors", "README.md",
                                                             "samples.png"}
    assert (out / "loss.png").is_file()
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [4, 8, 12]

    loaded = load_pretrained(out / "export")
    assert loaded.config.model == MODEL and loaded.config.schedule == SCHEDULE
    assert loaded.config.training["steps"] == 12 and loaded.config.training["hardware"] == "test CPU"
    exported = loaded.model.state_dict()  # the EMA weights of the last checkpoint, not the raw ones
    assert exported.keys() == ckpt["ema"].keys()
    assert all(torch.equal(exported[k], ckpt["ema"][k]) for k in exported)
    assert any(not torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in exported)


def test_model_card_has_the_hub_metadata_header(trained):
    card = trained["out"] / "export" / "README.md"
    assert card.read_text().startswith("---\n")
    meta = metadata_load(card)
    assert meta["library_name"] == "ddpm-app"
    assert meta["license"] == "other" and meta["license_name"] == "see-dataset"
    assert {"unconditional-image-generation", "ddpm"} <= set(meta["tags"])
    assert meta["pipeline_tag"] == "unconditional-image-generation"
    body = card.read_text()
    assert "# Tiny shapes" in body and "![samples](samples.png)" in body and "on test CPU" in body


def test_push_after_training_without_token_fails_clearly_and_keeps_the_export(trained):
    assert trained["code"] == 4
    message = trained["stderr"]
    assert "warning: no Hugging Face token yet" in message  # said before training, too
    assert "exported to" in message
    assert "no Hugging Face token: set HF_TOKEN or run `hf auth login`" in message
    assert f"The local export in {trained['out'] / 'export'} is intact" in message
    assert load_pretrained(trained["out"] / "export").config.training["steps"] == 12


def test_bad_repo_id_is_refused_before_training(tmp_path, capsys):
    data = write_folder(tmp_path / "pictures", n=2)
    assert train.main(train_args(data, tmp_path / "run", "--split", "", "--push-to-hub", "not a repo!")) == 2
    assert "error: --push-to-hub: 'not a repo!' is not a valid Hub repo id" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_push_subcommand_without_token(trained, no_token, capsys, tmp_path):
    export = trained["out"] / "export"
    before = digest(export)
    assert train.main(["push", str(export), "someone/tiny-ddpm"]) == 4
    err = capsys.readouterr().err
    assert "HF_TOKEN" in err and "`hf auth login`" in err and "is intact" in err
    assert digest(export) == before


def test_push_with_a_token_but_no_network_fails_clearly_and_hides_the_token(trained, no_token, monkeypatch, capsys):
    export = trained["out"] / "export"
    before = digest(export)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)  # the Hub endpoint is a closed local port (conftest)
    assert train.main(["push", str(export), "someone/tiny-ddpm", "--private"]) == 4
    captured = capsys.readouterr()
    assert "error: could not upload to someone/tiny-ddpm" in captured.err
    assert f"The local export in {export} is intact" in captured.err
    assert FAKE_TOKEN not in captured.err + captured.out
    assert digest(export) == before


def test_push_of_a_folder_that_is_not_an_export(tmp_path, no_token, capsys):
    assert train.main(["push", str(tmp_path), "someone/tiny-ddpm"]) == 4
    assert "not a model folder (no config.json); export the model first" in capsys.readouterr().err
    assert train.main(["push", str(tmp_path), "two words"]) == 4
    assert "'two words' is not a valid Hub repo id" in capsys.readouterr().err


def test_export_subcommand_rewrites_the_model_folder(trained, tmp_path, capsys):
    ckpt = trained["out"] / CHECKPOINT_NAME
    folder = tmp_path / "re-export"
    assert train.main(["export", "--ckpt", str(ckpt), "--out", str(folder), "--export-dtype", "fp16",
                       "--name", "Half precision", "--hardware", "a test box"]) == 0
    assert "exported" in capsys.readouterr().err
    loaded = load_pretrained(folder)
    first = load_pretrained(trained["out"] / "export")
    for name, value in first.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], value, rtol=1e-3, atol=1e-3)
    meta = metadata_load(folder / "README.md")
    assert meta["library_name"] == "ddpm-app" and "ddpm" in meta["tags"]
    assert "# Half precision" in (folder / "README.md").read_text()
    assert (folder / "samples.png").is_file()  # the run's last grid comes along


def test_export_subcommand_measures_the_held_out_figures_on_the_gpu_when_there_is_one(trained, tmp_path,
                                                                                      monkeypatch):
    seen = {}
    monkeypatch.setattr(export, "resolve_device", lambda name="auto": torch.device("cuda", 3))
    monkeypatch.setattr(export, "complete_export",
                        lambda folder, *args, **kwargs: seen.update(kwargs) or export.Exported(folder, None))
    assert train.main(["export", "--ckpt", str(trained["out"] / CHECKPOINT_NAME), "--out", str(tmp_path / "x")]) == 0
    assert seen["device"] == "cuda:3"


def test_export_of_a_broken_checkpoint_is_exit_2(tmp_path, capsys):
    bad = tmp_path / CHECKPOINT_NAME
    bad.write_bytes(b"not a checkpoint")
    assert train.main(["export", "--ckpt", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "not a readable training checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# -- resume -----------------------------------------------------------------------------------------------------------

def test_cli_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    data = write_folder(tmp_path / "pictures")
    assert train.main(train_args(data, tmp_path / "a", "--split", "", steps=8)) == 0
    assert train.main(train_args(data, tmp_path / "b", "--split", "", steps=4)) == 0
    # only --out, --resume and the new length: data, model, schedule and optimiser settings come from the run
    assert train.main(["--out", str(tmp_path / "b"), "--resume", "--steps", "8"]) == 0
    assert "resuming at step 4" in capsys.readouterr().err
    a, b = load_checkpoint(tmp_path / "a" / CHECKPOINT_NAME), load_checkpoint(tmp_path / "b" / CHECKPOINT_NAME)
    assert a["step"] == b["step"] == 8
    assert {**a["train_config"], "out": None} == {**b["train_config"], "out": None}
    for key in ("model", "ema"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), f"{key}.{name}"


def test_cli_resume_takes_options_given_now_even_at_their_default_value(tmp_path, capsys):
    data = write_folder(tmp_path / "pictures")
    out = tmp_path / "run"
    assert train.main(train_args(data, out, "--split", "", steps=4)) == 0  # --ema-decay 0.9, --save-every 4
    default_decay = TrainConfig.__dataclass_fields__["ema_decay"].default
    assert default_decay != 0.9
    capsys.readouterr()
    assert train.main(["--out", str(out), "--resume", "--steps", "5", "--ema-decay", str(default_decay),
                       "--base-channels", "64", "--timesteps", "1000"]) == 0
    assert ("warning: --resume takes the model and noise schedule from the checkpoint; ignoring --base-channels, "
            "--timesteps") in capsys.readouterr().err
    assert load_pretrained(out / "export").config.model == MODEL
    cfg = load_checkpoint(out / CHECKPOINT_NAME)["train_config"]
    assert cfg["steps"] == 5 and cfg["ema_decay"] == default_decay  # given now, although equal to the default
    assert cfg["save_every"] == 4 and cfg["batch_size"] == 8 and cfg["lr"] == 1e-3  # kept from the run
    assert cfg["data"] == str(data)
    assert cfg["out"] == str(out)


def test_the_time_limit_is_checked_once_at_the_first_measured_speed(tmp_path, capsys, monkeypatch):
    calls = []

    def warn(cfg, step, images_per_s, seconds_used):
        calls.append((step, images_per_s, seconds_used))
        return "warning: the time limit cuts this run short"
    monkeypatch.setattr(config, "time_limit_warning", warn)
    data = write_folder(tmp_path / "pictures")
    assert train.main(train_args(data, tmp_path / "run", "--split", "", "--lr-decay", "cosine")) == 0
    assert capsys.readouterr().err.count("warning: the time limit cuts this run short") == 1
    assert len(calls) == 1 and calls[0][0] == 4 and calls[0][1] > 0 and calls[0][2] > 0  # the first log, step 4


def test_help_states_each_architectures_recipe_as_the_trainer_has_it(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    helps = {name: re.search(rf"--{name} [A-Z_]+ ([a-z].+?\))", text).group(1)
             for name in ("batch-size", "lr", "warmup-steps", "sample-eta")}
    for arch, recipe in config.RECIPES.items():
        stated = {name: float(re.search(rf"([0-9.e-]+) for {arch}", h).group(1)) for name, h in helps.items()}
        assert stated == {"batch-size": recipe.batch_size, "lr": recipe.lr, "warmup-steps": recipe.warmup_steps,
                          "sample-eta": recipe.sample_eta}
    on_cpu = {name: re.search(r"on the CPU ([0-9.e-]+)(?: and ([0-9.e-]+))?", helps[name]).groups()
              for name in list(helps)[:3]}
    for i, recipe in enumerate(config.CPU_RECIPES.values()):  # "on the CPU N" for both, or "N and M" for each
        stated = {name: float(values[i] or values[0]) for name, values in on_cpu.items()}
        assert stated == {"batch-size": recipe.batch_size, "lr": recipe.lr, "warmup-steps": recipe.warmup_steps}


def test_resume_without_a_checkpoint_is_exit_2(tmp_path, capsys):
    assert train.main(["--out", str(tmp_path / "nothing"), "--resume"]) == 2
    assert f"no checkpoint at {tmp_path / 'nothing' / CHECKPOINT_NAME}" in capsys.readouterr().err


# -- data -------------------------------------------------------------------------------------------------------------

def test_zip_with_train_and_test_folders_trains_on_the_split(tmp_path):
    pack = utkface_pack(tmp_path)
    out = tmp_path / "run"
    assert train.main(train_args(pack, out, "--split", "train", steps=4)) == 0
    data = load_checkpoint(out / CHECKPOINT_NAME)["data"]
    assert data == {"path": str(pack), "split": "train", "images": len(UTK_TRAIN)}
    test = load_pack(pack, 16, split="test")
    assert test.names == sorted(UTK_TEST) and test.images.shape == (len(UTK_TEST), 3, 16, 16)
    stored = heldout.load(out / "export")  # the held-out figures, measured at export on the pack's test/ split
    assert stored.loss.num_images == stored.bpd.num_images == len(UTK_TEST) and stored.data.endswith("split test")
    assert len(stored.loss.timesteps) == min(heldout.LOSS_TIMESTEPS, SCHEDULE.timesteps)


def test_eval_every_reads_the_pack_s_test_folder_and_logs_held_out_mse(tmp_path, capsys):
    pack = utkface_pack(tmp_path)
    out = tmp_path / "run"
    assert train.main(train_args(pack, out, "--eval-every", "2", steps=4)) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    held = [r for r in rows if "held_out_mse" in r]
    assert [r["step"] for r in held] == [2, 4]
    # the last row recomputed from the step-4 checkpoint on the pack's test/ images: fails if the held-out ε-MSE
    # is taken on the training split or the EMA and raw figures are swapped
    ckpt = load_checkpoint(out / CHECKPOINT_NAME)
    assert ckpt["step"] == 4
    held_out = held_out_set(load_pack(pack, 16, split="test").images, SCHEDULE.timesteps)
    for key, weights in (("held_out_mse", "model"), ("held_out_mse_ema", "ema")):
        model = build_model(MODEL)
        model.load_state_dict(ckpt[weights])
        assert held[-1][key] == pytest.approx(held_out_mse(model, Schedule(SCHEDULE), held_out), rel=1e-5)
    assert "step 4: held-out ε-MSE" in capsys.readouterr().out  # tqdm.write prints to stdout


def test_eval_every_without_held_out_images_is_exit_2(tmp_path, capsys):
    folder = write_folder(tmp_path / "flat")
    assert train.main(train_args(folder, tmp_path / "run", "--eval-every", "2", steps=4)) == 2
    err = capsys.readouterr().err
    assert "no readable held-out images in a folder named 'test'" in err and "--eval-split" in err


def test_corrupted_files_are_skipped_and_listed(tmp_path):
    data = write_folder(tmp_path / "pictures", n=3)
    broken = write_corrupted(data)
    pack = load_pack(data, 16)
    assert len(pack) == 3 and sorted(pack.skipped) == broken


def test_damaged_zip_member_is_skipped(tmp_path):
    pictures = write_folder(tmp_path / "pictures", n=3)
    pack_path = tmp_path / "pack.zip"
    with zipfile.ZipFile(pack_path, "w", compression=zipfile.ZIP_STORED) as zf:
        for p in sorted(pictures.iterdir()):
            zf.write(p, f"train/{p.name}")
    raw = bytearray(pack_path.read_bytes())
    second = raw.find((pictures / "img_01.png").read_bytes())
    raw[second + 40] ^= 0xFF  # a flipped byte inside img_01.png: its CRC no longer matches
    pack_path.write_bytes(bytes(raw))
    pack = load_pack(pack_path, 16, split="train")
    assert pack.names == ["train/img_00.png", "train/img_02.png"] and pack.skipped == ["train/img_01.png"]


def test_folder_of_only_broken_files_is_exit_2(tmp_path, capsys):
    data = tmp_path / "broken"
    data.mkdir()
    write_corrupted(data)
    assert train.main(train_args(data, tmp_path / "run", "--split", "")) == 2
    assert "none of the 3 image files could be read" in capsys.readouterr().err
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()


def test_empty_folder_is_a_clear_error_and_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert train.main(train_args(tmp_path / "empty", tmp_path / "run", "--split", "")) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "no images" in err and str(tmp_path / "empty") in err
    assert "Traceback" not in err


def test_default_split_takes_a_flat_folder_whole_and_a_pack_s_train_folder(tmp_path, capsys):
    data = write_folder(tmp_path / "pictures", n=2)
    assert train.main(train_args(data, tmp_path / "flat", steps=4)) == 0  # --split auto: no train/ → everything
    assert load_checkpoint(tmp_path / "flat" / "checkpoint.pt")["data"]["images"] == 2


def test_an_explicit_split_missing_from_a_flat_folder_says_how_to_use_it(tmp_path, capsys):
    data = write_folder(tmp_path / "pictures", n=2)
    assert train.main(train_args(data, tmp_path / "run", "--split", "train")) == 2
    assert "no images in a folder named 'train', but 2 elsewhere" in capsys.readouterr().err


def test_missing_data_is_exit_2(tmp_path, capsys):
    assert train.main(train_args(tmp_path / "nowhere", tmp_path / "run")) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert train.main(["--out", str(tmp_path / "run")]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_unwritable_out_is_a_clear_error_before_training(tmp_path, capsys):
    data = write_folder(tmp_path / "pictures", n=2)
    blocker = tmp_path / "a-file"
    blocker.write_text("the run folder would have to be inside this file")
    assert train.main(train_args(data, blocker / "run", "--split", "")) == 2
    err = capsys.readouterr().err
    assert f"{blocker / 'run'}: cannot write the run folder" in err
    assert "training ddpm U-Net" not in err  # it never started


def test_nan_during_training_is_exit_3(tmp_path, monkeypatch, capsys):
    data = write_folder(tmp_path / "pictures", n=2)
    real_loss = training.diffusion_loss
    monkeypatch.setattr(training, "diffusion_loss", lambda *a, **k: real_loss(*a, **k) * float("nan"))
    assert train.main(train_args(data, tmp_path / "run", "--split", "")) == 3
    assert "error: loss became nan at step 4" in capsys.readouterr().err
    assert not (tmp_path / "run" / "export").exists()


def test_model_card_of_a_run_started_from_other_weights_counts_what_came_before(tiny_diffusion_config):
    from dataclasses import replace

    from ddpm_app.io import model_card

    started = replace(tiny_diffusion_config, training={
        "steps": 100, "images_seen": 5000, "train_config": {"batch_size": 20, "init_from": "weights/old"}})
    assert ("5,000 in all: 2,000 in this run's 100 steps (batch 20), which started from `weights/old` "
            "(3,000 images seen before)") in model_card.render(started, 1000)
    plain = replace(tiny_diffusion_config, training={
        "steps": 100, "images_seen": 2000, "train_config": {"batch_size": 20}})
    assert "| images seen | 2,000 in 100 steps (batch 20) |" in model_card.render(plain, 1000)


def test_model_card_says_how_the_timesteps_were_drawn(tiny_diffusion_config):
    from dataclasses import replace

    from ddpm_app.io import model_card

    def loss_row(train_config: dict) -> str:
        card = model_card.render(replace(tiny_diffusion_config, training={"steps": 10, "train_config": train_config}), 10)
        return next(line for line in card.splitlines() if line.startswith("| loss |"))

    assert loss_row({}) == "| loss | MSE on ε, uniform weighting over uniform t |"
    assert loss_row({"small_t_fraction": 0.0}) == "| loss | MSE on ε, uniform weighting over uniform t |"
    assert loss_row({"small_t_fraction": 0.25}) == ("| loss | MSE on ε, uniform weighting over t, 25% of each batch "
                                                    "log-uniform (more small t), the rest uniform |")


def test_the_cpu_smoke_run_trains_with_the_cpu_settings_exports_and_the_app_serves_the_export(tmp_path, capsys):
    """The README's CPU smoke run in small: no model or batch options on a machine without a GPU take the CPU
    recipe, say so and the expected time per step before the first one, and end in an export the app samples from."""
    from ddpm_app.diffusion.samplers import SamplerSettings, final
    from ddpm_app.serve.library import ModelLibrary

    out = tmp_path / "cpu"
    assert train.main(["--data", str(utkface_pack(tmp_path)), "--out", str(out), "--steps", "2", "--device", "cpu",
                       "--image-size", "16", "--timesteps", "20", "--sample-steps", "2", "--heldout-images", "3"]) == 0
    said = capsys.readouterr()
    err = said.err
    recipe = config.CPU_RECIPES["ddpm"]
    assert "no CUDA GPU: training on the CPU with settings made for it (--recipe cpu)" in err
    assert f"batch {recipe.batch_size}, lr {recipe.lr:g} (warm-up {recipe.warmup_steps} steps" in err
    expected, started = said.out.index("expected: about "), said.out.index("start-up: ")  # the progress bar's lines
    assert expected < started and "s to time a step" in said.out and "(compiling)" not in said.out
    folder = out / "export"
    assert (folder / "samples.png").is_file()
    loaded = load_pretrained(folder)
    assert {k: getattr(loaded.config.model, k) for k, _ in recipe.model} == dict(recipe.model)  # the CPU's network
    assert "3 held-out images" in heldout.load(folder).method
    served = ModelLibrary(out, "cpu", precision="fp32").get("export")  # python app.py --weights OUT
    picture = final(served.sample(SamplerSettings("ddim", 2), batch=1, seed=0))
    assert picture.shape == (1, 3, 16, 16) and torch.isfinite(picture).all()


def test_the_cpu_recipes_network_fills_in_only_when_no_size_of_it_is_given():
    """Options that size the network take it whole from the options: the recipe's widths and heads are not mixed in
    (a resumed or reproduced run must build the network its options name)."""
    recipe = dict(config.CPU_RECIPES["ddpm"].model)
    sized = train.build_parser().parse_args(["--data", "x.zip", "--out", "o", "--base-channels", "48"])
    assert train.model_config_from_args(sized, tuple(recipe.items())) == make_config("ddpm", {"base_channels": 48})
    bare = train.build_parser().parse_args(["--data", "x.zip", "--out", "o", "--image-size", "32"])
    built = train.model_config_from_args(bare, tuple(recipe.items()))
    assert built == make_config("ddpm", {**recipe, "image_size": 32})


# -- the compile cache kept between runs ----------------------------------------------------------------------------

def test_compile_cache_is_kept_in_the_user_cache_folder_unless_named(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert train.use_compile_cache() == tmp_path / "cache" / "ddpm_app" / "torchinductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "cache" / "ddpm_app" / "torchinductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert train.use_compile_cache() == tmp_path / "mine"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def test_startup_note_names_every_phase_and_the_cache_only_when_compiling(tmp_path):
    startup = training.StartUp(data_s=4.25, model_s=1.5, timing_s=0.0, first_step_s=20.0)
    note = train.startup_note(startup, 3.0, 28.75, tmp_path)
    assert note.startswith("start-up: 3.0 s to import, 4.2 s to load the data, 1.5 s to build the model, 20.0 s for "
                           f"the first step (compiling; cache {tmp_path}): the first step ended 28.8 s after the start")
    assert "to time a step" not in note
    cpu = train.startup_note(startup._replace(timing_s=2.0), 3.0, 30.75, None)
    assert "2.0 s to time a step, 20.0 s for the first step: the first" in cpu and "compiling" not in cpu
