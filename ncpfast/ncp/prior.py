"""NCPPrior: a noise contrastive prior for any VAE's flat latents.

    p_NCP(z) = r(z) p(z) / Z,   log r(z) = the logit of a classifier trained to
    tell posterior samples (label 1) from base-prior samples (label 0),
    Z = E_p[r(z)] estimated by Monte Carlo.
"""
import copy
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from .. import _extension
from ..ops import mlp_log_ratio, mlp_parameters, sir_resample
from .base_adapter import DistributionBase
from .base_priors import GaussianMixture, StandardNormal
from .base_state import base_from_state, base_to_state
from .classifiers import default_classifier
from .estimators import log_mean_exp_with_stderr
from .fitting import split_images
from .sampling import check_sampling_arguments, langevin


class NCPPrior(nn.Module):
    """A reweighted prior r(z) p(z) / Z over flat latents z of shape [..., dim].

    base_prior: a torch.distributions.Distribution over vectors (batch_shape (),
        event_shape (dim,)), e.g. Independent(Normal(loc, scale), 1),
        MultivariateNormal or MixtureSameFamily, sampled from the generators
        this class takes (see base_adapter for which families exactly); or
        StandardNormal(dim), GaussianMixture.fit(posterior_samples), or anything
        with sample(shape, generator), log_prob(z) and dim.
        Devices: samples live on the base's device and the classifier must be
        there too. `.to(device)` moves the package's bases and the Gaussian
        torch.distributions families with the classifier; another family's
        distribution stays where it was built (see base_adapter).
    classifier: maps [N, dim] to [N, 1] logits (default: an MLP).
    kernels: "auto" evaluates log r with the fused op ncpfast::mlp_log_ratio
        whenever no gradient is needed and the classifier is an MLP of the
        default shape (SIR weights, log Z, log_prob, evaluation); "torch"
        always runs the classifier module. Gradients (fit, Langevin) always
        run the module.
    """
    kernels = "auto"

    def __init__(self, base_prior, classifier: Optional[nn.Module] = None, dim: Optional[int] = None,
                 hidden: int = 256, layers: int = 2):
        super().__init__()
        if isinstance(base_prior, torch.distributions.Distribution):
            base_prior = DistributionBase(base_prior, "base_prior")
        if not (callable(getattr(base_prior, "sample", None)) and callable(getattr(base_prior, "log_prob", None))):
            raise TypeError(f"base_prior must be a torch.distributions.Distribution over vectors or have "
                            f"sample(shape, generator) and log_prob(z); got {type(base_prior).__name__}")
        base_dim = getattr(base_prior, "dim", None)
        if base_dim is None and dim is None:
            raise ValueError(f"base_prior ({type(base_prior).__name__}) has no dim attribute: pass dim=")
        if base_dim is not None and dim is not None and dim != base_dim:
            raise ValueError(f"dim={dim} disagrees with base_prior, whose samples have {base_dim} dimensions")
        self.dim = int(dim if dim is not None else base_dim)
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        self.base = base_prior
        self.classifier = classifier if classifier is not None else default_classifier(self.dim, hidden, layers)
        self.hidden, self.layers = hidden, layers
        self._log_partition = None

    # --- the density ratio --------------------------------------------------------------

    def log_ratio(self, z: torch.Tensor) -> torch.Tensor:
        """log r(z): the classifier's logit, shape z.shape[:-1]."""
        flat = z.reshape(-1, self.dim)
        parameters = self._fused_parameters(z)
        if parameters is not None:
            return mlp_log_ratio(flat[None], *parameters)[0].view(z.shape[:-1])
        return self.classifier(flat).view(z.shape[:-1])

    def _fused_parameters(self, z: torch.Tensor):
        """The classifier's layers for mlp_log_ratio, or None where the module must run:
        kernels="torch", a gradient is needed, a dtype or device the op lacks, or
        a classifier that is not the default MLP shape."""
        if self.kernels == "torch" or z.dtype != torch.float32 or z.numel() == 0:
            return None
        if torch.is_grad_enabled() and (z.requires_grad or any(p.requires_grad for p in self.classifier.parameters())):
            return None
        if not _extension.has_backend(z.device):
            return None
        return mlp_parameters(self.classifier)

    def fit(self, posterior_samples: torch.Tensor, epochs: int = 50, batch_size: int = 256, lr: float = 1e-3,
            weight_decay: float = 1e-5, validation_fraction: float = 0.1, patience: int = 5,
            generator: Optional[torch.Generator] = None, progress: bool = True, draws: int = 1) -> dict:
        """Trains the classifier: posterior samples (1) against fresh base samples (0),
        BCE on logits, early stopping on a held-out split. Returns the history.

        draws: posterior samples per image, laid out as flat.posterior_samples does
        ([draws * N, dim], row d * N + i the d-th draw of image i). The held-out split
        takes whole images (fitting.split_images: a random validation_fraction of the N
        images with all their draws), so no image is seen on both sides of early stopping."""
        data = posterior_samples.detach().reshape(-1, self.dim)
        if data.shape[0] < 10:
            raise ValueError(f"NCPPrior.fit needs at least 10 posterior samples, got {data.shape[0]}")
        if draws < 1 or data.shape[0] % draws:
            raise ValueError(f"NCPPrior.fit: {data.shape[0]} posterior samples are not {draws} draws per image")
        num_images = data.shape[0] // draws
        train_images, val_images = split_images(num_images, validation_fraction, shuffle=True, generator=generator)
        if train_images.numel() == 0:
            raise ValueError(f"NCPPrior.fit: {num_images} images leave none to train on after holding out "
                             f"{val_images.numel()}")

        def rows(images):  # every draw of these images
            return (torch.arange(draws)[:, None] * num_images + images).flatten().to(data.device)

        val_pos, train_pos = data[rows(val_images)], data[rows(train_images)]
        val_neg = self.base.sample(val_pos.shape[0], generator=generator).to(data)
        optimizer = torch.optim.Adam(self.classifier.parameters(), lr=lr, weight_decay=weight_decay)
        history = {"train_loss": [], "val_loss": [], "val_accuracy": []}
        best, best_state, waited = math.inf, copy.deepcopy(self.classifier.state_dict()), 0
        bar = tqdm(range(epochs), desc="NCP classifier", disable=not progress, leave=False)
        for _ in bar:
            self.classifier.train()
            perm = torch.randperm(train_pos.shape[0], generator=generator,
                                  device=generator.device if generator is not None else "cpu").to(data.device)
            total, count = 0.0, 0
            for start in range(0, train_pos.shape[0], batch_size):
                pos = train_pos[perm[start:start + batch_size]]
                neg = self.base.sample(pos.shape[0], generator=generator).to(pos)
                loss = self._bce(pos, neg)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total, count = total + loss.item() * pos.shape[0], count + pos.shape[0]
            val_loss, val_acc = self._evaluate(val_pos, val_neg)
            history["train_loss"].append(total / count)
            history["val_loss"].append(val_loss)
            history["val_accuracy"].append(val_acc)
            bar.set_postfix(val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.3f}")
            if val_loss < best - 1e-4:
                best, best_state, waited = val_loss, copy.deepcopy(self.classifier.state_dict()), 0
            else:
                waited += 1
                if waited >= patience:
                    break
        self.classifier.load_state_dict(best_state)
        self.classifier.eval()
        self._log_partition = None  # a refit changes Z
        history["best_val_loss"] = best
        history["epochs_run"] = len(history["val_loss"])
        return history

    def _bce(self, pos, neg):
        logits = torch.cat([self.log_ratio(pos), self.log_ratio(neg)])
        labels = torch.cat([torch.ones(pos.shape[0]), torch.zeros(neg.shape[0])]).to(logits)
        return F.binary_cross_entropy_with_logits(logits, labels)

    @torch.no_grad()
    def _evaluate(self, pos, neg):
        self.classifier.eval()
        loss = float(self._bce(pos, neg))
        correct = int((self.log_ratio(pos) > 0).sum()) + int((self.log_ratio(neg) <= 0).sum())
        return loss, correct / (pos.shape[0] + neg.shape[0])

    @torch.no_grad()
    def log_partition(self, num_samples: Optional[int] = None, batch_size: int = 10_000,
                      generator: Optional[torch.Generator] = None, refresh: bool = False):
        """(log Z, its standard error): log Z ~ logsumexp_i log r(z_i) - log N, z_i ~ p.
        Cached until the next fit (or refresh=True); without num_samples the cached
        estimate is returned whatever its sample count."""
        cached = self._log_partition
        if cached is not None and not refresh and num_samples in (None, cached[2]):
            return cached[:2]
        num_samples = num_samples or 100_000
        values = [self.log_ratio(self.base.sample(min(batch_size, num_samples - start), generator=generator))
                  for start in range(0, num_samples, batch_size)]
        log_z, stderr = log_mean_exp_with_stderr(torch.cat(values))
        self._log_partition = (log_z, stderr, num_samples)
        return log_z, stderr

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p_NCP(z) = log r(z) + log p(z) - log Z."""
        return self.log_ratio(z) + self.base.log_prob(z) - self.log_partition()[0]

    # --- sampling -------------------------------------------------------------------------

    def energy(self, z: torch.Tensor) -> torch.Tensor:
        """E(z) = -log r(z) - log p(z) (Langevin's target is exp(-E) / Z)."""
        return -(self.log_ratio(z) + self.base.log_prob(z))

    def sample(self, n: int, method: str = "sir", num_proposals: int = 100, steps: int = 100,
               step_size: float = 1e-2, generator: Optional[torch.Generator] = None,
               max_proposal_bytes: int = 256 * 2**20) -> torch.Tensor:
        """n samples [n, dim] from p_NCP: "sir" (num_proposals per sample, the fused SIR
        op), "langevin" (steps of size step_size on E), or "base" (p itself)."""
        check_sampling_arguments(method, n, num_proposals, steps, step_size, max_proposal_bytes)
        if method == "base":
            return self.base.sample(n, generator=generator)
        if method == "langevin":
            return langevin(self.base.sample(n, generator=generator), self.energy, steps, step_size, generator)
        rows = max(1, max_proposal_bytes // (num_proposals * self.dim * 4))  # bounded memory
        chunks = []
        with torch.no_grad():
            for start in range(0, n, rows):
                count = min(rows, n - start)
                proposals = self.base.sample((count, num_proposals), generator=generator)
                chosen, _ = sir_resample(self.log_ratio(proposals), proposals, 1, generator=generator)
                chunks.append(chosen[:, 0])
        return torch.cat(chunks)

    # --- persistence ----------------------------------------------------------------------

    def to_checkpoint(self) -> dict:
        """Plain data (loads with weights_only=True). TypeError for a base that cannot be
        rebuilt from tensors (see base_state.base_to_state) rather than saving another one,
        and for a classifier that is not the default MLP that from_checkpoint builds."""
        if repr(self.classifier) != repr(default_classifier(self.dim, self.hidden, self.layers)):
            raise TypeError(f"NCPPrior cannot save a custom classifier ({type(self.classifier).__name__}): "
                            f"from_checkpoint rebuilds the default MLP (hidden={self.hidden}, layers={self.layers}). "
                            f"Save prior.state_dict() instead and load it into an NCPPrior built the same way.")
        return {"format": 2, "dim": self.dim, "hidden": self.hidden, "layers": self.layers,
                "base": base_to_state(self.base), "state_dict": self.state_dict(),
                "log_partition": self._log_partition}

    @classmethod
    def from_checkpoint(cls, state: dict) -> "NCPPrior":
        sd = state["state_dict"]
        if state.get("format", 1) >= 2:
            base = base_from_state(state["base"])
        elif state["base"] == "gmm":  # format 1: a kind name, the tensors in the state_dict
            base = GaussianMixture(sd["base.log_weights"].exp(), sd["base.means"], sd["base.log_stds"])
        else:
            base = StandardNormal(state["dim"])
        prior = cls(base, dim=state["dim"], hidden=state["hidden"], layers=state["layers"])
        prior.load_state_dict(sd)
        prior._log_partition = state.get("log_partition")
        return prior.eval()

    def save(self, path: str) -> None:
        from ..checkpoint import save_atomic
        save_atomic(self.to_checkpoint(), path)

    @classmethod
    def load(cls, path: str) -> "NCPPrior":
        from ..checkpoint import load
        return cls.from_checkpoint(load(path))
