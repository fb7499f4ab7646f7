"""The Model tab's local folders: a model folder is loaded only from inside a weights folder (never through
``..``, an absolute path elsewhere or a symlink that leads out, whether a user types it or a scan finds it), a rescan
picks up folders added or removed, a user switches model only once every output is built, and a load does not
stall other users."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import gradio as gr
import pytest
from conftest import PATIENCE, wait_for
from tiny_app import run_all, save_tiny

from ddpm_app.checks import InvalidValue
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.ui import model
from ddpm_app.ui import page as ui
from ddpm_app.views.state import UserState

PHOTO_BYTES = (Path(__file__).resolve().parents[2] / "ddpm_app" / "assets" / "smiley.png").read_bytes()


@pytest.fixture
def place(tmp_path: Path) -> Path:
    """tmp/weights/faces (a served model), tmp/weights/runs/nested (a model folder one level down), and
    tmp/outside/secret (a model folder outside the weights folder)."""
    save_tiny(tmp_path / "weights" / "faces")
    save_tiny(tmp_path / "weights" / "runs" / "nested", image_size=8, timesteps=10)
    save_tiny(tmp_path / "outside" / "secret", image_size=8, timesteps=12)
    return tmp_path


@pytest.fixture
def handlers(place: Path) -> ui.Handlers:
    return ui.Handlers(ModelLibrary(place / "weights"), preview_interval=0, export_dir=place / "exports")


def test_a_nested_model_folder_loads_by_its_path_inside_the_weights_folder(handlers: ui.Handlers, place: Path):
    user = UserState()
    summary, _, _, header, t_slider, *_, pick = handlers.load_folder("runs/nested", user)
    assert user.model == "runs/nested" and "runs/nested" in pick["choices"] and pick["value"] == "runs/nested"
    assert "8×8" in header and t_slider["maximum"] == 10 and "T = 10" in summary
    assert len(run_all(handlers.generate("ddim", 3, 0.0, 1, 1, True, False, user))) == 3
    # the same folder by an absolute path, by a path from the working directory, and a listed name
    assert handlers.library.add_folder(str(place / "weights" / "runs" / "nested")) == "runs/nested"
    cwd = os.getcwd()
    try:
        os.chdir(place)
        assert handlers.library.add_folder("weights/runs/nested") == "runs/nested"
    finally:
        os.chdir(cwd)
    assert handlers.library.add_folder("faces") == "faces"


@pytest.mark.parametrize("attempt", [
    "../outside/secret",
    "runs/../../outside/secret",
    "{root}/outside/secret",  # absolute, outside
    "{root}/weights/../outside/secret",
    "/etc",
])
def test_paths_out_of_the_weights_folder_are_refused(handlers: ui.Handlers, place: Path, attempt: str):
    user = UserState()
    handlers.select_model("faces", user)
    with pytest.raises(gr.Error, match="outside the weights folders.*--weights DIR.*current model stays loaded"):
        handlers.load_folder(attempt.format(root=place), user)
    assert user.model == "faces" and handlers.library.names == ["faces"]


def test_a_symlink_inside_the_weights_folder_that_leads_out_is_refused(handlers: ui.Handlers, place: Path):
    (place / "weights" / "runs" / "link").symlink_to(place / "outside" / "secret", target_is_directory=True)
    (place / "weights" / "runs" / "up").symlink_to(place / "outside", target_is_directory=True)
    for attempt in ("runs/link", "runs/up/secret", str(place / "weights" / "runs" / "link")):
        with pytest.raises(InvalidValue, match="outside the weights folders"):
            handlers.library.add_folder(attempt)
    # a symlink that stays inside is fine
    (place / "weights" / "alias").symlink_to(place / "weights" / "runs" / "nested", target_is_directory=True)
    assert handlers.library.add_folder("alias") == "runs/nested"


def test_missing_and_broken_folders_say_what_is_wrong(handlers: ui.Handlers, place: Path):
    user = UserState()
    with pytest.raises(gr.Error, match="no folder 'runs/none' in"):
        handlers.load_folder("runs/none", user)
    with pytest.raises(gr.Error, match="no folder '~' in"):  # a name inside, not the home folder
        handlers.load_folder("~", user)
    with pytest.raises(gr.Error, match="enter a model folder inside"):
        handlers.load_folder("  ", user)
    with pytest.raises(gr.Error, match="config.json: not found"):
        handlers.load_folder("runs", user)  # a folder, but not a model folder
    assert user.model is None and handlers.library.names == ["faces"]


def test_another_weights_folder_named_on_the_command_line_is_allowed(place: Path):
    library = ModelLibrary([place / "weights", place / "outside"])
    assert library.names == ["faces", "secret"]  # both scanned
    assert library.add_folder(str(place / "outside" / "secret")) == "secret"
    with pytest.raises(InvalidValue, match="outside the weights folders"):
        library.add_folder(str(place))


def test_rescan_adds_new_folders_and_drops_removed_ones(handlers: ui.Handlers, place: Path):
    user = UserState()
    save_tiny(place / "weights" / "fresh", image_size=8, timesteps=6)
    pick, note = handlers.rescan(user)
    assert pick["choices"] == ["faces", "fresh"] and "new: fresh" in note
    handlers.select_model("fresh", user)
    shutil.rmtree(place / "weights" / "fresh")
    pick, note = handlers.rescan(user)
    assert pick["choices"] == ["faces"] and "gone: fresh" in note
    assert user.model is None and pick["value"] == "faces"  # this user is back on the default model
    assert handlers.rescan(user)[1].endswith("no change.")
    with pytest.raises(gr.Error, match="model must be one of faces, got 'fresh'"):
        handlers.select_model("fresh", user)


# -- links out of the weights folder --------------------------------------------------------------------------------


def test_a_model_folder_linked_in_from_elsewhere_is_neither_listed_nor_loaded(place: Path):
    """weights/link → outside/secret: a scan leaves it out and says so; a folder whose weights file links out is
    refused at load, however its name reached the library."""
    (place / "weights" / "link").symlink_to(place / "outside" / "secret", target_is_directory=True)
    handlers = ui.Handlers(ModelLibrary(place / "weights"), preview_interval=0, export_dir=place / "exports")
    assert handlers.library.names == ["faces"]
    pick, note = handlers.rescan(UserState())
    assert pick["choices"] == ["faces"] and f"leads out of the weights folders: {place / 'weights' / 'link'}" in note
    with pytest.raises(gr.Error, match="model must be one of faces, got 'link'"):
        handlers.select_model("link", UserState())

    # a model folder inside whose weights file is a link to one outside
    inner = place / "weights" / "inner"
    save_tiny(inner)
    (inner / "model.safetensors").unlink()
    (inner / "model.safetensors").symlink_to(place / "outside" / "secret" / "model.safetensors")
    assert "inner" not in handlers.rescan(UserState())[0]["choices"]
    user = UserState()
    with pytest.raises(gr.Error, match=rf"{inner / 'model.safetensors'}: a link that leads out of the weights "
                                       rf"folders .* to {place / 'outside' / 'secret' / 'model.safetensors'}.*"
                                       "current model stays loaded"):
        handlers.load_folder("inner", user)
    # and a folder swapped for such a link after the scan listed it
    save_tiny(place / "weights" / "swapped")
    handlers.rescan(user)
    shutil.rmtree(place / "weights" / "swapped")
    (place / "weights" / "swapped").symlink_to(place / "outside" / "secret", target_is_directory=True)
    with pytest.raises(gr.Error, match=r"swapped: a link that leads out of the weights folders"):
        handlers.select_model("swapped", user)
    assert user.model is None


# -- a switch happens once every output is built ---------------------------------------------------------------------


def test_a_model_switch_whose_outputs_fail_leaves_the_user_on_their_model(handlers: ui.Handlers, place: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    user = UserState()
    handlers.select_model("faces", user)
    (place / "weights" / "runs" / "nested" / "samples.png").write_bytes(b"not read yet")
    monkeypatch.setattr(model, "served_picture", lambda path: (_ for _ in ()).throw(PermissionError(13, "denied")))
    with pytest.raises(gr.Error, match=r"runs/nested: its model card could not be read .*denied.*current model "
                                       "stays loaded"):
        handlers.load_folder("runs/nested", user)
    assert user.model == "faces"


def test_the_samples_picture_is_served_from_gradios_cache(handlers: ui.Handlers, place: Path):
    """Gradio serves only files in its cache, the working and temporary folders and allowed_paths; a weights folder
    may be anywhere, so the picture is copied into the cache."""
    from gradio import processing_utils

    picture = place / "weights" / "runs" / "nested" / "samples.png"
    picture.write_bytes(PHOTO_BYTES)
    _, _, samples, *_ = handlers.load_folder("runs/nested", UserState())
    assert Path(samples).is_relative_to(processing_utils.get_upload_folder())
    assert Path(samples).read_bytes() == PHOTO_BYTES


# -- a load does not stall other users ---------------------------------------------------------------------------------


def test_another_users_run_completes_while_a_model_loads_and_a_model_loads_once(handlers: ui.Handlers,
                                                                                 monkeypatch: pytest.MonkeyPatch):
    from ddpm_app.serve import library as library_module

    handlers.library.get("faces")  # in memory: the other user's model
    entered, release, loads = threading.Event(), threading.Event(), []
    real_load = library_module.load_local

    def held_load(folder, device):
        loads.append(folder)
        entered.set()
        assert release.wait(PATIENCE), "the held load was never released"
        return real_load(folder, device)

    monkeypatch.setattr(library_module, "load_local", held_load)
    loaders = [UserState(), UserState()]
    switches = [threading.Thread(target=handlers.load_folder, args=("runs/nested", user)) for user in loaders]
    for switch in switches:
        switch.start()
    wait_for(entered.is_set, "the load to start")

    other, done = UserState(), []
    handlers.select_model("faces", other)
    runner = threading.Thread(target=lambda: done.append(run_all(handlers.generate("ddim", 3, 0.0, 1, 1, True, False,
                                                                                   other))))
    runner.start()
    wait_for(lambda: done, "the other user's DDIM-3 while a model is loading")
    assert len(done[0]) == 3 and not release.is_set()

    release.set()
    for switch in switches:
        switch.join(PATIENCE)
    assert [user.model for user in loaders] == ["runs/nested"] * 2
    assert len(loads) == 1  # both users waited for the one load
