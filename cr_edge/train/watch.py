"""Training that watches itself: divergence and collapse stop a run with the cause and the fix.

A polynomial net fails in two ways that a finished run cannot show in its accuracy alone.
It *diverges*: a pre-activation leaves the interval its polynomial was fitted on, ``p'``
grows like ``z**(degree-1)`` there, and the DREG term, the loss or the coefficients run
away (``--degree 5 --hidden 32,32`` on digits took the DREG term from 5 to 9e9). Or it
*collapses*: too strong a penalty flattens the net into a constant, the loss sits at the
entropy of the class frequencies (``--dreg 1e3``: 2.3025 on ten balanced classes) and
the predictions carry no information. Either one is reported as ``TrainingFailed``
(exit 1) naming the measured figure, its limit and what to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from cr_edge.errors import TrainingFailed

DREG_GROWTH = 1e3  # the DREG term may grow to this multiple of its value at initialisation
LOSS_GROWTH = 10.0  # the loss may grow to this multiple of its first epoch (and the prior's)
COLLAPSE_EPOCHS = 5  # collapse is judged from this epoch on: the first ones may still be flat
# Collapse: the mutual information between input and predicted distribution on the
# validation set, mean_i KL(p_i || mean_j p_j), below this share of the class entropy and
# no higher than COLLAPSE_EPOCHS - 2 epochs before. Slow starters rise, collapsed nets sink:
# --dreg 1e3 on digits carries 1.7e-3 nats at epoch 1 and 2.5e-7 at epoch 5; a small conv
# net 2.2e-5 at epoch 1 and 8.4e-3 at epoch 5, and it goes on to learn.
COLLAPSE_FLAT = 1e-3
# float32 Horner: |fl(p(z)) - p(z)| <= gamma_2n * sum_k |a_k| |z|^k (Higham, Accuracy and
# Stability of Numerical Algorithms, 5.1). Past this absolute bound on the fit interval an
# activation of order one has lost three of float32's seven digits; exports cannot hold it.
HORNER_ERROR_LIMIT = 1e-3
F32_UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2

FIX_DIVERGED = (
    "lower --lr, raise --dreg or --range-penalty, lower --degree, or clip gradients harder "
    "(--clip-grad)"
)
FIX_COLLAPSED = "lower --dreg or raise --lr; check that the labels belong to the inputs"


def horner_error_bound(coeffs: np.ndarray, radius: float) -> float:
    """Largest float32 rounding-error bound of Horner's rule over ``|z| <= radius``, any channel.

    ``coeffs`` is ``(degree + 1, channels)`` in ascending powers.
    """
    n = coeffs.shape[0] - 1
    gamma = 2 * n * F32_UNIT_ROUNDOFF / (1 - 2 * n * F32_UNIT_ROUNDOFF)
    powers = radius ** np.arange(n + 1, dtype=np.float64).reshape(-1, 1)
    return float(gamma * np.max(np.sum(np.abs(coeffs.astype(np.float64)) * powers, axis=0)))


def prediction_information(logits: np.ndarray) -> float:
    """``mean_i KL(p_i || p_mean)`` in nats: how much the predicted distribution depends on the input.

    Zero for a net that outputs the same distribution for every sample, however that
    distribution looks; the class entropy for a net that is certain and balanced.
    """
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    p = np.exp(logp)
    mean = p.mean(axis=0)
    log_mean = np.log(np.maximum(mean, 1e-300))
    return float(np.mean(np.sum(p * (logp - log_mean), axis=1)))


def prior_entropy(labels: np.ndarray, n_classes: int) -> float:
    """Cross-entropy of always predicting the class frequencies: what a constant net scores."""
    share = np.bincount(labels, minlength=n_classes) / max(len(labels), 1)
    share = share[share > 0]
    return float(-(share * np.log(share)).sum())


@dataclass
class Watch:
    """The figures one run is judged against; ``check_epoch`` raises when the run went wrong."""

    initial_dreg: float  # the DREG term of the untrained net: the polynomials as fitted
    prior_entropy: float  # of the validation labels
    fit_range: float
    first_loss: float | None = None
    information: list[float] = field(default_factory=list)  # per epoch, for collapse

    def check_epoch(
        self,
        epoch: int,
        loss: float,
        dreg_term: float,
        information: float,
        coeffs: list[np.ndarray],
    ) -> None:
        if self.first_loss is None:
            self.first_loss = loss
        where = f"training diverged at epoch {epoch}"
        if not (math.isfinite(loss) and math.isfinite(dreg_term)):
            self._fail(f"{where}: the loss is {loss:.4g} and the DREG term {dreg_term:.4g}", True)
        if self.initial_dreg > 0 and dreg_term > DREG_GROWTH * self.initial_dreg:
            self._fail(
                f"{where}: the DREG term reached {dreg_term:.3g}, more than {DREG_GROWTH:g}x "
                f"its value at initialisation ({self.initial_dreg:.3g})",
                True,
            )
        if loss > LOSS_GROWTH * max(self.first_loss, self.prior_entropy):
            self._fail(
                f"{where}: the loss reached {loss:.4g}, more than {LOSS_GROWTH:g}x its first "
                f"epoch's {self.first_loss:.4g}",
                True,
            )
        for i, c in enumerate(coeffs):
            bound = horner_error_bound(c, self.fit_range)
            if not bound <= HORNER_ERROR_LIMIT:
                self._fail(
                    f"{where}: polynomial {i + 1}'s coefficients grew until float32 Horner "
                    f"evaluation on |z| <= {self.fit_range:g} may be off by {bound:.3g} "
                    f"(limit {HORNER_ERROR_LIMIT:g})",
                    True,
                )
        self.information.append(information)
        if (
            epoch >= COLLAPSE_EPOCHS
            and information < COLLAPSE_FLAT * self.prior_entropy
            and information <= self.information[-(COLLAPSE_EPOCHS - 1)]
        ):
            self._collapsed(f"by epoch {epoch}", information)

    def _collapsed(self, when: str, information: float) -> None:
        self._fail(
            f"training collapsed {when}: the predictions barely depend on the input (they "
            f"carry {information:.3g} nats about it; a trained net carries up to the class "
            f"entropy, {self.prior_entropy:.3g}, and this one is not rising)",
            False,
        )

    @staticmethod
    def _fail(cause: str, diverged: bool) -> None:
        fix = FIX_DIVERGED if diverged else FIX_COLLAPSED
        raise TrainingFailed(f"{cause}; {fix}. No checkpoint was written.")
