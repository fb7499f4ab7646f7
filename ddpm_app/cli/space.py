"""Deploy the app as a Hugging Face Space: ``python -m ddpm_app.cli.space USER/SPACE [--private] [--dry-run]``.

Creates the Space (Gradio SDK) if it does not exist and uploads what it runs, in one commit: ``app.py``, the
``ddpm_app`` package with its assets, the model folders in ``weights/``, ``requirements.txt``, ``README.md`` (its
front matter configures the Space: SDK, Gradio and Python versions) and ``.gitattributes`` (from
``space.gitattributes`` beside this module). Tests, docs, benchmarks, scripts, training runs and caches stay here.
The token comes from ``HF_TOKEN`` or ``hf auth login`` and is never printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ddpm_app.io.hub import HubError, check_repo_id, select_files, upload_files

ROOT = Path(__file__).resolve().parents[2]
GITATTRIBUTES = Path(__file__).with_name("space.gitattributes")
SPACE_FILES = ("app.py", "requirements.txt", "README.md", "ddpm_app/", "weights/")
NOT_IN_SPACE = ("*/__pycache__/*", "*.pyc", "*.pyi", "*.egg-info/*", "*/.*", "ddpm_app/cli/space.gitattributes")
REQUIRED = ("app.py", "requirements.txt", "README.md")


def space_files(root: str | Path = ROOT) -> dict[str, Path]:
    """What a deploy from ``root`` uploads: path in the Space → local file, sorted by path.

    Raises :class:`HubError` when ``root`` lacks the app (not a checkout of it) or has no model folder to serve.
    """
    root = Path(root)
    names = select_files(root, SPACE_FILES, NOT_IN_SPACE)
    missing = [name for name in REQUIRED if name not in names]
    if missing:
        raise HubError(f"{root} has no {', '.join(missing)}: deploy from a checkout of the app")
    if not any(name.startswith("weights/") and name.endswith("/config.json") for name in names):
        raise HubError(f"{root / 'weights'} holds no model folder (config.json + safetensors): the Space would "
                       "have nothing to serve")
    files = {name: root / name for name in names} | {".gitattributes": GITATTRIBUTES}
    return dict(sorted(files.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ddpm_app.cli.space", description="Deploy the app as a Hugging Face "
                                "Space (created if needed; token from HF_TOKEN or `hf auth login`).")
    p.add_argument("space_id", metavar="USER/SPACE", help="the Space to create or update")
    p.add_argument("--private", action="store_true", help="create the Space private (an existing one keeps its "
                                                          "visibility)")
    p.add_argument("--dry-run", action="store_true", help="list the files that would be uploaded, upload nothing")
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout to deploy (default: %(default)s)")
    args = p.parse_args(argv)
    try:
        check_repo_id(args.space_id)
        files = space_files(args.root)
        if args.dry_run:
            for name, path in files.items():
                print(f"{path.stat().st_size:>12,}  {name}")
            total = sum(path.stat().st_size for path in files.values())
            print(f"would upload {len(files)} files ({total / 1e6:.1f} MB) to "
                  f"https://huggingface.co/spaces/{args.space_id}")
            return 0
        url = upload_files(files, args.space_id, repo_type="space", space_sdk="gradio", private=args.private,
                           commit_message="Deploy the DDPM app",
                           intact=f"No files were committed to the Space; {args.root} is untouched.")
    except HubError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"deployed {len(files)} files to {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
