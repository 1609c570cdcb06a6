"""Training the per-group NCP classifiers of a frozen VAE: their losses on a
batch, the (data-parallel) training loop that keeps each group's best held-out
weights, and the held-out evaluation."""
import copy
import math
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..runtime import (
    SINGLE_PROCESS,
    DistributedContext,
    all_reduce_sum,
    average_gradients,
    broadcast_module,
)

CHANCE_ACCURACY = 0.55  # a group whose held-out accuracy stays below this is reported as at chance

# group_losses(x) -> (BCE per group [G], accuracy per group [G]) on one image batch
GroupLosses = Callable[[torch.Tensor], tuple]


def split_images(num_images: int, validation_fraction: float = 0.1, minimum: int = 1, shuffle: bool = False,
                 generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fit images, held-out images): CPU index tensors that split range(num_images) into
    whole images, max(minimum, int(validation_fraction * num_images)) of them (at most all)
    held out for early stopping, so that no image's posterior samples land on both sides.
    shuffle False: the last images are held out (stage 2's split of the training split);
    True: a random choice, drawn from generator (on its device; None: the global RNG)."""
    n_val = min(num_images, max(minimum, int(validation_fraction * num_images)))
    if not shuffle:
        return torch.arange(num_images - n_val), torch.arange(num_images - n_val, num_images)
    order = torch.randperm(num_images, generator=generator,
                           device=generator.device if generator is not None else "cpu").cpu()
    return order[n_val:], order[:n_val]


def group_losses(vae, log_ratio, x: torch.Tensor):
    """BCE and accuracy of every group's classifier on one batch (the VAE frozen):
    positives z_k ~ q(z_k | z_<k, x), negatives z_k ~ p(z_k | z_<k) given the
    same posterior z_<k. log_ratio(k, z, context) is group k's logit."""
    with torch.no_grad():
        _, groups = vae(x, decode=False)
    losses, accuracies = [], []
    for k, group in enumerate(groups):
        with torch.no_grad():
            negative = group.prior.sample()
        logits = torch.cat([log_ratio(k, group.z, group.context), log_ratio(k, negative, group.context)])
        labels = torch.cat([torch.ones(x.shape[0]), torch.zeros(x.shape[0])]).to(logits)
        losses.append(F.binary_cross_entropy_with_logits(logits, labels))
        accuracies.append(((logits > 0).float() == labels).float().mean())
    return torch.stack(losses), torch.stack(accuracies)


def fit_classifiers(classifiers: nn.ModuleList, losses_of: GroupLosses, read_train, num_train: int, read_val,
                    num_val: int, epochs: int = 10, batch_size: int = 64, lr: float = 1e-3,
                    weight_decay: float = 0.0, generator: Optional[torch.Generator] = None,
                    progress: bool = True, writer=None,
                    distributed: DistributedContext = SINGLE_PROCESS, patience: Optional[int] = None,
                    keep_partial_batch: bool = False, description: str = "NCP epoch") -> dict:
    """Trains every classifier in parallel (Adam on the sum of the groups' BCEs): the
    one fitting loop of every NCP prior (a flat prior is one group).
    read_train(indices) / read_val(indices) return batches (of images, or whatever
    losses_of takes), indices on the CPU. Each group keeps the weights of its own
    best held-out loss (groups overfit at different epochs); patience: stop once no
    group has improved for that many epochs (None: run every epoch). Returns
    per-group curves and the groups that stayed at chance. The classifiers end in
    eval mode. The order is drawn from `generator` (on its device).

    keep_partial_batch: train on the last, smaller batch of an epoch too (one
    process only: under torchrun every rank must take the same number of steps).

    Data parallel under torchrun (`distributed`): batch_size is per process,
    every rank takes its slice of one shared order (the same `generator`
    seed everywhere), gradients and held-out scores are averaged over ranks,
    so every rank keeps the same weights and picks the same best epochs."""
    num_groups = len(classifiers)
    world, rank = distributed.world_size, distributed.rank
    if keep_partial_batch and world > 1:
        raise ValueError("keep_partial_batch needs one process: ranks would take different numbers of steps")
    broadcast_module(classifiers, distributed)
    optimizer = torch.optim.Adam(classifiers.parameters(), lr=lr, weight_decay=weight_decay)
    history = {"train_loss": [], "val_loss": [], "val_accuracy": []}
    best = [math.inf] * num_groups
    best_state = [copy.deepcopy(c.state_dict()) for c in classifiers]
    best_epoch = [0] * num_groups
    step = 0
    for epoch in range(epochs):
        classifiers.train()
        order = torch.randperm(num_train, generator=generator,
                               device=generator.device if generator is not None else "cpu").cpu()
        step_images = batch_size * world
        last_start = num_train - 1 if keep_partial_batch else num_train - step_images
        bar = tqdm(range(0, last_start + 1, step_images), desc=f"{description} {epoch + 1}/{epochs}",
                   disable=not (progress and distributed.is_main), leave=False)
        totals = torch.zeros(num_groups)
        for start in bar:
            mine = start + rank * batch_size
            losses, _ = losses_of(read_train(order[mine:mine + batch_size]))
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            average_gradients(classifiers, distributed)
            optimizer.step()
            totals += losses.detach().cpu()
            step += 1
            bar.set_postfix(loss=f"{float(losses.detach().mean()):.3f}")
            if writer is not None and step % 20 == 0:
                for k, value in enumerate(losses.detach().tolist()):
                    writer.add_scalar(f"ncp_train_loss/group_{k:02d}", value, step)
        val_loss, val_acc = evaluate_classifiers(classifiers, losses_of, read_val, num_val, batch_size, distributed)
        totals = all_reduce_sum(totals, distributed) / world
        history["train_loss"].append((totals / max(1, len(bar))).tolist())
        history["val_loss"].append(val_loss)
        history["val_accuracy"].append(val_acc)
        if writer is not None:
            for k in range(num_groups):
                writer.add_scalar(f"ncp_val_accuracy/group_{k:02d}", val_acc[k], step)
                writer.add_scalar(f"ncp_val_loss/group_{k:02d}", val_loss[k], step)
        for k in range(num_groups):
            if val_loss[k] < best[k]:
                best[k], best_epoch[k] = val_loss[k], epoch
                best_state[k] = copy.deepcopy(classifiers[k].state_dict())
        if patience is not None and epoch - max(best_epoch) >= patience:
            break
    for classifier, state in zip(classifiers, best_state):
        classifier.load_state_dict(state)
    classifiers.eval()
    final_acc = [history["val_accuracy"][e][k] for k, e in enumerate(best_epoch)]
    history["best_epoch"] = best_epoch
    history["best_val_loss"] = best
    history["best_val_accuracy"] = final_acc
    history["groups_at_chance"] = [k for k, a in enumerate(final_acc) if a < CHANCE_ACCURACY]
    history["epochs_run"] = len(history["val_loss"])
    return history


@torch.no_grad()
def evaluate_classifiers(classifiers: nn.ModuleList, losses_of: GroupLosses, read, num_images: int,
                         batch_size: int = 64, distributed: DistributedContext = SINGLE_PROCESS):
    """Per-group held-out BCE and accuracy, image-weighted means (batches
    shared out among the ranks under torchrun)."""
    classifiers.eval()
    sums = torch.zeros(3, len(classifiers), dtype=torch.float64)  # loss, accuracy, images
    starts = range(0, num_images, batch_size)
    for start in starts[distributed.rank::distributed.world_size]:
        indices = torch.arange(start, min(num_images, start + batch_size))
        losses, accuracies = losses_of(read(indices))
        sums[0] += losses.cpu().double() * len(indices)
        sums[1] += accuracies.cpu().double() * len(indices)
        sums[2] += len(indices)
    sums = all_reduce_sum(sums, distributed)
    return (sums[0] / sums[2]).tolist(), (sums[1] / sums[2]).tolist()
