"""The app as a Hugging Face Space: its front matter, the LFS rules of its repository, the deploy command's files
and failures (everything but the real HTTP call), and a start the way a Space starts it."""

from __future__ import annotations

import http.server
import os
import re
import subprocess
import sys
import threading
from importlib.metadata import metadata, version
from pathlib import Path

import pytest
from conftest import wait_for
from gradio_client import Client
from huggingface_hub import HfApi, RepoCard, constants
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from PIL import Image
from serving import app_env, free_port, serving

from ddpm_app.cli import space
from ddpm_app.runtime import openvino_net
from ddpm_app.runtime.cpu import cpu_budget
from ddpm_app.runtime.isa import detect

ROOT = Path(__file__).resolve().parents[2]
FAKE_TOKEN = "hf_fakeSpaceToken0123456789abcdef"


def pins() -> dict[str, str]:
    """requirements.txt as {package: pinned version}."""
    lines = (line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines())
    requirements = [Requirement(line) for line in lines if line]
    return {r.name: str(r.specifier).removeprefix("==") for r in requirements}


def front_matter():
    return RepoCard.load(ROOT / "README.md", repo_type="space").data


# --- front matter ---------------------------------------------------------------------------------------------

def test_front_matter_configures_a_gradio_space_on_the_pinned_gradio():
    card = front_matter()
    assert card.sdk == "gradio" and (ROOT / card.app_file).is_file()
    assert card.sdk_version == pins()["gradio"] == version("gradio")


def test_python_version_is_the_tested_one_and_every_pin_supports_it():
    python = front_matter().python_version
    assert isinstance(python, str), "quote python_version in the front matter (3.10 unquoted reads as 3.1)"
    assert python == f"{sys.version_info.major}.{sys.version_info.minor}", "the Space should run the Python tested"
    refused = {}
    for name, pin in pins().items():
        assert version(name) == pin, f"{name} {version(name)} is installed, not the pinned {pin}"
        requires = metadata(name).get("Requires-Python")
        if requires and not SpecifierSet(requires).contains(python):
            refused[name] = requires
    assert not refused, f"python_version {python} is refused by {refused}"


# --- .gitattributes of the Space --------------------------------------------------------------------------------

def git(*args: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True)
    if out.returncode != 0:
        pytest.fail(f"`git {' '.join(args)}` failed in {cwd} (this test needs a git checkout of the app): "
                    f"{out.stderr.decode(errors='replace').strip()}")
    return out.stdout.decode()


def is_binary(path: Path) -> bool:
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return b"\0" in data


def test_the_space_gitattributes_sends_every_binary_file_to_lfs(tmp_path: Path):
    tracked = [name for name in git("ls-files", "-z").split("\0") if name]
    binary = [name for name in tracked if is_binary(ROOT / name)]
    assert {"weights/faces/samples.png", "weights/faces/model-00001-of-00002.safetensors"} <= set(binary)

    # git's own matching, in a repository whose .gitattributes is the Space's, as on the Hub
    hub = tmp_path / "hub-copy"
    git("init", "-q", str(hub), cwd=tmp_path)
    (hub / ".gitattributes").write_bytes(space.GITATTRIBUTES.read_bytes())
    checked = subprocess.run(["git", "check-attr", "-z", "--stdin", "filter"], cwd=hub, capture_output=True,
                             input="\0".join(tracked).encode() + b"\0", check=True).stdout.decode().split("\0")
    filters = dict(zip(checked[0::3], checked[2::3]))
    assert {name for name in binary if filters[name] != "lfs"} == set()
    assert {filters[name] for name in tracked if name.endswith((".py", ".md", ".json"))} == {"unspecified"}


# --- the deploy command -------------------------------------------------------------------------------------------

def write_tree(root: Path, names: list[str]) -> Path:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    return root


SPACE_PART = ["app.py", "requirements.txt", "README.md", "ddpm_app/__init__.py", "ddpm_app/ui/page.py",
              "ddpm_app/assets/portrait.png", "weights/faces/config.json", "weights/faces/model.safetensors"]
NOT_SPACE_PART = ["train.py", "requirements-test.txt", "pytest.ini", "tests/ui/test_ui.py", "docs/app-generate.png",
                  "benchmarks/app_load.py", "scripts/test.sh", ".ci/run", "runs/faces/checkpoint.pt",
                  "ddpm_app/__pycache__/ui.cpython-311.pyc", "ddpm_app/ui/page.pyi", "ddpm_app/cli/space.gitattributes",
                  "ddpm_app/build.egg-info/PKG-INFO", "weights/faces/.ipynb_checkpoints/config.json", ".git/HEAD",
                  ".cache/huggingface/x", ".venv/bin/python", "data/faces.zip"]


def test_the_deploy_takes_the_app_package_weights_and_nothing_else(tmp_path: Path):
    root = write_tree(tmp_path, SPACE_PART + NOT_SPACE_PART)
    files = space.space_files(root)
    assert list(files) == sorted(SPACE_PART + [".gitattributes"])
    assert files[".gitattributes"] == space.GITATTRIBUTES
    assert all(files[name] == root / name for name in SPACE_PART)


def test_the_deploy_of_this_checkout_is_its_tracked_app_files():
    tracked = {name for name in git("ls-files", "-z").split("\0") if name}
    names = set(space.space_files(ROOT))
    expected = {name for name in tracked if name in ("app.py", "requirements.txt", "README.md")
                or name.startswith(("ddpm_app/", "weights/"))} - {"ddpm_app/cli/space.gitattributes"}
    assert names & tracked == expected
    untracked = sorted(names - tracked - {".gitattributes"})  # new files not committed yet: none of them ignored
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *untracked], cwd=ROOT, capture_output=True,
                             text=True).stdout if untracked else ""
    assert ignored == "", f"git-ignored files would be uploaded: {ignored}"


def test_the_deploy_refuses_a_folder_that_is_not_the_app(tmp_path: Path, capsys):
    assert space.main(["someone/ddpm", "--dry-run", "--root", str(tmp_path)]) == 1
    assert "has no app.py, requirements.txt, README.md: deploy from a checkout of the app" in capsys.readouterr().err
    write_tree(tmp_path, ["app.py", "requirements.txt", "README.md"])
    assert space.main(["someone/ddpm", "--dry-run", "--root", str(tmp_path)]) == 1
    assert "holds no model folder" in capsys.readouterr().err
    assert space.main(["not a space id", "--dry-run"]) == 1
    assert "is not a valid Hub repo id" in capsys.readouterr().err


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, dict]]:
    """HfApi's two network calls of a deploy replaced by recorders; everything before them runs for real."""
    calls: list[tuple[str, dict]] = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", {"repo_id": repo_id, "token": self.token, **kwargs}))
        return f"https://huggingface.co/spaces/{repo_id}"

    def create_commit(self, repo_id, operations, **kwargs):
        calls.append(("create_commit", {"repo_id": repo_id, "operations": list(operations), **kwargs}))

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    return calls


def test_dry_run_lists_exactly_what_the_upload_sends(fake_hub, capsys):
    assert space.main(["someone/ddpm-space", "--dry-run"]) == 0
    listed = [line.split()[-1] for line in capsys.readouterr().out.splitlines()[:-1]]
    assert fake_hub == []  # a dry run uploads nothing

    assert space.main(["someone/ddpm-space", "--private"]) == 0
    out = capsys.readouterr()
    (repo_call, repo), (commit_call, commit) = fake_hub
    assert repo_call == "create_repo" and commit_call == "create_commit"
    assert repo == {"repo_id": "someone/ddpm-space", "token": FAKE_TOKEN, "repo_type": "space",
                    "space_sdk": "gradio", "private": True, "exist_ok": True}
    assert commit["repo_id"] == "someone/ddpm-space" and commit["repo_type"] == "space"
    sent = {op.path_in_repo: Path(op.path_or_fileobj) for op in commit["operations"]}
    assert list(sent) == listed == list(space.space_files(ROOT))
    assert sent[".gitattributes"] == space.GITATTRIBUTES and sent["app.py"] == ROOT / "app.py"
    assert "deployed" in out.out and FAKE_TOKEN not in out.out + out.err


class RecordingHub(http.server.BaseHTTPRequestHandler):
    """A stand-in Hub endpoint that records every request and refuses it (401)."""

    requests: list[str] = []

    def _refuse(self):
        self.requests.append(f"{self.command} {self.path}")
        body = b'{"error": "Invalid credentials in Authorization header"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = _refuse

    def log_message(self, *args):
        pass


@pytest.fixture
def recording_hub():
    RecordingHub.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RecordingHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", RecordingHub.requests
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("case, message", [
    ("offline", "error: offline mode is on (HF_HUB_OFFLINE); nothing was uploaded."),
    ("no token", "error: no Hugging Face token: set HF_TOKEN or run `hf auth login`, then try again."),
    ("refused", "error: could not upload to someone/ddpm-space: HfHubHTTPError: "),
])
def test_a_deploy_that_cannot_reach_the_hub_fails_in_one_line(recording_hub, tmp_path, case, message):
    endpoint, requests = recording_hub
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    if case != "no token":
        env["HF_TOKEN"] = FAKE_TOKEN
    if case == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    out = subprocess.run([sys.executable, "-m", "ddpm_app.cli.space", "someone/ddpm-space"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith(message) and out.stderr.count("\n") == 1, out.stderr
    assert f"No files were committed to the Space; {ROOT} is untouched." in out.stderr
    assert FAKE_TOKEN not in out.stdout + out.stderr
    if case == "refused":  # the stand-in Hub sees a real attempt ...
        assert requests and requests[0].startswith("POST /api/repos/create"), requests
    else:  # ... so its silence here means nothing was sent
        assert requests == []


# --- a start the way a Space starts it ----------------------------------------------------------------------------

DEFAULTS = """
import app
from gradio import http_server
args = app.parse_args([])
print(args.host, args.port, http_server.LOCALHOST_NAME, http_server.INITIAL_PORT_VALUE)
"""


def space_env(**extra: str) -> dict[str, str]:
    return app_env() | {"SPACE_ID": "someone/ddpm-space", "GRADIO_SERVER_NAME": "0.0.0.0"} | extra


def test_with_no_arguments_the_app_leaves_host_and_port_to_the_space_defaults():
    out = subprocess.run([sys.executable, "-c", DEFAULTS], cwd=ROOT, env=space_env(), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-4:] == ["None", "None", "0.0.0.0", "7860"]  # all interfaces, port 7860


def listening_on_all_interfaces(port: int) -> bool:
    """Whether /proc/net/tcp has a listening socket on 0.0.0.0:port."""
    rows = (line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:])
    return any(row[1] == f"00000000:{port:04X}" and row[3] == "0A" for row in rows)


@pytest.mark.slow
def test_a_space_like_start_serves_on_all_interfaces_and_answers_gradio_client(tmp_path: Path):
    port = free_port()  # the one thing the Space does not set; the default above is 7860
    log = tmp_path / "app.log"
    with serving([], space_env(GRADIO_SERVER_PORT=str(port)), port, log) as (url, _):
        assert listening_on_all_interfaces(port), Path("/proc/net/tcp").read_text()
        # Gradio prints its URL once the server thread is up, which can be just after the first page is served
        text = wait_for(lambda: "Running on local URL" in (t := log.read_text()) and t, "the URL in the log")
        assert f"torch threads: {cpu_budget()}; OpenMP threads " in text
        # --cpu-runtime auto: OpenVINO at every batch where it is installed and the CPU has bf16, else PyTorch
        openvino = detect().bf16_native and openvino_net.version() is not None
        assert ("bf16, OpenVINO " if openvino else "fp32, PyTorch ") in text, text
        assert re.search(rf"Running on local URL:\s+http://0\.0\.0\.0:{port}", text), text

        client = Client(url, verbose=False)
        x_t, x0, eps, status, seed, _ = client.predict("ddim", 2, 0.0, 3, 1, True, False, api_name="/generate")
        assert "Done" in status and seed == "3"
        assert Image.open(x_t).size == Image.open(x0).size and min(Image.open(x_t).size) >= 32
