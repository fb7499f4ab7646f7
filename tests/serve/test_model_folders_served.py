"""``python app.py`` with a second weights folder outside the working and temporary folders, a link out of the
weights folder and a model folder with a bad config.json, through gradio_client: the far folder's model loads with
its samples picture, the link is neither listed nor loaded, and the bad value is a message naming file and field."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from serving import serving_app
from tiny_app import save_tiny

SAMPLES = (Path(__file__).resolve().parents[2] / "ddpm_app" / "assets" / "smiley.png").read_bytes()

pytestmark = pytest.mark.slow


@pytest.fixture
def far_folder():
    """A folder outside the working directory and the temporary folder (Gradio serves neither rule's exception)."""
    base = Path("/var/tmp") if Path("/var/tmp").is_dir() else Path.home()
    folder = Path(tempfile.mkdtemp(prefix="ddpm-far-weights-", dir=base))
    assert not folder.is_relative_to(tempfile.gettempdir())
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_model_folders_through_the_server(tmp_path: Path, far_folder: Path):
    weights = tmp_path / "weights"
    save_tiny(weights / "faces")
    save_tiny(tmp_path / "outside" / "secret", image_size=8, timesteps=12)
    (weights / "link").symlink_to(tmp_path / "outside" / "secret", target_is_directory=True)
    bad = save_tiny(weights / "bad")
    config = json.loads((bad / "config.json").read_text())
    config["schedule"]["timesteps"] = 1.5
    (bad / "config.json").write_text(json.dumps(config))
    save_tiny(far_folder / "far", image_size=8, timesteps=10)
    (far_folder / "far" / "samples.png").write_bytes(SAMPLES)

    with serving_app(weights, tmp_path / "app.log", "--weights", str(far_folder), "--model", "faces") as (url, _):
        client = Client(url, verbose=False)
        pick, note = client.predict(api_name="/rescan_models")
        assert "link" not in json.dumps(pick) and "leads out of the weights folders" in note and "link" in note
        with pytest.raises(AppError, match="is outside the weights folders"):
            client.predict(str(weights / "link"), api_name="/load_folder")
        with pytest.raises(AppError, match="model must be one of"):
            client.predict("link", api_name="/select_model")
        with pytest.raises(AppError, match=r"bad/config\.json: schedule\.timesteps must be a whole number in "
                                           r"1…10000, got 1\.5"):
            client.predict("bad", api_name="/select_model")

        # a model in the far weights folder loads, its samples picture served
        summary, _, samples, header, *_ = client.predict(str(far_folder / "far"), api_name="/load_folder")
        assert "8×8" in header and "T = 10" in summary
        assert Path(samples).read_bytes() == SAMPLES
        x_t = client.predict("ddim", 2, 0.0, 1, 1, True, False, api_name="/generate")[0]
        assert Path(x_t).is_file()  # this user now samples the far model
