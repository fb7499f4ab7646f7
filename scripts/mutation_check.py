"""Mutation check: plant one realistic bug at a time in a copy of the repository and see whether the tests notice.

    python scripts/mutation_check.py                  # every mutation (about 10–20 minutes on 2 CPU cores)
    python scripts/mutation_check.py --list           # what each mutation does, and which tests it runs
    python scripts/mutation_check.py --check          # only check that every pattern still matches (a second)
    python scripts/mutation_check.py --only ddim-eta-squared,ema-never-updated
    python scripts/mutation_check.py --json mutation-report.json

Each mutation replaces one exact piece of source text (it must occur exactly once in its file, so a refactor that
moves the code makes the script stop with an error instead of silently testing nothing) in a temporary copy of
the repository; the real files are never touched. Then it runs only the test files that should catch the bug,
with ``-x`` and a time limit, and counts the mutation as killed when they fail (or the test process crashes).
Before any mutation the same test files run once on the unmodified copy: they must pass, or a failure could not
be blamed on a mutation.

The result (killed/total and every survivor) is printed; the README's test section keeps the latest one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# the tests that cover each part of the code, fastest first (with -x a killed mutation stops at its first failure)
SCHEDULE = ("tests/diffusion/test_schedule.py", "tests/diffusion/test_samplers.py", "tests/diffusion/test_likelihood.py")
SAMPLERS = ("tests/diffusion/test_samplers.py", "tests/runtime/test_inference.py")
LIKELIHOOD = ("tests/diffusion/test_likelihood.py",)
TRAINING = ("tests/training/test_training.py",)
MODEL_FOLDER = ("tests/io/test_model_folder.py", "tests/training/test_training.py")
INFERENCE = ("tests/runtime/test_inference.py", "tests/models/test_shipped_models.py")
MODELS = ("tests/models/test_models.py", "tests/models/test_shipped_models.py")
DATA = ("tests/io/test_data.py", "tests/training/test_training.py", "tests/training/test_train_cli.py")
IMAGE = ("tests/io/test_data.py", "tests/io/test_image.py", "tests/training/test_training.py")
APP = ("tests/ui/test_ui.py",)
TEACH = ("tests/ui/test_teach.py",)  # the teaching views: likelihood of a photo, runs side by side, interpolation
LAB = ("tests/lab/test_lab.py",)  # the 2-D lab's library
TRAIN_CLI = ("tests/training/test_train_cli.py",)
BACKGROUND_COMPILE = ("tests/training/test_background_compile.py",)  # one real compile on the CPU: about a minute
EVALUATE = ("tests/metrics/test_evaluate.py",)
OPENVINO = ("tests/runtime/test_openvino.py",)
CPU = ("tests/runtime/test_cpu.py",)
MODEL_FOLDERS_IN_APP = ("tests/serve/test_model_folders_in_app.py",)
INPUTS = ("tests/serve/test_inputs.py",)  # the checks of what users send
API = ("tests/serve/test_api_inputs.py",)  # a real server sent every kind of value (a few minutes)
DIFFUSERS = ("tests/io/test_diffusers_folder.py", "tests/ui/test_diffusers_views.py")  # diffusers DDPM folders


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str  # relative to the repository root
    old: str  # exact source text; must occur exactly once in the file
    new: str
    tests: tuple[str, ...]
    what: str  # the bug, as a user would meet it


M = Mutation
MUTATIONS: list[Mutation] = [
    # --- schedule -----------------------------------------------------------------------------------------------
    M("linear-betas-off-by-one", "ddpm_app/diffusion/schedule.py",
      "torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)",
      "torch.linspace(beta_start, beta_end, timesteps + 1, dtype=torch.float64)[1:]", SCHEDULE,
      "β_t shifted by one grid step"),
    M("alphas-cumprod-prev-starts-at-abar0", "ddpm_app/diffusion/schedule.py",
      "torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])",
      "torch.cat([alphas_cumprod[:1], alphas_cumprod[:-1]])", SCHEDULE,
      "ᾱ_{t−1} at t = 0 is ᾱ_0 instead of 1 (off by one at the last reverse step)"),
    M("sqrt-one-minus-abar-missing-sqrt", "ddpm_app/diffusion/schedule.py",
      "sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod).sqrt()",
      "sqrt_one_minus_alphas_cumprod = (1.0 - alphas_cumprod)", SCHEDULE,
      "q(x_t|x₀) uses 1−ᾱ_t as the noise scale instead of √(1−ᾱ_t)"),
    M("recipm1-sign", "ddpm_app/diffusion/schedule.py",
      "(1.0 / alphas_cumprod - 1.0).sqrt()", "(1.0 / alphas_cumprod + 1.0).sqrt()", SCHEDULE,
      "x̂₀ from ε̂ with a sign error under the root"),
    M("posterior-variance-uses-abar-t", "ddpm_app/diffusion/schedule.py",
      "posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)",
      "posterior_variance = betas * (1.0 - alphas_cumprod) / (1.0 - alphas_cumprod_prev)", SCHEDULE,
      "posterior variance with the ᾱ indices swapped"),
    M("posterior-log-variance-shifted", "ddpm_app/diffusion/schedule.py",
      "torch.cat([self.posterior_variance[1:2], table[1:]])",
      "torch.cat([self.posterior_variance[1:2], table[:-1]])", SCHEDULE,
      "log σ_q(t)² (and the reverse step's σ_t²) read one timestep off"),
    M("posterior-coef2-missing-sqrt", "ddpm_app/diffusion/schedule.py",
      "(1.0 - alphas_cumprod_prev) * alphas.sqrt()", "(1.0 - alphas_cumprod_prev) * alphas", SCHEDULE,
      "posterior mean weight of x_t uses α_t instead of √α_t"),
    M("eps-coef-wrong-denominator", "ddpm_app/diffusion/schedule.py",
      "eps_coef=betas / sqrt_one_minus_alphas_cumprod", "eps_coef=betas / (1.0 - alphas_cumprod)", SCHEDULE,
      "the reverse step's ε̂ weight β_t/(1−ᾱ_t) instead of β_t/√(1−ᾱ_t)"),
    M("cosine-missing-square", "ddpm_app/diffusion/schedule.py",
      "f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2",
      "f = torch.cos((steps + s) / (1 + s) * math.pi / 2)", SCHEDULE, "cosine schedule ᾱ = cos instead of cos²"),
    M("extract-off-by-one", "ddpm_app/diffusion/schedule.py",
      "out = table.to(t.device)[t]", "out = table.to(t.device)[t - 1]", SCHEDULE,
      "every per-timestep table read at t − 1"),
    M("q-sample-sign", "ddpm_app/diffusion/schedule.py",
      "+ extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)",
      "- extract(self.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)", SCHEDULE,
      "x_t = √ᾱ·x₀ − √(1−ᾱ)·ε"),
    M("predict-x0-sign", "ddpm_app/diffusion/schedule.py",
      "- extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)",
      "+ extract(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps)", SCHEDULE, "x̂₀ adds ε̂ instead of removing it"),
    M("q-step-missing-sqrt", "ddpm_app/diffusion/schedule.py",
      "extract(self.alphas, t, x_prev.shape).sqrt() * x_prev", "extract(self.alphas, t, x_prev.shape) * x_prev",
      SCHEDULE, "one forward step scales x_{t−1} by α_t instead of √α_t"),
    # --- samplers -----------------------------------------------------------------------------------------------
    M("ddim-eta-squared", "ddpm_app/diffusion/samplers.py",
      "sigma = eta * ((1 - a_s)", "sigma = eta ** 2 * ((1 - a_s)", SAMPLERS,
      "DDIM σ computed with η² instead of η (wrong for every 0 < η < 1)"),
    M("ddpm-beta-variance-ignored", "ddpm_app/diffusion/schedule.py",
      'table = self.posterior_variance if variance == "posterior" else self.betas',
      "table = self.posterior_variance", SAMPLERS, 'variance="beta" silently does nothing'),
    M("ddpm-noise-at-last-step", "ddpm_app/diffusion/samplers.py",
      "if t > 0 else torch.zeros_like(x)", "if t >= 0 else torch.zeros_like(x)", SAMPLERS,
      "noise added on the final step (matters with variance=\"beta\")"),
    M("ddpm-skips-last-step", "ddpm_app/diffusion/samplers.py",
      "enumerate(range(t0, -1, -1))", "enumerate(range(t0, 0, -1))", SAMPLERS,
      "the chain stops at x_1 (off-by-one in the timestep loop)"),
    M("ddpm-variance-as-std", "ddpm_app/diffusion/samplers.py",
      "sigma = schedule.reverse_variance(variance).sqrt().to(device)",
      "sigma = schedule.reverse_variance(variance).to(device)", SAMPLERS,
      "σ_t² used where σ_t belongs"),
    M("ddpm-mean-sign", "ddpm_app/diffusion/samplers.py",
      "(x - extract(schedule.eps_coef, tt, x.shape) * eps)", "(x + extract(schedule.eps_coef, tt, x.shape) * eps)",
      SAMPLERS, "the reverse step adds the predicted noise"),
    M("clip-ignored", "ddpm_app/diffusion/samplers.py", "    if clip_x0:\n", "    if False:\n", SAMPLERS,
      "clip_x0 does nothing"),
    M("clip-eps-not-recomputed", "ddpm_app/diffusion/samplers.py",
      "        eps = schedule.predict_eps(x, tt, x0)\n", "", SAMPLERS,
      "after clipping x̂₀, ε̂ no longer agrees with it"),
    M("ddim-last-step-uses-abar-T", "ddpm_app/diffusion/samplers.py",
      "a_s = float(abar[s]) if s >= 0 else 1.0", "a_s = float(abar[s])", SAMPLERS,
      "DDIM's last step reads ᾱ[−1] = ᾱ_T instead of ending at x̂₀"),
    M("ddim-x0-weight-missing-sqrt", "ddpm_app/diffusion/samplers.py",
      "return DDIMCoefficients(a_s ** 0.5,", "return DDIMCoefficients(a_s,", SAMPLERS, "DDIM scales x̂₀ by ᾱ_s instead of √ᾱ_s"),
    M("ddim-noise-scaled-by-variance", "ddpm_app/diffusion/samplers.py",
      "x_prev = x_prev + c.sigma * z", "x_prev = x_prev + c.sigma * c.sigma * z", SAMPLERS,
      "DDIM's fresh noise scaled by σ² (variance for standard deviation)"),
    # --- likelihood ---------------------------------------------------------------------------------------------
    M("kl-variance-term-inverted", "ddpm_app/diffusion/likelihood.py",
      "(mean1 - mean2) ** 2 * torch.exp(-logvar2)", "(mean1 - mean2) ** 2 * torch.exp(logvar2)", LIKELIHOOD,
      "Gaussian KL multiplies by σ₂² instead of dividing"),
    M("decoder-bin-width", "ddpm_app/diffusion/likelihood.py",
      "half = 1.0 / (bins - 1)", "half = 2.0 / (bins - 1)", LIKELIHOOD, "decoder bins twice as wide"),
    M("prior-uses-abar-0", "ddpm_app/diffusion/likelihood.py",
      "abar_T = schedule.float64.alphas_cumprod[-1]", "abar_T = schedule.float64.alphas_cumprod[0]",
      LIKELIHOOD, "prior term L_T computed at the first timestep"),
    M("vb-model-mean-uses-true-x0", "ddpm_app/diffusion/likelihood.py",
      "model_mean = q.q_posterior(pred_x0, x_t, t).mean", "model_mean = q.q_posterior(x0, x_t, t).mean", LIKELIHOOD,
      "the bound never looks at the network"),
    M("beta-variance-decoder-uses-beta0", "ddpm_app/diffusion/schedule.py",
      "return torch.cat([self.posterior_variance[1:2], table[1:]])", "return table", LIKELIHOOD,
      "the β-variance decoder uses β_0 (a needlessly narrow decoder), the posterior one σ_q(0)² = 0 (a point)"),
    M("stratified-weights-dropped", "ddpm_app/diffusion/likelihood.py",
      "weights = torch.cat([torch.ones(1, dtype=torch.float64), sizes.double()])",
      "weights = torch.ones(num, dtype=torch.float64)", LIKELIHOOD, "the stratified estimate forgets stratum sizes"),
    M("bound-strata-equal", "ddpm_app/diffusion/likelihood.py",
      "torch.logspace(0, math.log10(timesteps), strata + 1, dtype=torch.float64)",
      "torch.linspace(1, timesteps, strata + 1, dtype=torch.float64)", LIKELIHOOD,
      "equal strata: one draw near t = 1 stands for a wide stratum and the estimate jumps by a bit per dimension"),
    M("bpd-in-nats", "ddpm_app/diffusion/likelihood.py",
      "return mean_over_dims(normal_kl(mean, logvar, zero, zero)) / LN2",
      "return mean_over_dims(normal_kl(mean, logvar, zero, zero))", LIKELIHOOD, "prior term in nats, not bits"),
    # --- training -----------------------------------------------------------------------------------------------
    M("ema-never-updated", "ddpm_app/training/trainer.py",
      "        self.ema.update(self.step)\n", "", TRAINING, "exported weights are the initial ones"),
    M("ema-weight-swapped", "ddpm_app/training/ema.py",
      "torch._foreach_lerp_(self._dst, self._src, 1.0 - self.decay_at(step))",
      "torch._foreach_lerp_(self._dst, self._src, self.decay_at(step))", TRAINING,
      "EMA weight d and 1 − d swapped"),
    M("ema-warmup-max", "ddpm_app/training/ema.py",
      "return min(self.decay, (1 + step) / (10 + step))", "return max(self.decay, (1 + step) / (10 + step))",
      TRAINING, "EMA warm-up picks the larger decay"),
    M("resume-cpu-rng-not-restored", "ddpm_app/training/trainer.py",
      '        torch.set_rng_state(ckpt["cpu_rng"])\n', "", TRAINING,
      "resume is not exact with dropout (the CPU RNG state is not restored)"),
    M("loss-sum-over-pixels", "ddpm_app/diffusion/loss.py",
      "return self.squared_error.flatten(1).mean(dim=1)", "return self.squared_error.flatten(1).sum(dim=1)", TRAINING,
      "loss summed over pixels (learning rate effectively ×C·H·W)"),
    M("loss-target-x0", "ddpm_app/diffusion/loss.py",
      "(pred - noise.float()) ** 2", "(pred - x0.float()) ** 2",
      TRAINING, "the network is trained to predict x₀ while sampling expects ε"),
    M("loss-network-sees-clean-image", "ddpm_app/diffusion/loss.py",
      "pred = model(x_t, t).float()", "pred = model(x0, t).float()", TRAINING, "the network is shown x₀ instead of x_t"),
    M("loss-curve-t-not-grouped", "ddpm_app/diffusion/loss.py",
      ".repeat_interleave(n * draws)  # t-major", ".repeat(n * draws)  # t-major", TRAINING,
      "the loss curve pairs images with the wrong timesteps (every point an average over all t)"),
    M("loss-curve-stderr-is-std", "ddpm_app/diffusion/loss.py",
      "spread = per_t.std(dim=1) / (n * draws) ** 0.5 if", "spread = per_t.std(dim=1) if", TRAINING,
      "the loss curve's error bars are the spread of single losses, not the standard error of the mean"),
    M("curve-timesteps-short-of-T", "ddpm_app/diffusion/loss.py",
      "round(i * (timesteps - 1) / (num - 1))", "round(i * (timesteps - 1) / num)", TRAINING,
      "the loss curve stops short of t = T − 1"),
    M("train-never-samples-t0", "ddpm_app/training/objective.py",
      "t = torch.randint(0, timesteps, (batch,)", "t = torch.randint(1, timesteps, (batch,)", TRAINING,
      "timestep 0 is never trained (off by one)"),
    M("small-t-draws-dropped", "ddpm_app/training/objective.py",
      "t = torch.cat([small, t[k:]])", "t = torch.cat([t[:k], t[k:]])", TRAINING,
      "--small-t-fraction draws its log-uniform timesteps and then trains on uniform ones"),
    M("log-uniform-t-off-by-one", "ddpm_app/training/objective.py",
      ".floor().long() - 1).clamp_(0, timesteps - 1)", ".floor().long()).clamp_(0, timesteps - 1)", TRAINING,
      "the log-uniform timesteps start at t = 1: the decoder step gets no extra weight"),
    M("min-snr-inverted", "ddpm_app/training/objective.py",
      "return snr.clamp(max=cfg.min_snr_gamma) / snr", "return snr / snr.clamp(max=cfg.min_snr_gamma)", TRAINING,
      "Min-SNR weights inverted"),
    M("lr-warmup-off-by-one", "ddpm_app/training/config.py",
      "return cfg.lr * (step + 1) / cfg.warmup_steps", "return cfg.lr * step / cfg.warmup_steps", TRAINING,
      "the first warm-up step has learning rate 0"),
    M("recipe-lr-scaled-linearly", "ddpm_app/training/config.py",
      "recipe.lr * math.sqrt(batch / recipe.batch_size)", "recipe.lr * (batch / recipe.batch_size)", TRAINING,
      "another batch scales the recipe's learning rate linearly instead of by the square root"),
    M("recipe-cuda-graphs-under-ddp", "ddpm_app/training/config.py",
      '"reduce-overhead" if world_size == 1 else "default"', '"reduce-overhead"', TRAINING,
      "several GPUs get CUDA graphs, a compile mode DistributedDataParallel was not tested with"),
    M("cpu-takes-the-gpu-recipe", "ddpm_app/training/config.py",
      'cfg.recipe == "auto" and device_type != "cuda"', 'cfg.recipe == "auto" and device_type == "nowhere"', TRAINING,
      "without a GPU the trainer takes the GPU recipe (batch 1,024, minutes a step) instead of the CPU's"),
    M("time-limit-ignores-the-next-step", "ddpm_app/training/config.py",
      "seconds_used + (next_step_s or 0.0) > cfg.max_minutes * 60", "seconds_used > cfg.max_minutes * 60", TRAINING,
      "--max-minutes lets a step start that will end after the limit"),
    M("time-limit-warning-never", "ddpm_app/training/config.py",
      "    if reachable >= cfg.steps:\n        return None", "    if True:\n        return None", TRAINING,
      "no warning when --max-minutes will cut the learning-rate decay short"),
    M("held-out-mse-ema-and-raw-swapped", "ddpm_app/training/trainer.py",
      '"held_out_mse_ema": mse.ema, "held_out_mse": mse.raw', '"held_out_mse_ema": mse.raw, "held_out_mse": mse.ema',
      TRAINING + TRAIN_CLI, "metrics.jsonl reports the raw weights' held-out ε-MSE as the EMA's and vice versa"),
    M("export-raw-weights", "ddpm_app/training/export.py",
      'model = build_model(config.model)\n    model.load_state_dict(ckpt["ema"])',
      'model = build_model(config.model)\n    model.load_state_dict(ckpt["model"])', TRAINING,
      "the export holds the raw weights, not the EMA"),
    # --- model folder -------------------------------------------------------------------------------------------
    M("heldout-measures-train-split", "ddpm_app/metrics/heldout.py",
      "split=split, limit=limit)", 'split="train", limit=limit)', TRAIN_CLI,
      "the held-out figures stored at export are measured on the training images"),
    M("heldout-bound-unclipped", "ddpm_app/metrics/heldout.py",
      "manual_seed(seed + 1), clip_x0=True", "manual_seed(seed + 1), clip_x0=False", TEACH,
      "the stored held-out bound is not the one the photo is compared with (x̂₀ unclipped)"),
    M("load-not-strict", "ddpm_app/io/model_folder.py", "strict=True, safe=True", "strict=False, safe=True", MODEL_FOLDER,
      "a model folder missing weights loads silently"),
    M("config-types-loose", "ddpm_app/checks.py",
      "if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:",
      "if not low <= value <= high:", ("tests/io/test_model_folder.py",),
      "config.json's 1.5 or true passes as a whole number, and a string is a TypeError with no message"),
    M("links-not-followed", "ddpm_app/serve/library.py",
      "if not path.resolve().is_relative_to(real_root):", "if not path.absolute().is_relative_to(real_root):",
      MODEL_FOLDERS_IN_APP, "weights/link → /elsewhere is listed and loads"),
    M("load-on-the-device-worker", "ddpm_app/serve/library.py",
      "self.loader.submit(self._load_and_keep, name, folder, hub)",
      "self.worker.submit(self._load_and_keep, name, folder, hub)", MODEL_FOLDERS_IN_APP,
      "a model load holds the one thread that runs every user's sampling: other users stall while it loads"),
    M("switch-before-outputs", "ddpm_app/ui/model.py",
      "        try:\n            outputs = self.worker.run(self._model_outputs, served, status, user.language)",
      "        user.model = served.name\n        try:\n"
      "            outputs = self.worker.run(self._model_outputs, served, status, user.language)",
      MODEL_FOLDERS_IN_APP, "a model switch whose outputs fail leaves the user on the new model"),
    M("samples-served-from-the-folder", "ddpm_app/ui/model.py",
      "return processing_utils.save_file_to_cache(path, processing_utils.get_upload_folder())", "return str(path)",
      MODEL_FOLDERS_IN_APP, "a weights folder outside the working and temporary folders: Gradio refuses its samples.png"),
    M("model-switch-updates-shared", "ddpm_app/ui/model.py",
      "ddim_steps = [gr.update(maximum=T, value=first.ddim_steps) for _ in range(2)]",
      "ddim_steps = [gr.update(maximum=T, value=first.ddim_steps)] * 2", ("tests/serve/test_app_server.py",),
      "after a model switch Denoise keeps its old DDIM step count (Gradio empties a shared update)"),
    M("model-eta-default-ignored", "ddpm_app/ui/model.py",
      "ddim_eta = [gr.update(value=defaults.ddim_eta) for _ in range(2)]",
      "ddim_eta = [gr.update(value=0.0) for _ in range(2)]", APP,
      "a model that needs stochastic DDIM starts at η = 0 and makes noisy samples"),
    M("sample-grid-ignores-eta", "ddpm_app/training/trainer.py",
      'SamplerSettings("ddim", self.cfg.sample_steps, eta=self.cfg.sample_eta, clip_x0=True)',
      'SamplerSettings("ddim", self.cfg.sample_steps, eta=0.0, clip_x0=True)', TRAINING,
      "a seed-architecture run's sample grids show noise at every step, as if training failed"),
    # --- inference ----------------------------------------------------------------------------------------------
    M("prepared-net-gets-t-plus-1", "ddpm_app/runtime/inference.py",
      "return self.model(x, t).float()", "return self.model(x, t + 1).float()", INFERENCE,
      "every sample subtly off"),
    M("prepared-net-left-in-train-mode", "ddpm_app/runtime/inference.py",
      "self.eval()  # as prepare left the model: no dropout", "self.train()", INFERENCE,
      "dropout stays on while sampling"),
    M("openvino-gets-t-plus-1", "ddpm_app/runtime/openvino_net.py",
      "self.time_features(t.detach().reshape(-1).expand(x.shape[0]))",
      "self.time_features(t.detach().reshape(-1).expand(x.shape[0]) + 1)", OPENVINO,
      "with --cpu-runtime openvino every sample is subtly off"),
    M("frame-fields-swapped", "ddpm_app/serve/runs.py",
      "first[1], first[2], first[3] if noise else None, pictures[2 * b]))",
      "first[2], first[1], first[3] if noise else None, pictures[2 * b]))", APP,
      "Frames shows the step's ε̂ where x̂₀ belongs and x̂₀ as ε̂"),
    M("openvino-core-per-network", "ddpm_app/runtime/openvino_net.py",
      "self._compiled = _core().compile_model(", "self._compiled = __import__('openvino').Core().compile_model(",
      OPENVINO,
      "Ctrl-C after a model run by OpenVINO was let go crashes the process (SIGSEGV)"),
    M("openvino-one-request-for-every-batch", "ddpm_app/runtime/openvino_net.py",
      "if n == 1 or len(requests) == 1:", "if n >= 1 or len(requests) == 1:", OPENVINO,
      "four images wait, inside every op, for whichever thread the scheduler has put aside"),
    M("openvino-odd-batch-unequal-halves", "ddpm_app/runtime/openvino_net.py",
      "if n % 2:", "if False:", OPENVINO,
      "three images split two and one: the stream with one waits, and three cost more than four"),
    M("trainer-channels-last-on-cuda", "ddpm_app/training/network.py",
      'return device.type != "cuda" and not seed_net', "return not seed_net", TRAINING,
      "the ddpm U-Net trains in channels_last on CUDA, about 7 % slower"),
    M("background-compile-other-threads", "ddpm_app/cli/compile_step.py",
      '    torch.set_num_threads(spec["threads"])\n', "", BACKGROUND_COMPILE,
      "the child compiles the CPU's kernels for another thread count: the run finds nothing in the cache and "
      "compiles everything again"),
    M("background-compile-never-switches", "ddpm_app/training/trainer.py",
      "                    self.use_compiled()\n", "                    pass\n", BACKGROUND_COMPILE,
      "the run trains uncompiled to its end although the compiled step is ready"),
    M("background-compile-outlives-the-run", "ddpm_app/training/trainer.py",
      "                self._behind.stop()\n", "", BACKGROUND_COMPILE,
      "a run that ends before the compile leaves the child compiling on the GPU"),
    M("background-compile-times-the-recording", "ddpm_app/training/trainer.py",
      "settling, switch_start = ready, 2 if self._graphed else 1,", "settling, switch_start = ready, 1,",
      BACKGROUND_COMPILE, "the step that records the CUDA graphs is timed as training: the first images/s after the "
      "switch reads a fraction of the real speed, and the time-limit warning is judged on it"),
    M("trainer-layout-inside-off", "ddpm_app/training/network.py",
      "return device.type == \"cuda\" and not channels_last and not isinstance(model, SeedUNet)", "return False",
      TRAINING, "the ddpm U-Net's compiled step runs its convolutions in NCHW on CUDA, with cuDNN's transposes around "
      "each: 13 % slower"),
    M("openvino-streams-pinned", "ddpm_app/runtime/openvino_net.py",
      '"ENABLE_CPU_PINNING": False', '"ENABLE_CPU_PINNING": True', OPENVINO,
      "a stream pinned to the core a busy program runs on waits for it while the other core idles"),
    M("openvino-single-request-on-all-threads", "ddpm_app/runtime/openvino_net.py",
      "self.streams = 2 if threads >= 2 else 1", "self.streams = 1", OPENVINO,
      "every batch waits, inside every op, for the thread the scheduler put aside, and a seed's image changes with "
      "its batch"),
    M("malloc-thresholds-swapped", "ddpm_app/runtime/cpu.py",
      "mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1",
      "mallopt(M_MMAP_THRESHOLD, TRIM_THRESHOLD) != 1 or mallopt(M_TRIM_THRESHOLD, MMAP_THRESHOLD) != 1", CPU,
      "glibc keeps only 32 MiB of freed heap and maps blocks up to 1 GiB afresh (it refuses that threshold)"),
    M("engine-openvino-without-bf16-hardware", "ddpm_app/runtime/inference.py",
      "        elif not cpu.bf16_native:\n", "        elif False:\n", INFERENCE,
      "--cpu-runtime auto runs OpenVINO on CPUs without bf16, where it was never measured faster"),
    M("engine-bf16-without-bf16-hardware", "ddpm_app/runtime/inference.py",
      'if requested in ("auto", "bf16") and cpu.bf16_native else "fp32"',
      'if requested in ("auto", "bf16") else "fp32"', INFERENCE,
      "OpenVINO is told bf16 on a CPU without it, and the Model tab says bf16 where f32 runs"),
    M("engine-fp32-asked-runs-bf16", "ddpm_app/runtime/inference.py",
      'if requested in ("auto", "bf16") and cpu.bf16_native else "fp32"',
      'if requested != "fp16" and cpu.bf16_native else "fp32"', INFERENCE,
      "--precision fp32 silently runs OpenVINO in bf16"),
    M("engine-no-fallback-where-openvino-fails", "ddpm_app/runtime/inference.py",
      '            if runtime == "openvino":\n                raise ValueError(',
      '            if True:\n                raise ValueError(', OPENVINO,
      "where OpenVINO cannot build the network, --cpu-runtime auto stops the app instead of running PyTorch"),
    M("openmp-told-after-torch-loaded", "app.py",
      "WAITING = wait_passively()  # before torch loads OpenMP, which reads it once\n",
      "import torch  # noqa: E402\nWAITING = wait_passively()\n", CPU,
      "the app's OpenMP threads spin while idle, and a step on a busy machine takes ten times as long"),
    M("openmp-wait-overrides-the-user", "ddpm_app/runtime/cpu.py",
      '    if "OMP_WAIT_POLICY" in environ:\n', "    if False:\n", CPU,
      "OMP_WAIT_POLICY set by the user is overwritten"),
    # --- models -------------------------------------------------------------------------------------------------
    M("resblock-scale-without-one", "ddpm_app/models/unet.py",
      "h = self.norm2(h) * (1 + scale) + shift", "h = self.norm2(h) * scale + shift", MODELS,
      "ResBlock uses ·scale instead of ·(1 + scale)"),
    M("attention-without-residual", "ddpm_app/models/unet.py",
      "return x + self.proj(rearrange(out", "return self.proj(rearrange(out", MODELS, "attention drops its residual connection"),
    M("attention-q-k-swapped", "ddpm_app/models/unet.py",
      "q, k, v = rearrange(self.qkv", "k, q, v = rearrange(self.qkv", MODELS,
      "queries and keys swapped"),
    M("mid-attention-skipped", "ddpm_app/models/unet.py",
      "h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)", "h = self.mid2(self.mid1(h, emb), emb)", MODELS,
      "the middle block's attention is never applied"),
    M("skip-concat-order", "ddpm_app/models/unet.py",
      "h = block(torch.cat([h, skips.pop()], dim=1), emb)", "h = block(torch.cat([skips.pop(), h], dim=1), emb)",
      MODELS, "skip connection concatenated in the wrong order"),
    M("upsample-tiled", "ddpm_app/models/unet.py",
      'repeat(h, "b c h w -> b c (h 2) (w 2)")', 'repeat(h, "b c h w -> b c (2 h) (2 w)")',
      MODELS, "the nearest ×2 tiles the feature map twice in each direction instead of repeating each pixel"),
    M("patch-stem-channel-order", "ddpm_app/models/unet.py",
      '"b c (h p1) (w p2) -> b (c p1 p2) h w"', '"b c (h p1) (w p2) -> b (p1 p2 c) h w"',
      MODELS, "the patch stem orders a patch's channels unlike the shipped weights (and unlike the output's unpatching)"),
    M("timestep-frequency-off-by-one", "ddpm_app/models/layers.py",
      "(-math.log(max_period) / (half - 1))", "(-math.log(max_period) / half)", MODELS,
      "timestep embedding frequencies off by one"),
    M("timestep-sin-cos-swapped", "ddpm_app/models/layers.py",
      "torch.cat([args.sin(), args.cos()], dim=-1)", "torch.cat([args.cos(), args.sin()], dim=-1)", MODELS,
      "sin and cos halves of the timestep embedding swapped"),
    M("group-norm-one-group", "ddpm_app/models/layers.py",
      "groups = math.gcd(channels, max_groups)", "groups = 1", MODELS, "GroupNorm with a single group"),
    M("seed-block-scale-without-one", "ddpm_app/models/seed.py",
      "h = h * (scale + 1) + shift", "h = h * scale + shift", MODELS, "seed block uses ·scale instead of ·(1 + scale)"),
    M("seed-upsample-taps-reversed", "ddpm_app/models/seed.py",
      "torch.stack([w2, w1 + w2, w0 + w1, w0], dim)", "torch.stack([w0, w0 + w1, w1 + w2, w2], dim)", MODELS,
      "the transposed-conv upsampling taps in the wrong order"),
    # --- data ---------------------------------------------------------------------------------------------------
    M("flip-vertical", "ddpm_app/io/data.py",
      "x.flip(-1), x)", "x.flip(-2), x)", DATA, "the random flip turns faces upside down"),
    M("flip-never", "ddpm_app/io/data.py", "generator=generator) < 0.5", "generator=generator) < 0.0", DATA,
      "the random flip never happens"),
    M("pack-small-files-in-threads", "ddpm_app/io/data.py",
      "if sum(sizes) < SMALL_FILE_BYTES * max(1, len(sizes)):", "if sum(sizes) > SMALL_FILE_BYTES * max(1, len(sizes)):",
      DATA, "a pack of small images is decoded in threads that fight over the GIL (several times slower) and one of "
      "large photos in a single thread"),
    M("auto-split-ignores-train-folder", "ddpm_app/io/data.py",
      'return "train" if any(_in_split(n, "train") for n in names) else None', "return None", DATA,
      "a pack's test images are trained on"),
    M("from-uint8-zero-to-one", "ddpm_app/image.py",
      "return x.float() / 127.5 - 1.0", "return x.float() / 255.0", IMAGE, "pixels scaled to [0, 1], not [−1, 1]"),
    M("to-uint8-truncates", "ddpm_app/image.py",
      ".clamp(-1, 1) + 1) * 127.5).round()", ".clamp(-1, 1) + 1) * 127.5)", IMAGE,
      "images truncated, not rounded, to 8 bits"),
    M("to-numpy-rows-columns-swapped", "ddpm_app/image.py",
      "to_uint8(x).cpu().permute(1, 2, 0).numpy()", "to_uint8(x).cpu().permute(2, 1, 0).numpy()", IMAGE,
      "pictures handed to Gradio transposed (and with channels mixed up)"),
    M("grey-levels-taken-as-16-bit", "ddpm_app/image.py",
      'return 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0', "return 65535.0", IMAGE,
      "a 32-bit integer grey image with 8-bit levels comes out black"),
    # --- the app's sampling path --------------------------------------------------------------------------------
    M("app-clip-forced-on", "ddpm_app/diffusion/samplers.py",
      "clip_x0=self.clip_x0, start_t=start_t", "clip_x0=True, start_t=start_t", APP,
      "the Clip x̂₀ checkboxes (Generate and Denoise) do nothing"),
    M("app-eta-ignored", "ddpm_app/diffusion/samplers.py",
      'return cls("ddim", steps, eta, clip_x0, variance)', 'return cls("ddim", steps, 0.0 * eta, clip_x0, variance)',
      APP,
      "the η slider does nothing"),
    M("app-seed-ignored", "ddpm_app/serve/served.py",
      "return torch.Generator(device=self.device).manual_seed(seed)",
      "return torch.Generator(device=self.device).manual_seed(0)", APP, "every seed gives the same images"),
    M("app-sdedit-starts-one-step-late", "ddpm_app/serve/served.py",
      "tuple(x_start.shape), start_t=t,", "tuple(x_start.shape), start_t=t - 1,", APP,
      "denoising a photo starts one timestep below the noise it has"),
    M("app-forward-t-off-by-one", "ddpm_app/views/state.py",
      "self.x_t = served.q_sample(self.x0, t, self.eps)[0]", "self.x_t = served.q_sample(self.x0, t + 1, self.eps)[0]",
      APP, "the forward view shows x_{t+1}"),
    # --- what users send ----------------------------------------------------------------------------------------
    M("photo-path-unchecked", "ddpm_app/ui/widgets.py",
      "if (real := uploaded_file(path, utils.get_upload_folder())) is None:", "if (real := path) is None:", API,
      "a photo sent as {\"path\": …} reads any file on the server"),
    M("upload-check-follows-no-links", "ddpm_app/ui/widgets.py",
      "real = Path(path).resolve()", "real = Path(os.path.abspath(path))", INPUTS,
      "a link in the upload folder to a file outside is read"),
    M("numbers-accept-strings", "ddpm_app/checks.py",
      "if isinstance(value, (bool, str)):", "if isinstance(value, bool):", INPUTS,
      "a number field takes \"7\" and \"NaN\" strings, which the API describes as numbers"),
    M("ddpm-ignores-ddim-settings", "ddpm_app/diffusion/samplers.py",
      "steps = None if unused and steps is None else", "steps = None if unused else", INPUTS,
      "DDPM ignores DDIM steps 'garbage' silently"),
    M("extra-inputs-ignored", "ddpm_app/ui/widgets.py",
      "if sent != len(fields):", "if sent < len(fields):", API,
      "a call with more values than the endpoint has fields is run, the extra ones ignored"),
    # --- the evaluation -------------------------------------------------------------------------------------------
    M("fd-floor-uses-samples", "ddpm_app/metrics/evaluate.py",
      "fd_train_test=feature_fd(emb_train.features[floor_index], emb_test.features)",
      "fd_train_test=feature_fd(generated, emb_test.features)", EVALUATE,
      "the FD floor is the samples' own distance (no floor at all)"),
    M("fd-bootstrap-resamples-the-reference", "ddpm_app/metrics/features.py",
      "gaussian_stats(features[torch.randint(n, (n,), generator=generator)]), ref)",
      "gaussian_stats(reference[torch.randint(len(reference), (len(reference),), generator=generator)]), ref)",
      ("tests/metrics/test_features.py", "tests/metrics/test_evaluate.py"),
      "FD-UTK's error bar resamples the held-out set, not the samples: far too small an error bar"),
    M("memorisation-reference-is-train-images", "ddpm_app/metrics/memorisation.py",
      "near_test = nearest_pixels(test.images, train.images, device)",
      "near_test = nearest_pixels(train.images, train.images, device)", EVALUATE,
      "the held-out reference distance is 0 (training images against themselves): every ratio is infinite"),
    M("evaluate-bound-on-the-training-split", "ddpm_app/metrics/evaluate.py",
      "images = test.images[:config.bpd_images]", "images = train.images[:config.bpd_images]", EVALUATE,
      "bits/dim measured on the images the model was trained on"),
    M("nearest-ignores-flips-off", "ddpm_app/metrics/memorisation.py",
      "for flipped in ((False, True) if flips else (False,)):", "for flipped in (False, True):", EVALUATE,
      "nearest_pixels(flips=False) still tries mirror images"),
    # --- the 2-D lab --------------------------------------------------------------------------------------------
    M("lab-forward-mean-unsquared", "ddpm_app/lab/forward.py",
      "float(f64.sqrt_alphas_cumprod[t]) * x0", "float(f64.alphas_cumprod[t]) * x0", LAB,
      "the lab's q(x_t|x₀) circles sit at ᾱ_t·x₀ instead of √ᾱ_t·x₀"),
    M("lab-energy-cross-term-halved", "ddpm_app/lab/metrics.py",
      "float(2 * _mean_distance(x, y, False)", "float(_mean_distance(x, y, False)", LAB,
      "the energy distance drops the factor 2 of its cross term: every quality figure is wrong"),
    M("lab-t-half-range", "ddpm_app/lab/train.py",
      "t = torch.randint(0, self.schedule.timesteps, (n,), generator=g)",
      "t = torch.randint(0, self.schedule.timesteps // 2, (n,), generator=g)", LAB,
      "the lab trains only on the less noisy half of the timesteps"),
    M("lab-noise-uniform", "ddpm_app/lab/train.py",
      "noise = torch.randn(x0.shape, generator=g)", "noise = torch.rand(x0.shape, generator=g)", LAB,
      "the lab's training noise is uniform on [0, 1) instead of N(0, I)"),
    # --- the teaching views ---------------------------------------------------------------------------------------
    M("likelihood-view-unclipped", "ddpm_app/views/likelihood.py",
      "generator=served.generator(seed), clip_x0=clip_x0", "generator=served.generator(seed), clip_x0=False", TEACH,
      "the photo's bound leaves x̂₀ unclipped whatever the checkbox says, unlike the held-out figure"),
    M("least-noisy-bits-stop-short", "ddpm_app/views/likelihood.py",
      "bound.per_timestep if paper_t(i) <= t_max}", "bound.per_timestep if paper_t(i) < t_max}", TEACH,
      "the share of the bound in the least noisy steps leaves out t = T/100 (and then is never shown)"),
    M("likelihood-verdict-without-T", "ddpm_app/ui/likelihood.py",
      "verdict(bpd, served.heldout, served.heldout_note, served.timesteps, language)",
      "verdict(bpd, served.heldout, served.heldout_note, language=language)", TEACH,
      "the Likelihood view never says where the bits are: the model's T does not reach the verdict"),
    M("likelihood-view-seed-ignored", "ddpm_app/views/likelihood.py",
      "generator=served.generator(seed)", "generator=served.generator(0)", TEACH,
      "the likelihood's seed does nothing"),
    M("verdict-ratio-inverted", "ddpm_app/views/likelihood.py",
      "ratio = photo.total / ref.total", "ratio = ref.total / photo.total", TEACH,
      "a photo far worse than the held-out images is called close to them"),
    M("training-view-measures-in-bf16", "ddpm_app/views/training.py",
      "out = noise_prediction(served.eps_model.fp32(),", "out = noise_prediction(served.eps_model,", TEACH,
      "the photo's loss is measured with the sampling network (bf16 where chosen), not in fp32 as held-out"),
    M("frames-label-names-the-next-t", "ddpm_app/ui/frames.py",
      "steps=run.num_steps, t=paper_t(f.t), frame=", "steps=run.num_steps, t=f.t, frame=", TEACH,
      "Frames names the tables' 0-based row, not the paper's t of the shown frame"),
    M("update-names-the-row-not-t", "ddpm_app/views/reverse_step.py",
      'target = f"x_{paper_t(b.t_prev)}"', 'target = f"x_{b.t_prev}"', ("tests/ui/test_ui_text.py",),
      "the step's update writes the tables' row of x_{t−1}, one below the paper's (x_998 = …·x_1000)"),
    M("compare-b-is-pinned", "ddpm_app/views/compare.py",
      "a, b = frame_at(pinned, t), frame_at(latest, t)", "a, b = frame_at(pinned, t), frame_at(pinned, t)", TEACH,
      "side by side shows the pinned run twice"),
    M("compare-frame-first-reached", "ddpm_app/views/compare.py",
      "return reached[-1] if reached", "return reached[0] if reached", TEACH,
      "side by side shows the run's first frame instead of its state at t"),
    M("slerp-is-lerp", "ddpm_app/diffusion/interpolation.py",
      "if float(theta) < 1e-6:", "if True:", TEACH,
      "the interpolation is a straight line (its middle noises too short)"),
    M("slerp-ends-swapped", "ddpm_app/diffusion/interpolation.py",
      "torch.sin((1 - w) * theta) * a.double() + torch.sin(w * theta) * b.double()",
      "torch.sin(w * theta) * a.double() + torch.sin((1 - w) * theta) * b.double()", TEACH,
      "the interpolation runs from the second seed to the first"),
    # --- serving: what users send and what stays behind ------------------------------------------------------------
    M("export-named-before-complete", "ddpm_app/views/export.py",
      'writer(folder / f"partial-{name}").replace(folder / name)', "writer(folder / name)",
      ("tests/serve/test_resources.py",), "a server killed mid-export leaves a truncated MP4 under the export's name"),
    M("high-bit-image-not-averaged", "ddpm_app/image.py",
      "if img.mode not in HIGH_BIT_MODES or factor < 2:", "if True:", ("tests/serve/test_reliability.py",),
      "a 252 KB float TIFF of 6,300² pixels costs a gigabyte and seconds of the device thread"),
    # --- diffusers DDPM folders: the scheduler config mapped onto the app's schedule ------------------------------
    M("diffusers-fixed-large-as-posterior", "ddpm_app/io/diffusers_folder.py",
      '"fixed_large": "beta"}', '"fixed_large": "posterior"}', DIFFUSERS,
      "a diffusers model with variance_type fixed_large samples with σ_t² = β̃_t instead of β_t"),
    M("diffusers-clip-sample-ignored", "ddpm_app/io/diffusers_folder.py",
      "why=why, clip_x0=clip, variance=variance)", "why=why, clip_x0=True, variance=variance)", DIFFUSERS,
      "a diffusers model with clip_sample false starts with x̂₀ clipped"),
    M("diffusers-v-prediction-accepted", "ddpm_app/io/diffusers_folder.py",
      'if field("prediction_type", "epsilon") != "epsilon":', 'if field("prediction_type", "epsilon") == "nothing":',
      DIFFUSERS, "a v-prediction model is run as if it predicted ε: a silently wrong chain"),
]


class PatternError(RuntimeError):
    pass


def mutated_source(root: Path, mutation: Mutation) -> tuple[str, str]:
    """(original, mutated) text of the mutation's file; PatternError unless ``old`` occurs exactly once."""
    path = root / mutation.path
    if not path.is_file():
        raise PatternError(f"{mutation.name}: {mutation.path} does not exist")
    source = path.read_text()
    count = source.count(mutation.old)
    if count != 1:
        raise PatternError(f"{mutation.name}: {mutation.old!r} occurs {count} times in {mutation.path} (needs 1); "
                           "update the mutation to the current code")
    mutated = source.replace(mutation.old, mutation.new)
    try:
        compile(mutated, str(path), "exec")
    except SyntaxError as e:
        raise PatternError(f"{mutation.name}: the mutated {mutation.path} does not compile ({e})") from None
    return source, mutated


def check_all(root: Path, mutations: list[Mutation]) -> list[str]:
    """Every problem with the mutation list (bad patterns, unknown test files, repeated names)."""
    problems = []
    names = [m.name for m in mutations]
    problems += [f"{n}: name used twice" for n in sorted({n for n in names if names.count(n) > 1})]
    for m in mutations:
        try:
            mutated_source(root, m)
        except PatternError as e:
            problems.append(str(e))
        problems += [f"{m.name}: no test file {t}" for t in m.tests if not (root / t).is_file()]
    return problems


def copy_repository(destination: Path) -> None:
    """The working tree's tracked and untracked-but-not-ignored files (what the tests see), without .git."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


@dataclass
class Result:
    name: str
    path: str
    what: str
    outcome: str  # killed | survived | timeout
    seconds: float
    failed_test: str = ""


def run_tests(workdir: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """(outcome, seconds, first failing test) of ``pytest -x`` on ``tests`` in ``workdir``."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    start = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start, ""
    seconds = time.perf_counter() - start
    if proc.returncode == 0:
        return "survived", seconds, ""
    if proc.returncode < 0:  # the test process died of a signal (a crash in native code): the bug did not pass
        return "killed", seconds, f"(crashed: {signal.Signals(-proc.returncode).name})"
    if proc.returncode not in (1, 2):  # 2: interrupted by a collection error (e.g. an import fails), also a kill
        raise RuntimeError(f"pytest exited with {proc.returncode} (usage or internal error):\n{proc.stdout[-2000:]}")
    failed = re.search(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.MULTILINE)
    return "killed", seconds, failed.group(1) if failed else "(collection)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated mutation names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--check", action="store_true", help="only check that every pattern matches once")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per mutation's test run (a timeout "
                        "counts as killed: the tests did not pass)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    args = parser.parse_args(argv)

    mutations = MUTATIONS
    if args.only:
        wanted = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - {m.name for m in MUTATIONS})
        if unknown:
            parser.error(f"unknown mutation(s): {', '.join(unknown)} (see --list)")
        mutations = [m for m in MUTATIONS if m.name in wanted]

    if args.list:
        for m in mutations:
            print(f"{m.name:40s} {m.path:28s} {m.what}\n{'':40s} tests: {' '.join(m.tests)}")
        return 0
    problems = check_all(ROOT, mutations)
    if problems:
        print("the mutation list does not fit the code:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    if args.check:
        print(f"all {len(mutations)} mutation patterns match exactly once and compile")
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="mutation-check-"))
    try:
        copy_repository(workdir)
        all_tests = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
        print(f"baseline: {' '.join(all_tests)} on the unmodified copy in {workdir}", flush=True)
        outcome, seconds, failed = run_tests(workdir, all_tests, args.timeout * 2)
        if outcome != "survived":
            print(f"the tests do not pass without any mutation ({outcome}: {failed}); fix that first", file=sys.stderr)
            return 2
        print(f"baseline passed in {seconds:.0f} s\n", flush=True)

        results: list[Result] = []
        for i, m in enumerate(mutations, 1):
            original, mutated = mutated_source(workdir, m)
            path = workdir / m.path
            path.write_text(mutated)
            try:
                outcome, seconds, failed = run_tests(workdir, m.tests, args.timeout)
            finally:
                path.write_text(original)
            results.append(Result(m.name, m.path, m.what, outcome, seconds, failed))
            print(f"[{i:2d}/{len(mutations)}] {outcome:8s} {m.name:40s} {seconds:6.1f} s  {failed}", flush=True)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    survivors = [r for r in results if r.outcome == "survived"]
    killed = len(results) - len(survivors)
    print(f"\nkilled {killed}/{len(results)} ({100 * killed / len(results):.0f} %)")
    for r in survivors:
        print(f"  survived: {r.name} ({r.path}): {r.what}")
    if args.json:
        args.json.write_text(json.dumps({"killed": killed, "total": len(results),
                                         "results": [asdict(r) for r in results]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
