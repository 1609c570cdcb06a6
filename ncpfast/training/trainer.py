"""Stage 1: the VAE training loop.

Exactly resumable: the data order is a function of (seed, epoch) (the batches are
read ahead by ncpfast.data.BatchLoader's workers in that order), the schedules
are functions of the step, and a checkpoint holds the model, optimiser,
regulariser buffers, EMA, gradient scaler and every rank's RNG states, written
atomically at step boundaries. Under torchrun it trains data parallel; only
rank 0 writes files.
"""
import copy
import dataclasses
import math
import os
import signal
import sys
import time
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from .. import checkpoint
from ..config import Config, save_config
from ..data import AUTO, BatchLoader, TrainingOrder, auto_workers, load_dataset, read_batch, to_device
from ..images import save_grid
from ..models import build_model
from ..models.base import iw_images_per_pass
from ..nn.batch_norm import set_synchronized
from ..run_dir import RunDir
from ..runtime import (
    all_reduce_sum,
    broadcast_buffers,
    init_distributed,
    parameters_identical,
    pick_device,
    replicas_identical,
)
from .regularizers import SpectralRegularizer, batchnorm_max_gamma
from .schedules import kl_coefficient, learning_rate, regularizer_weight


class TrainingDiverged(RuntimeError):
    """The loss or gradients stayed non-finite for too many steps in a row."""


class _Objective(nn.Module):
    """The part of a step that DDP wraps: per-image reconstruction log-likelihood
    [B] and per-group KL [G, B]."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        output, groups = self.model(x)
        recon = self.model.reconstruction_log_prob(output, x)
        return recon, torch.stack([g.kl() for g in groups])


def balanced_kl(kl_all: torch.Tensor, alpha: Optional[torch.Tensor],
                batch_mean: Optional[torch.Tensor] = None) -> torch.Tensor:
    """NVAE's KL balancing: each group's weight proportional to its batch-mean KL
    divided by its scale factor alpha, normalised to mean 1, detached.
    batch_mean: the groups' mean |KL| over the global batch when the batch is
    split over processes (default: over kl_all's own images)."""
    if alpha is None or kl_all.shape[0] == 1:
        return kl_all.sum(0)
    if batch_mean is None:
        batch_mean = kl_all.detach().abs().mean(1)
    per_group = batch_mean.detach() + 0.01
    coeff = per_group / alpha.to(per_group) * per_group.sum()
    coeff = coeff / coeff.mean()
    return (kl_all * coeff[:, None]).sum(0)


class Trainer:
    def __init__(self, config: Config, run_dir: str, resume: bool = False, final_nll: bool = True):
        self.config, self.run_dir, self.final_nll = config, run_dir, final_nll
        self.run = RunDir(run_dir)
        self.ctx = init_distributed(config.run.device)
        self.device = pick_device(config.run.device, self.ctx.local_rank)
        self.amp_dtype = self._amp_dtype()
        self.train_set, self.test_set = load_dataset(config.data.dataset, config.data.data_dir)

        torch.manual_seed(config.run.seed)  # identical initial weights on every rank
        self.model = build_model(config.model).to(self.device)
        set_synchronized(self.model, self.ctx.enabled and config.stage1.sync_batch_norm)
        self.spectral = (SpectralRegularizer(self.model).to(self.device)
                         if config.stage1.spectral_reg > 0 and any(True for _ in self._wn_convs()) else None)
        self.optimizer = torch.optim.Adamax(self.model.parameters(), lr=config.stage1.lr, eps=config.stage1.adamax_eps,
                                            weight_decay=config.stage1.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if config.stage1.ema_decay > 0 else None
        objective = _Objective(self.model)
        if self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            objective = nn.parallel.DistributedDataParallel(objective, device_ids=ids)
        self.objective = objective
        alpha = getattr(self.model, "kl_balance_scale", None)
        self.kl_alpha = alpha().to(self.device) if (alpha and config.stage1.kl_balance) else None

        global_batch = config.stage1.batch_size * self.ctx.world_size
        self.steps_per_epoch = len(self.train_set) // global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"the training split has {len(self.train_set)} images, fewer than one global batch "
                             f"({config.stage1.batch_size} x {self.ctx.world_size} processes); lower --batch-size")
        self.total_steps = config.stage1.epochs * self.steps_per_epoch
        self.order = TrainingOrder(len(self.train_set), config.run.seed, config.stage1.batch_size, self.steps_per_epoch,
                                   self.ctx.rank, self.ctx.world_size)
        self.loader = self._batch_loader()
        self.step, self.nan_streak, self.nan_skips = 0, 0, 0
        self.history, self.train_seconds, self.images_seen = [], 0.0, 0
        # Every rank has its own stream of training noise (binarisation, z).
        torch.manual_seed(config.run.seed + 1 + 1000 * self.ctx.rank)
        if resume:
            self._load(self.run.latest_checkpoint)
        self.writer = None
        if self.ctx.is_main:
            os.makedirs(run_dir, exist_ok=True)
            save_config(config, self.run.config_path)
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(self.run.tensorboard_dir, purge_step=self.step or None)
        self._stop_signal = None

    # --- set-up helpers -------------------------------------------------------------

    def _wn_convs(self):
        from ..nn.cells import WNConv2d
        return (m for m in self.model.modules() if isinstance(m, WNConv2d))

    def _amp_dtype(self):
        amp = self.config.stage1.amp
        if amp == "auto":
            return torch.bfloat16 if self.device.type == "cuda" else None
        if amp != "none" and self.device.type != "cuda":
            raise ValueError(f"--amp {amp} needs a CUDA device; use --amp none on {self.device}")
        return {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    def _batch_loader(self) -> BatchLoader:
        workers = self.config.data.num_workers
        if workers == AUTO:
            per_node = int(os.environ.get("LOCAL_WORLD_SIZE", self.ctx.world_size))
            workers = auto_workers(self.train_set, per_node)
        if workers < 0:
            raise ValueError(f"--num-workers must be >= 0, or {AUTO} for auto; got {workers}")
        # Pinned batches let the copy to the GPU run asynchronously (non_blocking in to_device).
        return BatchLoader(self.train_set, self.order, workers, pin_memory=self.device.type == "cuda")

    def _epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's image indices for an epoch: a permutation keyed by (seed, epoch)."""
        return self.order.epoch(epoch)

    def _read(self, split, indices: torch.Tensor, generator=None) -> torch.Tensor:
        return read_batch(split, indices, self.model.likelihood, self.device, generator)

    # --- one step ---------------------------------------------------------------------

    def _train_step(self, x: torch.Tensor) -> dict:
        c = self.config.stage1
        lr = learning_rate(self.step, self.total_steps, int(c.warmup_epochs * self.steps_per_epoch), c.lr, c.lr_min)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        kl_coeff = kl_coefficient(self.step, self.total_steps, c.kl_anneal_portion, c.kl_const_portion,
                                  c.kl_const_coeff)
        autocast_dtype = self.amp_dtype or torch.float32
        with torch.autocast(self.device.type, dtype=autocast_dtype, enabled=self.amp_dtype is not None):
            recon, kl_all = self.objective(x)
        recon, kl_all = recon.float(), kl_all.float()
        kl = balanced_kl(kl_all, self.kl_alpha, self._global_batch_mean(kl_all)) if kl_coeff < 1 else kl_all.sum(0)
        loss = (-recon + kl_coeff * kl).mean()
        reg_weight = regularizer_weight(kl_coeff, c.spectral_reg_init, c.spectral_reg)
        if reg_weight > 0 and self.spectral is not None:
            loss = loss + reg_weight * (self.spectral() + batchnorm_max_gamma(self.model))

        self.optimizer.zero_grad(set_to_none=True)
        (self.scaler.scale(loss) if self.scaler else loss).backward()
        if self.scaler:
            self.scaler.unscale_(self.optimizer)
        max_norm = c.grad_clip if c.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        loss_value = float(loss.detach())
        finite = math.isfinite(loss_value) and math.isfinite(grad_norm)
        if self.scaler:
            self.scaler.step(self.optimizer)  # skips the update itself on inf/NaN gradients
            self.scaler.update()
        elif finite:
            self.optimizer.step()
        if finite:
            self.nan_streak = 0
            if self.ema is not None:
                self._update_ema()
        else:
            self._record_non_finite(loss_value, grad_norm)
        # What is logged is the global batch's mean, as a single process logs it:
        # every rank's share averaged (equal shares per rank).
        logged = torch.cat([torch.stack([loss.detach().float(), (-recon + kl_all.sum(0)).mean().detach(),
                                         kl_all.detach().sum(0).mean()]), kl_all.detach().mean(1)]).cpu()
        logged = all_reduce_sum(logged, self.ctx) / self.ctx.world_size
        return dict(loss=float(logged[0]), nelbo=float(logged[1]), kl=float(logged[2]), lr=lr,
                    kl_coeff=kl_coeff, grad_norm=grad_norm, kl_per_group=logged[3:])

    def _global_batch_mean(self, kl_all: torch.Tensor) -> Optional[torch.Tensor]:
        """Each group's mean |KL| over every process's images (None in one process):
        KL balancing weighs the groups as one process with the whole batch would."""
        if not self.ctx.enabled or self.kl_alpha is None:
            return None
        sums = all_reduce_sum(kl_all.detach().abs().sum(1), self.ctx)
        return sums / (kl_all.shape[1] * self.ctx.world_size)

    def _record_non_finite(self, loss: float, grad_norm: float) -> None:
        self.nan_streak += 1
        self.nan_skips += 1
        message = (f"step {self.step}: non-finite loss ({loss}) or gradient norm ({grad_norm}); "
                   f"update skipped ({self.nan_streak} in a row)")
        if self.ctx.is_main:
            tqdm.write(message, file=sys.stderr)
        if self.nan_streak > self.config.stage1.max_nan_skips:
            raise TrainingDiverged(
                f"training diverged: {self.nan_streak} non-finite steps in a row at step {self.step}. "
                f"Lower --lr (now {self.config.stage1.lr}; NVAE uses 5e-3 or 1e-3 when NaNs appear), "
                f"keep --grad-clip on, or raise --batch-size. The last good checkpoint is in "
                f"{self.run.checkpoints_dir}.")

    @torch.no_grad()
    def _update_ema(self):
        decay = self.config.stage1.ema_decay
        for ema_p, p in zip(self.ema.parameters(), self.model.parameters()):
            ema_p.lerp_(p.detach(), 1 - decay)
        for ema_b, b in zip(self.ema.buffers(), self.model.buffers()):
            ema_b.copy_(b)

    # --- the loop -----------------------------------------------------------------------

    def train(self) -> dict:
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in previous:
            signal.signal(s, self._on_signal)
        try:
            return self._train_loop()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self.writer:
                self.writer.close()

    def _on_signal(self, signum, frame):
        self._stop_signal = signum

    def _train_loop(self) -> dict:
        c = self.config
        stop_at = min(self.total_steps, c.stage1.max_steps) if c.stage1.max_steps > 0 else self.total_steps
        # One stream of batches from here to stop_at, read ahead across epoch ends.
        batches = self.loader.batches(self.step, stop_at)
        try:
            status = self._run_steps(batches, stop_at)
        finally:
            batches.close()  # stops the loader's workers before the final evaluation
        return self._finish(status)

    def _run_steps(self, batches, stop_at: int) -> str:
        """Trains until step stop_at; "complete" when the last epoch ended, else "partial"."""
        c = self.config
        status = "complete"
        while self.step < stop_at:
            epoch, first = divmod(self.step, self.steps_per_epoch)
            last = min(self.steps_per_epoch, first + stop_at - self.step)
            bar = tqdm(range(first, last), desc=f"epoch {epoch + 1}/{c.stage1.epochs}", initial=first,
                       total=self.steps_per_epoch, disable=not (self.ctx.is_main and c.logging.progress), leave=False)
            self.model.train()
            epoch_losses = []
            for b in bar:
                start = time.perf_counter()
                x = to_device(next(batches), self.model.likelihood, self.device)
                stats = self._train_step(x)
                self.step += 1
                elapsed = time.perf_counter() - start
                self.train_seconds += elapsed
                self.images_seen += x.shape[0] * self.ctx.world_size
                epoch_losses.append(stats["nelbo"])
                bar.set_postfix(loss=f"{stats['loss']:.2f}", kl=f"{stats['kl']:.1f}",
                                img_s=f"{x.shape[0] * self.ctx.world_size / elapsed:.0f}")
                self._log_step(stats, x.shape[0] * self.ctx.world_size / elapsed)
                if self._stop_signal is not None:
                    self._save(self.run.latest_checkpoint)
                    raise SystemExit(f"stopped by signal {self._stop_signal} at step {self.step}; "
                                     f"continue with: python -m ncpfast.train --resume {self.run_dir}")
                if self.step % c.logging.checkpoint_every == 0 and b + 1 < self.steps_per_epoch:
                    self._save(self.run.latest_checkpoint)
            bar.close()
            if self.step % self.steps_per_epoch == 0:
                self._end_epoch(epoch, epoch_losses)
            else:
                status = "partial"
                self._save(self.run.latest_checkpoint)
        return status

    def _log_step(self, stats: dict, images_per_second: float) -> None:
        if not self.writer or self.step % self.config.logging.log_every:
            return
        for key in ("loss", "nelbo", "kl", "lr", "kl_coeff", "grad_norm"):
            self.writer.add_scalar(f"train/{key}", stats[key], self.step)
        self.writer.add_scalar("train/images_per_second", images_per_second, self.step)
        for k, value in enumerate(stats["kl_per_group"].tolist()):
            self.writer.add_scalar(f"kl_per_group/{k:02d}", value, self.step)

    def _end_epoch(self, epoch: int, losses) -> None:
        c = self.config
        broadcast_buffers(self.model, self.ctx)  # evaluate and checkpoint rank 0's statistics everywhere
        test_nelbo = self._test_nelbo()
        record = dict(epoch=epoch + 1, step=self.step, train_nelbo=sum(losses) / max(1, len(losses)),
                      test_nelbo=test_nelbo, train_seconds=self.train_seconds)
        self.history.append(record)
        if self.ctx.is_main:
            tqdm.write(f"epoch {epoch + 1}/{c.stage1.epochs}: train -ELBO {record['train_nelbo']:.2f}, "
                       f"test -ELBO {test_nelbo:.2f} nats, step {self.step}")
            self.writer.add_scalar("test/nelbo", test_nelbo, self.step)
            if (epoch + 1) % c.logging.sample_every == 0 or epoch + 1 == c.stage1.epochs:
                self._save_samples(f"epoch_{epoch + 1:04d}.png")
        self._save(self.run.latest_checkpoint)

    def _forked_rng(self):
        """Evaluation and sampling draw from a fork, so training's RNG stream (and
        so an exact resume) does not depend on them."""
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    def _eval_model(self):
        return self.ema if self.ema is not None else self.model

    @torch.no_grad()
    def _test_nelbo(self, max_images: int = 1000) -> float:
        """Single-sample -ELBO on the test split (rank 0 computes, all ranks receive)."""
        value = torch.zeros((), device=self.device)
        if self.ctx.is_main:
            model = self._eval_model().eval()
            with self._forked_rng():
                g = torch.Generator(self.device).manual_seed(self.config.run.seed + 7)
                torch.manual_seed(self.config.run.seed + 7)
                n = min(max_images, len(self.test_set))
                total = 0.0
                for start in range(0, n, 250):
                    x = self._read(self.test_set, torch.arange(start, min(n, start + 250)), g)
                    output, groups = model(x)
                    nelbo = -model.reconstruction_log_prob(output, x) + sum(gr.kl() for gr in groups)
                    total += float(nelbo.sum())
                value.fill_(total / n)
            self.model.train()
        if self.ctx.enabled:
            dist.broadcast(value, 0)
        return float(value)

    @torch.no_grad()
    def _save_samples(self, name: str) -> None:
        model = self._eval_model().eval()
        with self._forked_rng():
            g = torch.Generator(self.device).manual_seed(self.config.run.seed + 11)
            images = model.sample(self.config.logging.num_sample_images, generator=g)
        save_grid(images, self.run.sample_grid_at(name))
        save_grid(images, self.run.sample_grid)
        self.writer.add_images("samples", images.clamp(0, 1).expand(-1, 3, -1, -1), self.step)
        self.model.train()

    # --- evaluation and the end ---------------------------------------------------------

    @torch.no_grad()
    def evaluate_nll(self) -> dict:
        """Importance-weighted NLL on the test split (K = the evaluation's iw_samples)."""
        c, e = self.config, self.config.evaluation
        model = self._eval_model().eval()
        n = len(self.test_set) if e.max_images <= 0 else min(e.max_images, len(self.test_set))
        batch = iw_images_per_pass(e.iw_samples, e.iw_chunk, self.device)
        with self._forked_rng():
            torch.manual_seed(c.run.seed + 13)
            g = torch.Generator(self.device).manual_seed(c.run.seed + 13)
            log_px = []
            for start in tqdm(range(0, n, batch), desc=f"test NLL (K={e.iw_samples})", leave=False,
                              disable=not c.logging.progress):
                x = self._read(self.test_set, torch.arange(start, min(n, start + batch)), g)
                log_px.append(model.importance_weighted_log_likelihood(x, e.iw_samples, e.iw_chunk))
        log_px = torch.cat(log_px)
        nll = float(-log_px.mean())
        std_error = float(log_px.std() / math.sqrt(len(log_px))) if len(log_px) > 1 else 0.0
        return dict(nll_nats=nll, nll_std_error=std_error,
                    bits_per_dim=nll / (math.log(2) * model.num_data_dims()), iw_samples=e.iw_samples,
                    test_images=n)

    def _finish(self, status: str) -> dict:
        same_parameters = parameters_identical(self.model, self.ctx)
        broadcast_buffers(self.model, self.ctx)
        identical = same_parameters and replicas_identical(self.model, self.ctx)
        metrics = dict(status=status, step=self.step, total_steps=self.total_steps,
                       epochs_completed=self.step // self.steps_per_epoch,
                       train_seconds=self.train_seconds,
                       images_per_second=self.images_seen / max(self.train_seconds, 1e-9),
                       non_finite_steps_skipped=self.nan_skips, history=self.history,
                       device=str(self.device), world_size=self.ctx.world_size,
                       replicas_identical=identical,
                       config=dataclasses.asdict(self.config))
        if status == "complete" and self.ctx.is_main and self.final_nll:
            metrics["test"] = self.evaluate_nll()
            metrics["test"]["nelbo_nats"] = self.history[-1]["test_nelbo"] if self.history else None
            self._save_samples("final.png")
        if self.ctx.is_main:
            self.run.write_metrics(metrics)
        return metrics

    # --- checkpoints ----------------------------------------------------------------------

    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _save(self, path: str) -> None:
        rng = [self._rng_state()]
        if self.ctx.enabled:
            rng = [None] * self.ctx.world_size
            dist.all_gather_object(rng, self._rng_state())
        if not self.ctx.is_main:
            return
        state = dict(
            format=1, config=dataclasses.asdict(self.config), step=self.step, model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            spectral=self.spectral.state_dict() if self.spectral is not None else None,
            ema=self.ema.state_dict() if self.ema is not None else None,
            scaler=self.scaler.state_dict() if self.scaler else None, rng=rng, nan_skips=self.nan_skips,
            history=self.history, train_seconds=self.train_seconds,
            images_seen=self.images_seen, world_size=self.ctx.world_size)
        checkpoint.save_atomic(state, path)

    def _load(self, path: str) -> None:
        if self.ctx.is_main:  # temporaries of saves that a kill interrupted; only rank 0 writes here
            checkpoint.remove_stale_temporaries(self.run.latest_checkpoint)
        state = checkpoint.load(path, map_location=self.device)
        if state.get("world_size", 1) != self.ctx.world_size:
            raise ValueError(f"{path} was written by {state['world_size']} processes; resume it with the "
                             f"same number (now {self.ctx.world_size}) for an exact continuation")
        checkpoint.load_weights(self.model, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.spectral is not None and state["spectral"] is not None:
            self.spectral.load_state_dict(state["spectral"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        rng = state["rng"][self.ctx.rank]
        torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        self.step, self.nan_skips = state["step"], state["nan_skips"]
        self.history = state["history"]
        self.train_seconds, self.images_seen = state["train_seconds"], state["images_seen"]
