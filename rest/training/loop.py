"""The one training loop of REST: every trainer (VAE, teacher, student, SyncNet) runs through `training_loop`.

As EDM's `training_loop` serves every network and loss, the loop owns what all of them do around their steps: the
accelerator (CPU, one GPU or many, mixed precision, gradient accumulation), the seed, the learning-rate schedule
(`lr_at`), gradient clipping, the optimizer step, the EMA of the weights, resuming from a checkpoint, the data
iteration, the evaluation and checkpoint cadence, the status line and metrics.jsonl, the checkpoint on Ctrl-C, and
the final evaluation and export with the EMA weights. A `Trainer` supplies what differs: its networks, data and
optimizer (`build`), the loss of one batch (`train_step`), its evaluation and its export.

A run folder holds `config.json`, `checkpoints/step_*/` (accelerate state: models, optimizers, EMA, RNG, then
`trainer_state.json` with the step), `metrics.jsonl` and `export/` (what `Trainer.export` writes).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers.training_utils import EMAModel

from rest.training.common import TrainConfig, TrainingRun, lr_at, read_trainer_state, resolve_resume


@dataclass
class StepOutput:
    """What `Trainer.train_step` returns for one batch."""

    loss: torch.Tensor  # the scalar the loop backpropagates
    values: dict[str, float]  # scalars for the status line and metrics.jsonl, in the order they are shown
    samples: int  # samples of this batch on this process (for samples/s)
    # More updates in the same accumulation step, after the model's optimizer step (the VAE's discriminator);
    # returns more values for the log
    after_update: Callable[[], dict[str, float]] | None = None


class Trainer(ABC):
    """What one network's training supplies to `training_loop`.

    `build` sets `model` and `optimizer`, already through `accelerator.prepare`; the loop keeps an EMA of the
    unwrapped model's parameters (if `ema`), schedules the rate of every optimizer group (times its "lr_scale", if
    the group has one), clips the gradients of `clipped_parameters()` and steps the optimizer.
    """

    name: str  # progress bar label
    postfix_keys: tuple[str, ...] = ()  # status values also shown on the progress bar, as integers
    ema: bool = True  # keep an EMA of the weights; evaluations and the export use it. False: the trained weights
    log_grad_norm: bool = True  # the gradient norm before clipping as a status value
    evaluate_on: Literal["all", "main"] = "all"  # "all": every process evaluates (sharded models need all ranks)

    model: nn.Module  # the trained module, as accelerate prepared it
    optimizer: torch.optim.Optimizer  # the optimizer of `model`, as accelerate prepared it

    @abstractmethod
    def build(self, accelerator: Accelerator) -> None:
        """Networks, data, optimizer and fixed evaluation set, after seeding; sets `model` and `optimizer`."""

    @abstractmethod
    def summary(self, accelerator: Accelerator) -> str:
        """One line on the model and data, printed after the resume."""

    @abstractmethod
    def batches(self, step: int) -> Iterator:
        """The training batches from optimizer step `step` on (`epochs` for a data loader)."""

    @abstractmethod
    def train_step(self, batch, step: int) -> StepOutput:
        """The loss of `batch` at optimizer step `step` (0-based), inside the accumulation context."""

    def clipped_parameters(self) -> Iterable[torch.Tensor]:
        """The parameters whose gradient norm is clipped to `grad_clip`."""
        return self.model.parameters()

    @abstractmethod
    def evaluate(self, step: int) -> dict | None:
        """Evaluation after `step` steps, with the EMA weights in eval mode; None: nothing to report."""

    @abstractmethod
    def format_eval(self, step: int, result: dict, final: bool) -> str:
        """The line printed for an evaluation (`final`: the one after the last step)."""

    @abstractmethod
    def export(self, accelerator: Accelerator, folder: Path, step: int) -> None:
        """Write the weights (the EMA weights, swapped in) to `folder`; called on every process."""


def epochs(loader, step: int, set_epoch: Callable[[int], None] | None = None) -> Iterator:
    """The batches of `loader`, epoch after epoch, from optimizer step `step` on; `set_epoch(epoch)` before each
    epoch if given (datasets whose windows and references are drawn per epoch)."""
    epoch = step // len(loader)
    while True:
        if set_epoch is not None:
            set_epoch(epoch)
        yield from loader
        epoch += 1


def training_loop(
    trainer: Trainer,  # what is trained and how (Trainer)
    train: TrainConfig,  # output folder, seed, schedule, accumulation, precision, EMA decay, cadence
    config: dict,  # the whole experiment's config, written to <output_dir>/config.json
    resume: str | None = None,  # None (fresh run), "latest" or a checkpoint folder
) -> Path:
    """Train (or resume) `trainer` for `train.max_steps` optimizer steps (or until `train.max_minutes`) and export;
    returns the export folder."""
    accelerator = Accelerator(gradient_accumulation_steps=train.grad_accum, mixed_precision=train.mixed_precision)
    set_seed(train.seed, device_specific=True)
    out_dir = Path(train.output_dir)
    is_main = accelerator.is_main_process
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    # 1. Networks, data, optimizer (the trainer's), and the EMA of the weights.
    trainer.build(accelerator)
    params = list(accelerator.unwrap_model(trainer.model).parameters())
    ema = None
    if trainer.ema:
        ema = EMAModel(params, decay=train.ema_decay, use_ema_warmup=True, power=2 / 3)
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    @contextmanager
    def ema_weights(eval_mode: bool):
        """The EMA weights in the model (and eval mode) inside the block; the trained ones (and train mode) after."""
        if ema is not None:
            ema.store(params)
            ema.copy_to(params)
        if eval_mode:
            trainer.model.eval()
        try:
            yield
        finally:
            if eval_mode:
                trainer.model.train()
            if ema is not None:
                ema.restore(params)

    # 2. Resume.
    step = 0
    ckpt = resolve_resume(out_dir, resume)
    if ckpt is not None:
        accelerator.load_state(str(ckpt))
        step = read_trainer_state(ckpt)["step"]
        accelerator.print(f"resumed from {ckpt} at step {step}")
    accelerator.print(trainer.summary(accelerator))

    def evaluate(final: bool) -> None:
        if trainer.evaluate_on == "main" and not is_main:
            return
        with ema_weights(eval_mode=True):
            result = trainer.evaluate(step)
        if result is None:
            return
        run.log.write("eval", {"step": step, "wall_s": time.perf_counter() - t_start, **result})
        line = trainer.format_eval(step, result, final)
        if final:
            accelerator.print(line)
        else:
            run.write(line)  # above the progress bar

    # 3. Loop.
    run = TrainingRun(
        accelerator,
        out_dir,
        step=step,
        max_steps=train.max_steps,
        log_every=train.log_every,
        keep_checkpoints=train.keep_checkpoints,
        desc=trainer.name,
        postfix_keys=trainer.postfix_keys,
    )
    data = trainer.batches(step)
    t_start = time.perf_counter()
    trainer.model.train()
    with run:
        while step < train.max_steps:
            lr = lr_at(step, train.lr, train.warmup_steps, train.max_steps)
            for group in trainer.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            batch = next(data)
            with accelerator.accumulate(trainer.model):
                out = trainer.train_step(batch, step)
                accelerator.backward(out.loss)
                if accelerator.sync_gradients and train.grad_clip > 0:
                    norm = accelerator.clip_grad_norm_(trainer.clipped_parameters(), train.grad_clip)
                    if trainer.log_grad_norm:  # FSDP2 returns a DTensor
                        out.values["grad_norm"] = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
                trainer.optimizer.step()
                trainer.optimizer.zero_grad(set_to_none=True)
                if out.after_update is not None:
                    out.values.update(out.after_update())
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(params)
            step += 1
            run.after_step(step, out.values, samples=out.samples * accelerator.num_processes, lr=lr)
            if run.due(step, train.eval_every):
                evaluate(final=False)
            if run.due(step, train.checkpoint_every):
                run.save_checkpoint(step)
            if train.max_minutes is not None and time.perf_counter() - t_start > 60 * train.max_minutes:
                run.write(f"time budget of {train.max_minutes:g} min reached at step {step} of {train.max_steps}")
                break

    # 4. Final checkpoint, evaluation and export (of the EMA weights).
    run.save_checkpoint(step)
    evaluate(final=True)
    export = out_dir / "export"
    with ema_weights(eval_mode=False):
        trainer.export(accelerator, export, step)
    accelerator.wait_for_everyone()
    return export


__all__ = ["StepOutput", "Trainer", "epochs", "training_loop"]
