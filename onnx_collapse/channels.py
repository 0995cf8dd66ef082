"""Channel selection for pruning, pure numpy: which input channels of a layer to keep so that least squares on
the kept ones reproduces its output best (``prune`` applies it to convolution pairs).

Backward elimination in the Optimal Brain Surgeon form: with ``H`` the inverse of the (regularised) input
covariance over the kept channels and ``W = H C`` the least-squares weights (``C`` the input/output
cross-covariance), removing channel ``j`` and refitting the rest raises the squared error by exactly
``|W[j]|^2 / H[j, j]``; the channel with the least such cost goes, and ``H`` is updated by its Schur
complement. Each removal costs O(k^2 + k m) for k kept channels and m outputs.
"""

from __future__ import annotations

import numpy as np

from .calibrate import Moments
from .linalg import covariance, mean_eigenvalue


def regularised(cov: np.ndarray, ridge: float) -> np.ndarray:
    """``cov`` plus ``ridge`` x its mean eigenvalue on the diagonal (a floor keeps it invertible)."""
    return cov + ridge * mean_eigenvalue(cov) * np.eye(len(cov))


def removal_order(cov: np.ndarray, cross: np.ndarray, keep: int, ridge: float = 1e-6
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Channels kept (ascending) after removing channels one at a time, each time the one whose removal
    (with the others refitted) least raises the least-squares error of predicting the outputs; and the
    error each removal added, in order. ``cov``: input covariance (n, n); ``cross``: input/output
    cross-covariance (n, m); both over the same rows, in any common scale."""
    if not 1 <= keep <= len(cov):
        raise ValueError(f"keep must be in [1, {len(cov)}], got {keep}")
    h = np.linalg.inv(regularised(cov, ridge))
    alive = np.arange(len(cov))
    added = []
    while len(alive) > keep:
        w = h @ cross[alive]
        cost = np.sum(w * w, axis=1) / np.diag(h)
        j = int(np.argmin(cost))
        added.append(float(cost[j]))
        hj = h[:, j]
        h = np.delete(np.delete(h - np.outer(hj, hj) / hj[j], j, 0), j, 1)
        alive = np.delete(alive, j)
    return alive, np.array(added)


def columns(m: Moments, kept: np.ndarray) -> Moments:
    """The sums of ``m`` restricted to input channels ``kept``."""
    return Moments(m.count, m.sum_x[kept], m.gram[np.ix_(kept, kept)], m.sum_y,
                   None if m.cross is None else m.cross[kept], m.sum_yy)


def centred(m: Moments) -> tuple[np.ndarray, np.ndarray, float]:
    """Covariance of x, cross-covariance of x and y, and the total variance of y, per row of ``m``."""
    n = max(m.count, 1)
    mx, my = m.sum_x / n, m.sum_y / n
    return (covariance(m.count, m.sum_x, m.gram), m.cross / n - np.outer(mx, my),
            m.sum_yy / n - float(my @ my))
