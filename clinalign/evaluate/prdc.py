"""k-nearest-neighbour manifolds: precision, recall, density, coverage, and nearest neighbours.

Naeem, Oh, Uh, Choi, Yoo, "Reliable Fidelity and Diversity Metrics for Generative Models",
ICML 2020 (which builds on Kynkäänniemi et al., "Improved Precision and Recall Metric for
Assessing Generative Models", NeurIPS 2019). The real manifold is the union of balls around each
real feature vector with radius its distance to its k-th nearest real neighbour; the reference
implementation (clovaai/generative-evaluation-prdc) uses strict ``<`` and counts the point itself
as its 0-th neighbour, and so do we.

Distances are computed in float64 in row chunks, so 10k x 10k sets never need the full matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_CHUNK_ELEMENTS = 4_000_000  # ~32 MB of float64 distances per chunk


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def distance_chunks(a: np.ndarray, b: np.ndarray):
    """Yield ``(slice of a's rows, Euclidean distances (rows, len(b)))`` over ``a`` in chunks.

    float32 inputs stay float32 (pixel vectors: half the memory); anything else is float64.
    """
    dtype = np.float32 if np.asarray(a).dtype == np.float32 and np.asarray(b).dtype == np.float32 else np.float64
    a = np.asarray(a, dtype=dtype)
    b = np.asarray(b, dtype=dtype)
    bn = _sq_norms(b)
    step = max(1, _CHUNK_ELEMENTS // max(1, len(b)))
    for start in range(0, len(a), step):
        rows = slice(start, min(start + step, len(a)))
        block = a[rows]
        sq = _sq_norms(block)[:, None] + bn[None, :] - 2.0 * (block @ b.T)
        yield rows, np.sqrt(np.maximum(sq, 0.0))


def knn_radii(features: np.ndarray, k: int = 5) -> np.ndarray:
    """Distance from each vector to its k-th nearest neighbour in the same set (itself excluded)."""
    n = len(features)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, {n - 1}] for {n} vectors, got {k}")
    radii = np.empty(n)
    for rows, d in distance_chunks(features, features):
        # The point itself sits at distance 0, i.e. position 0 of the sorted row, so position k is
        # the k-th *other* neighbour (reference implementation: np.partition(d, k)[:, k]).
        radii[rows] = np.partition(d, k, axis=1)[:, k]
    return radii


@dataclass
class NearestNeighbours:
    """For each query vector: distance to and index of its nearest reference vector."""

    distance: np.ndarray
    index: np.ndarray


def nearest_neighbours(queries: np.ndarray, reference: np.ndarray) -> NearestNeighbours:
    dist = np.empty(len(queries))
    index = np.empty(len(queries), dtype=np.int64)
    for rows, d in distance_chunks(queries, reference):
        index[rows] = d.argmin(axis=1)
        dist[rows] = d[np.arange(len(d)), index[rows]]
    return NearestNeighbours(dist, index)


@dataclass
class ManifoldResult:
    """Per-sample manifold statistics of a fake set against a real set, and the four summaries."""

    in_manifold: np.ndarray  # fake j is inside some real k-NN ball (the precision indicator)
    ball_count: np.ndarray  # number of real k-NN balls containing fake j (density numerator)
    precision: float
    recall: float
    density: float
    coverage: float
    k: int

    def summary(self) -> dict[str, float]:
        return {"precision": self.precision, "recall": self.recall, "density": self.density, "coverage": self.coverage}


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, real_radii: np.ndarray | None = None) -> ManifoldResult:
    """Precision, recall, density, coverage (Naeem et al. 2020, Eqs. 1-4 / Kynkäänniemi et al. 2019).

    precision = 1/M Σ_j 1[∃i: ||Y_j - X_i|| < NND_k(X_i)]
    recall    = 1/N Σ_i 1[∃j: ||X_i - Y_j|| < NND_k(Y_j)]
    density   = 1/(kM) Σ_j Σ_i 1[||Y_j - X_i|| < NND_k(X_i)]
    coverage  = 1/N Σ_i 1[∃j: ||X_i - Y_j|| < NND_k(X_i)]
    with X the N real and Y the M fake feature vectors. ``real_radii`` may be passed precomputed.
    """
    if len(real) <= k or len(fake) == 0:
        raise ValueError(
            f"need more than k={k} real vectors and at least one fake vector (got {len(real)} and {len(fake)})"
        )
    radii = knn_radii(real, k) if real_radii is None else real_radii
    fake_radii = knn_radii(fake, k) if len(fake) > k else None
    inside = np.zeros(len(fake), dtype=bool)
    count = np.zeros(len(fake), dtype=np.int64)
    covered = np.zeros(len(real), dtype=bool)
    recalled = np.zeros(len(real), dtype=bool)
    for rows, d in distance_chunks(fake, real):  # d[j, i] = ||Y_j - X_i||
        hit = d < radii[None, :]
        inside[rows] = hit.any(axis=1)
        count[rows] = hit.sum(axis=1)
        covered |= hit.any(axis=0)
        if fake_radii is not None:
            recalled |= (d < fake_radii[rows, None]).any(axis=0)
    return ManifoldResult(
        in_manifold=inside,
        ball_count=count,
        precision=float(inside.mean()),
        # With k or fewer fakes the fake k-NN radius does not exist: recall is undefined.
        recall=float(recalled.mean()) if fake_radii is not None else float("nan"),
        density=float(count.sum() / (k * len(fake))),
        coverage=float(covered.mean()),
        k=k,
    )
