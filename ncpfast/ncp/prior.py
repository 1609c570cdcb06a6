"""NCPPrior: a noise contrastive prior for any VAE's flat latents.

    p_NCP(z) = r(z) p(z) / Z,   log r(z) = the logit of a classifier trained to
    tell posterior samples (label 1) from base-prior samples (label 0),
    Z = E_p[r(z)] estimated by Monte Carlo.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import _extension
from ..ops import mlp_log_ratio, mlp_parameters, sir_resample
from .base_adapter import DistributionBase
from .base_priors import GaussianMixture, StandardNormal
from .base_state import base_from_state, base_to_state
from .classifiers import default_classifier
from .contract import NoiseContrastivePrior, SamplerConfig
from .estimators import LogPartitionEstimate, aggregate_posterior_log_weights, summarize_log_weights
from .fitting import fit_classifiers, split_images
from .sampling import langevin

# SIR's scoring working set per chunk when the sampler config sets none.
DEFAULT_PROPOSAL_BYTES = 256 * 2**20


class NCPPrior(NoiseContrastivePrior):
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
    num_groups = 1
    default_log_z_batch = 10_000

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

    @property
    def base_kind(self) -> str:
        """"gmm" for a GaussianMixture base, "gaussian" for N(0, I), else the base's type name."""
        if isinstance(self.base, GaussianMixture):
            return "gmm"
        return "gaussian" if isinstance(self.base, StandardNormal) else type(self.base).__name__

    # --- the density ratio --------------------------------------------------------------

    def log_ratio(self, z: torch.Tensor) -> torch.Tensor:
        """log r(z): the classifier's logit, shape z.shape[:-1]."""
        flat = z.reshape(-1, self.dim)
        parameters = self._fused_parameters(z)
        if parameters is not None:
            return mlp_log_ratio(flat[None], *parameters)[0].view(z.shape[:-1])
        return self.classifier(flat).view(z.shape[:-1])

    def group_log_ratio(self, k: int, z: torch.Tensor, context: Optional[torch.Tensor]) -> torch.Tensor:
        if k != 0 or context is not None:
            raise ValueError(f"a flat NCP prior has one group (k=0) and no context; got k={k}"
                             + (" and a context" if context is not None else ""))
        return self.log_ratio(z)

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
        BCE on logits, by fitting.fit_classifiers (a flat prior is one group): the best
        held-out epoch's weights, stopping after `patience` epochs without improvement.
        Returns the history (one value per epoch).

        draws: posterior samples per image, laid out as flat.posterior_samples does
        ([draws * N, dim], row d * N + i the d-th draw of image i). The held-out split
        takes whole images (fitting.split_images: a random validation_fraction of the N
        images with all their draws), so no image is seen on both sides of early stopping;
        its negatives are drawn once, so that every epoch is scored on the same pairs."""
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

        def read_train(indices):
            positives = train_pos[indices.to(data.device)]
            return positives, self.base.sample(positives.shape[0], generator=generator).to(positives)

        def read_val(indices):
            indices = indices.to(data.device)
            return val_pos[indices], val_neg[indices]

        history = fit_classifiers(nn.ModuleList([self.classifier]), self._pair_losses, read_train,
                                  train_pos.shape[0], read_val, val_pos.shape[0], epochs=epochs,
                                  batch_size=batch_size, lr=lr, weight_decay=weight_decay, generator=generator,
                                  progress=progress, patience=patience, keep_partial_batch=True,
                                  description="NCP classifier")
        self.forget_log_partition()  # a refit changes Z
        return {"train_loss": [epoch[0] for epoch in history["train_loss"]],
                "val_loss": [epoch[0] for epoch in history["val_loss"]],
                "val_accuracy": [epoch[0] for epoch in history["val_accuracy"]],
                "best_val_loss": history["best_val_loss"][0], "best_epoch": history["best_epoch"][0],
                "epochs_run": len(history["val_loss"])}

    def _pair_losses(self, pair):
        """([BCE], [accuracy]) of the classifier on (positives, negatives)."""
        positives, negatives = pair
        logits = torch.cat([self.log_ratio(positives), self.log_ratio(negatives)])
        labels = torch.cat([torch.ones(positives.shape[0]), torch.zeros(negatives.shape[0])]).to(logits)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        return loss[None], ((logits > 0).float() == labels).float().mean()[None]

    def _new_log_partition_estimate(self, num_samples: int, proposal: str, posterior, batch_size: int,
                                    generator: Optional[torch.Generator]) -> LogPartitionEstimate:
        """log w = log r for draws of the base ("prior"), or the defensive mixture's
        weights ("aggregate-posterior", estimators.aggregate_posterior_log_weights)."""
        if proposal == "prior":
            log_w = torch.cat([self.log_ratio(self.base.sample(min(batch_size, num_samples - start),
                                                               generator=generator)).cpu()
                               for start in range(0, num_samples, batch_size)])
        else:
            log_w = aggregate_posterior_log_weights(self.log_ratio, self.base, *posterior, num_samples,
                                                    generator=generator, batch_size=batch_size)
        return summarize_log_weights(log_w, proposal, posterior if proposal != "prior" else None)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p_NCP(z) = log r(z) + log p(z) - log Z."""
        return self.log_ratio(z) + self.base.log_prob(z) - self.log_partition()[0]

    # --- sampling -------------------------------------------------------------------------

    def energy(self, z: torch.Tensor) -> torch.Tensor:
        """E(z) = -log r(z) - log p(z) (Langevin's target is exp(-E) / Z)."""
        return -(self.log_ratio(z) + self.base.log_prob(z))

    def _sample(self, n: int, sampler: SamplerConfig, temperature: float,
                generator: Optional[torch.Generator]) -> torch.Tensor:
        """n latents [n, dim]: "sir" (num_proposals per sample, the fused SIR op),
        "langevin" (steps of size step_size on E), or "base" (the base itself); one
        group, so both modes are the same sampler."""
        prior = self.tempered(temperature)
        if sampler.method == "base":
            return prior.base.sample(n, generator=generator)
        if sampler.method == "langevin":
            return langevin(prior.base.sample(n, generator=generator), prior.energy, sampler.steps, sampler.step_size,
                            generator)
        budget = sampler.max_proposal_bytes or DEFAULT_PROPOSAL_BYTES
        rows = max(1, budget // (sampler.num_proposals * self.dim * 4))  # bounded memory
        chunks = []
        with torch.no_grad():
            for start in range(0, n, rows):
                count = min(rows, n - start)
                proposals = prior.base.sample((count, sampler.num_proposals), generator=generator)
                chosen, _ = sir_resample(prior.log_ratio(proposals), proposals, 1, generator=generator)
                chunks.append(chosen[:, 0])
        return torch.cat(chunks)

    def tempered(self, temperature: float) -> "NCPPrior":
        """self, or at T != 1 an NCPPrior sharing the classifier over the base with its
        standard deviations (a GMM's per component) scaled by T."""
        if temperature == 1:
            return self
        base = self.base
        if isinstance(base, StandardNormal):
            anchor = base._device_anchor
            base = GaussianMixture(torch.ones(1, device=anchor.device), torch.zeros(1, self.dim, device=anchor.device),
                                   torch.zeros(1, self.dim, device=anchor.device))
        if not isinstance(base, GaussianMixture):
            raise ValueError(f"temperature {temperature} is defined for a StandardNormal or GaussianMixture base, "
                             f"not {type(base).__name__}; sample at temperature 1")
        scaled = GaussianMixture(base.log_weights.exp(), base.means, base.log_stds + torch.log(
            torch.tensor(float(temperature), device=base.means.device)))
        prior = NCPPrior(scaled, classifier=self.classifier, dim=self.dim)
        prior.kernels = self.kernels
        return prior

    # --- persistence ----------------------------------------------------------------------

    def to_checkpoint(self) -> dict:
        """Plain data (loads with weights_only=True). TypeError for a base that cannot be
        rebuilt from tensors (see base_state.base_to_state) rather than saving another one,
        and for a classifier that is not the default MLP that from_checkpoint builds."""
        if repr(self.classifier) != repr(default_classifier(self.dim, self.hidden, self.layers)):
            raise TypeError(f"NCPPrior cannot save a custom classifier ({type(self.classifier).__name__}): "
                            f"from_checkpoint rebuilds the default MLP (hidden={self.hidden}, layers={self.layers}). "
                            f"Save prior.state_dict() instead and load it into an NCPPrior built the same way.")
        return {"format": 3, "dim": self.dim, "hidden": self.hidden, "layers": self.layers,
                "base": base_to_state(self.base), "state_dict": self.state_dict(),
                "log_partition": self._log_partition_state()}

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
        prior._load_log_partition_state(state.get("log_partition"))
        return prior.eval()

    def save(self, path: str) -> None:
        from ..checkpoint import save_atomic
        save_atomic(self.to_checkpoint(), path)

    @classmethod
    def load(cls, path: str) -> "NCPPrior":
        from ..checkpoint import load
        return cls.from_checkpoint(load(path))
