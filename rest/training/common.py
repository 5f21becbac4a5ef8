"""Pieces every REST trainer shares: LR schedule, checkpoint discovery, periodic status line, metrics log."""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch


def lr_at(step: int, base_lr: float, warmup_steps: int, max_steps: int, min_ratio: float = 0.1) -> float:
    """Linear warm-up, then cosine decay to `min_ratio * base_lr` at `max_steps`."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def start_from(
    model: torch.nn.Module, folder: str | Path, key: str, section: str, ignore: tuple[str, ...] = ()
) -> None:
    """Copy the weights of the save_pretrained `folder` into `model` (fine-tuning), once their configs agree on every
    key but `ignore`; a difference is a ConfigError naming the config `key` and the `section` to set."""
    from rest.config import ConfigError
    from rest.models.loading import load_local

    start = load_local(type(model), folder)
    ours, theirs = (json.loads(json.dumps(dict(m.config), default=str)) for m in (model, start))  # tuples: lists
    differ = sorted(k for k in ours if not k.startswith("_") and k not in ignore and ours[k] != theirs.get(k))
    if differ:
        raise ConfigError(
            f"{key}: {folder} has another architecture ({', '.join(f'{k}: {theirs.get(k)!r}' for k in differ)}); "
            f"set the same under {section}: in the config"
        )
    model.load_state_dict(start.state_dict())


#################################################################################
#                                  Checkpoints                                  #
#################################################################################

# A run folder holds `checkpoints/step_000500/` (accelerate state: models, optimizers, EMA, RNG, plus
# `trainer_state.json` with the step) and `export/` (EMA weights in save_pretrained layout).


def save_networks(model: torch.nn.Module, state: dict[str, torch.Tensor], export: Path, audio: str) -> list[str]:
    """Write the `denoiser.` and (for the "mel" audio path; the phonetic channel has no weights) `audio_encoder.`
    weights of `state`, a teacher's or student's full state dict, as save_pretrained folders of fresh copies of
    `model`'s networks; loading is strict, so a missing or extra key is an error here, not later. Returns the
    folders written."""
    from rest.models.audio import AudioEncoder
    from rest.models.dit import DenoiserDiT

    # Named classes, not type(module): FSDP2 swaps a sharded module's class for a generated subclass.
    networks = [("denoiser", DenoiserDiT)] + ([("audio_encoder", AudioEncoder)] if audio == "mel" else [])
    for name, cls in networks:
        prefix = f"{name}."
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        fresh = cls.from_config(getattr(model, name).config)
        fresh.load_state_dict(weights, strict=True)
        fresh.save_pretrained(export / name)
    return [f"{name}/" for name, _ in networks]


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step_{step:07d}"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run (one with its trainer_state.json written last)."""
    root = Path(output_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step_*") if (p / "trainer_state.json").is_file()) if root.is_dir() else []
    return done[-1] if done else None


def resolve_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """`resume`: None (fresh run), "latest" (newest checkpoint if any) or a checkpoint folder."""
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint folder (no trainer_state.json)")
    return path


def write_trainer_state(path: Path, step: int, **extra) -> None:
    """Written last, so its presence marks a complete checkpoint."""
    tmp = path / "trainer_state.json.tmp"
    tmp.write_text(json.dumps({"step": step, **extra}))
    os.replace(tmp, path / "trainer_state.json")


def read_trainer_state(path: Path) -> dict:
    return json.loads((path / "trainer_state.json").read_text())


def prune_checkpoints(output_dir: str | Path, keep: int) -> None:
    root = Path(output_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step_*") if (p / "trainer_state.json").is_file())
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


#################################################################################
#                                    Logging                                    #
#################################################################################


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: CUDA allocator peak on GPU, peak resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class StatusLine:
    """Averages scalars between prints; `line()` gives one status line (loss, steps/s, samples/s, memory)."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0
        self.samples = 0
        self.t0 = time.perf_counter()

    def update(self, values: dict[str, float], samples: int) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1
        self.samples += samples

    def summary(self, step: int, device: torch.device, lr: float) -> dict[str, float]:
        dt = time.perf_counter() - self.t0
        out = {k: v / max(1, self.count) for k, v in self.sums.items()}
        out.update(
            step=step,
            lr=lr,
            steps_per_s=self.count / dt,
            samples_per_s=self.samples / dt,
            mem_mb=peak_memory_mb(device),
        )
        self.__init__()
        return out

    @staticmethod
    def format(values: dict[str, float]) -> str:
        parts = [f"step {int(values['step'])}"]
        for k, v in values.items():
            if k == "step":
                continue
            parts.append(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}")
        return " | ".join(parts)


class MetricsLog:
    """Appends JSON lines to `<output_dir>/metrics.jsonl` (main process only)."""

    def __init__(self, output_dir: str | Path, enabled: bool = True):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled

    def write(self, kind: str, values: dict) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, "time": time.time(), **values}) + "\n")

    @staticmethod
    def read(path: str | Path, kind: str | None = None) -> list[dict]:
        """The records of a run's metrics.jsonl (`path`: the file or its run folder), of one `kind` if given."""
        path = Path(path)
        path = path / "metrics.jsonl" if path.is_dir() else path
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if kind is None or r["kind"] == kind]


@dataclass
class TrainConfig:
    """The `train:` section every trainer shares; each trainer subclasses it with its own defaults and extras."""

    output_dir: str = "runs/train"
    seed: int = 0
    batch_size: int = 4  # per process
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    max_steps: int = 1000
    # wall-clock budget of this run (minutes, resumed time not counted): past it, the loop stops after the current
    # step, checkpoints and exports as at max_steps; None = no budget
    max_minutes: float | None = None
    grad_clip: float = 1.0  # max. gradient norm (0 = no clipping)
    ema_decay: float = 0.999  # reached after EMA warm-up (decay grows as 1 - (1 + step)^-2/3)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # bf16 autocast on GPU
    log_every: int = 50  # status line period (steps)
    eval_every: int = 500  # evaluation period (steps; 0 = only at the end)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2


#################################################################################
#                          Bookkeeping around the steps                         #
#################################################################################


class TrainingRun:
    """What every trainer does around its optimizer steps: progress bar, status line, metrics.jsonl, checkpoints.

    Call `after_step` once per optimizer step; use `due(step, every)` for periodic evaluation and checkpoints.
    `postfix_keys` names extra status values shown on the progress bar (as integers, e.g. the student's K).
    Run the loop inside `with run:`: Ctrl-C saves a checkpoint of the last finished step to resume from, and the
    progress bar is closed however the loop ends.
    """

    def __init__(
        self,
        accelerator,
        output_dir: str | Path,
        *,
        step: int,
        max_steps: int,
        log_every: int,
        keep_checkpoints: int,
        desc: str,
        postfix_keys: tuple[str, ...] = (),
    ):
        from tqdm.auto import tqdm

        self.accelerator = accelerator
        self.output_dir = Path(output_dir)
        self.step = step  # the last finished optimizer step
        self.max_steps = max_steps
        self.log_every = log_every
        self.keep_checkpoints = keep_checkpoints
        self.postfix_keys = postfix_keys
        self.is_main = accelerator.is_main_process
        self.log = MetricsLog(output_dir, enabled=self.is_main)
        self.status = StatusLine()
        self._tqdm = tqdm
        self.progress = tqdm(total=max_steps, initial=step, desc=desc, disable=not self.is_main, dynamic_ncols=True)

    def after_step(self, step: int, values: dict[str, float], samples: int, lr: float) -> None:
        """Count optimizer step `step`; every `log_every` steps (and at the last) print and log a status line."""
        self.step = step
        self.progress.update(1)
        self.status.update(values, samples=samples)
        if step % self.log_every == 0 or step == self.max_steps:
            summary = self.status.summary(step, self.accelerator.device, lr)
            extra = {k: int(summary[k]) for k in self.postfix_keys}
            self.progress.set_postfix(loss=f"{summary['loss']:.4f}", **extra)
            self.write(StatusLine.format(summary))
            self.log.write("train", summary)

    def due(self, step: int, every: int) -> bool:
        """Whether an action repeated every `every` steps (0: never) falls on `step`; the last step is left to the
        trainer's final evaluation and checkpoint."""
        return every > 0 and step % every == 0 and step < self.max_steps

    def write(self, line: str) -> None:
        """Print a line above the progress bar (main process only)."""
        if self.is_main:
            self._tqdm.write(line)

    def save_checkpoint(self, step: int) -> None:
        """Accelerate state (models, optimizers, EMA, RNG) + trainer_state.json; keeps the newest few."""
        path = checkpoint_dir(self.output_dir, step)
        self.accelerator.save_state(str(path))
        if self.is_main:
            write_trainer_state(path, step)
            prune_checkpoints(self.output_dir, self.keep_checkpoints)

    def close(self) -> None:
        self.progress.close()

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if kind is KeyboardInterrupt:
                self.accelerator.print(f"interrupted at step {self.step}; saving a checkpoint to resume from")
                self.save_checkpoint(self.step)
        finally:
            self.close()
