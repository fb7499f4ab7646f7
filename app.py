"""Run the app: ``python app.py`` (locally, or as a Hugging Face Space with no arguments).

Serves every model folder in ``weights/`` (or in each ``--weights DIR``, or $DDPM_WEIGHTS_DIR; a ``--weights`` that is a
diffusers DDPM folder or a Hub repo id serves that model) on CUDA when present, else CPU.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time

from starlette.middleware import Middleware

from ddpm_app.runtime.cpu import cpu_budget, trim_malloc, tune_malloc, wait_passively

WAITING = wait_passively()  # before torch loads OpenMP, which reads it once
if __name__ == "__main__":
    print("starting: importing PyTorch and Gradio ...", file=sys.stderr, flush=True)

import torch  # noqa: E402

from ddpm_app.image import MAX_FILE_BYTES
from ddpm_app.io.loading import is_repo_id
from ddpm_app.io.model_folder import ModelFolderError
from ddpm_app.runtime.inference import CPU_RUNTIMES, PRECISION_CHOICES, resolve_device
from ddpm_app.serve.library import ModelLibrary
from ddpm_app.serve.runs import DEFAULT_PREVIEW_INTERVAL
from ddpm_app.serve.server import BodyLimit
from ddpm_app.serve.sessions import HeartbeatWatch, Sessions
from ddpm_app.ui import page as ui
from ddpm_app.views.state import Users

IDLE_TRIM_S = 5.0  # seconds without tensor work before freed memory is returned to the system


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="See how DDPM adds noise to photos and generates images, step by step.")
    p.add_argument("--weights", action="append", default=None,
                   help="folder of model folders (default: weights/, or $DDPM_WEIGHTS_DIR), a diffusers DDPM folder "
                        "(model_index.json, unet/, scheduler/), or a Hub repo id of either kind (e.g. "
                        "google/ddpm-cifar10-32); repeat it to serve several. The Model tab loads model folders from "
                        "inside these folders only")
    p.add_argument("--model", default=None, help="model folder to start with (default: 'faces' if present, "
                                                 "else the first)")
    p.add_argument("--host", default=None, help="address to listen on (default: 127.0.0.1, or "
                                                "$GRADIO_SERVER_NAME as on a Space)")
    p.add_argument("--port", type=int, default=None, help="port (default: 7860 or $GRADIO_SERVER_PORT)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    p.add_argument("--device", default="auto", help="torch device (default: auto = cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: the CPUs this process may use, by affinity and cgroup quota)")
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                   help="network precision: auto = fp16 on CUDA; on the CPU bf16 where OpenVINO runs the network "
                        "(see --cpu-runtime), else fp32")
    p.add_argument("--cpu-runtime", default="auto", choices=CPU_RUNTIMES,
                   help="who runs the network on the CPU, at every batch size: auto = OpenVINO where it is "
                        "installed and the CPU has bf16 (AMX or AVX512-BF16), PyTorch (fp32) otherwise; or pytorch, "
                        "or openvino (see docs/performance.md)")
    p.add_argument("--queue-size", type=int, default=ui.QUEUE_SIZE,
                   help=f"requests that may wait; more are refused as busy (default: {ui.QUEUE_SIZE})")
    p.add_argument("--preview-interval", type=float, default=DEFAULT_PREVIEW_INTERVAL,
                   help="seconds between streamed previews; 0 = every step, negative = only the final images")
    args = p.parse_args(argv)
    given = args.weights or []
    args.hub_models = [w for w in given if is_repo_id(w)]
    args.weights = [w for w in given if w not in args.hub_models] or [os.environ.get("DDPM_WEIGHTS_DIR", "weights")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    log = logging.getLogger("ddpm_app")  # the library logs how each model runs on this machine
    log.addHandler(logging.StreamHandler())
    log.setLevel(logging.INFO)
    device = resolve_device(args.device)
    threads = None
    if device.type == "cpu":
        budget = cpu_budget()
        threads = args.threads or budget.threads
        torch.set_num_threads(threads)
        chosen = f"{args.threads} (--threads; {budget})" if args.threads else str(budget)
        print(f"torch threads: {chosen}; {WAITING}; {tune_malloc()}", file=sys.stderr, flush=True)
    try:
        library = ModelLibrary(args.weights, device, default=args.model, precision=args.precision,
                               cpu_runtime=args.cpu_runtime, cpu_threads=threads, hub_models=args.hub_models)
        start = time.perf_counter()
        print("loading the first model and building its network for this machine (OpenVINO: converting and "
              "compiling, a few seconds) ...", file=sys.stderr, flush=True)
        library.get()  # load the first model now, so a broken one fails here and not on the first click
        print(f"first model ready in {time.perf_counter() - start:.1f} s; building the web page ...", file=sys.stderr,
              flush=True)
    except (ModelFolderError, ValueError) as e:  # ValueError: a precision this device cannot run, a bad repo id
        sys.exit(f"error: {e}")
    interval = None if args.preview_interval < 0 else args.preview_interval
    users = Users()
    users.sweep_every(60)  # results unused for the time-to-live go even while nobody makes a request
    sessions = Sessions(users.leave, users.time_to_live)  # Gradio's record of a session goes once nobody holds it
    # memory freed by users who left or by refused requests goes back to the system once the device is idle
    library.worker.when_idle(trim_malloc, every=IDLE_TRIM_S, after=IDLE_TRIM_S)
    demo = ui.build(library, preview_interval=interval, queue_size=args.queue_size, users=users)
    # SIGTERM (a container stopping, `kill`) closes the server like Ctrl-C, so temporary folders are removed
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # quiet: Gradio's own start-up lines end with "set `share=True` in `launch()`", advice for code, not for this
    # command line; the address and the hint are printed here instead (a public URL Gradio prints itself)
    try:
        demo.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_FILE_BYTES,
                    css=ui.CSS, head=ui.HEAD, theme=ui.THEME,
                    app_kwargs={"middleware": [Middleware(BodyLimit), Middleware(HeartbeatWatch, sessions=sessions)],
                                "lifespan": sessions.lifespan},
                    quiet=True, prevent_thread_lock=True)
    except KeyboardInterrupt:  # stopped while Gradio was still checking its own address: close, no traceback
        demo.close()
        return
    print(f"* Running on local URL:  {demo.protocol}://{demo.server_name}:{demo.server_port}", flush=True)
    if not args.share and not demo.space_id:
        print("* To create a public link, start the app with --share.", flush=True)
    demo.block_thread()


if __name__ == "__main__":
    main()
