"""Temperature scaling (Guo et al. 2017): one scalar T so that sigmoid(logit / T) is calibrated.

A network trained to convergence with cross-entropy is over-confident; dividing its logits by a
T > 1 fitted on held-out data (minimum negative log-likelihood) fixes most of that without
changing the ranking, so AUROC is untouched and the reward becomes a probability the finetuning
loop can weigh samples by.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# T is kept in a range where neither a degenerate fit (one verdict, separable data) nor a typo
# produces a reward that is constant 0.5 or a hard 0/1.
T_MIN, T_MAX = 0.05, 100.0


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    logits = torch.as_tensor(logits, dtype=torch.float64)
    labels = torch.as_tensor(labels, dtype=torch.float64)
    return float(F.binary_cross_entropy_with_logits(logits / temperature, labels))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The T > 0 that minimises the binary NLL of ``sigmoid(logits / T)`` against ``labels``.

    Optimised over log T (so T stays positive) with L-BFGS. Returns 1.0 when the data cannot
    determine T: fewer than two items or a single verdict (then any T -> 0 or infinity "wins").
    """
    z = torch.as_tensor(logits, dtype=torch.float64).detach().flatten()
    y = torch.as_tensor(labels, dtype=torch.float64).detach().flatten()
    if len(z) != len(y):
        raise ValueError(f"{len(z)} logits but {len(y)} labels")
    if len(z) < 2 or y.min() == y.max():
        log.warning("temperature scaling needs validation items of both verdicts; keeping T = 1")
        return 1.0
    if z[y == 1].min() > z[y == 0].max():
        # Perfectly separated: the NLL keeps falling as T -> 0, so the data cannot say how sure
        # the model should be; sharpening to hard 0/1 rewards on that evidence would be wrong.
        log.warning("validation items are perfectly separated: the temperature is not identifiable; keeping T = 1")
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    if not math.isfinite(t):
        log.warning("temperature fit diverged; keeping T = 1")
        return 1.0
    clipped = min(max(t, T_MIN), T_MAX)
    if clipped != t:
        log.warning(
            "fitted temperature %.3g is outside [%g, %g] (validation set separable?); using %.3g",
            t,
            T_MIN,
            T_MAX,
            clipped,
        )
    return clipped
