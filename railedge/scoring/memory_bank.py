"""PatchCore-style memory bank of normal patch features, conditioned on the column.

Normal rail looks almost constant along the scan direction, and the head's edge looks unlike its
centre: so each patch is compared only with normal patches from the same feature column (± a
small window). That is a stronger prior than one global bank, and it divides the search by the
number of columns, which keeps the nearest-neighbour search far below the backbone's cost."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from railedge.errors import ModelError


def greedy_coreset(x: np.ndarray, m: int, rng: np.random.Generator, proj_dim: int = 64) -> np.ndarray:
    """Indices of m rows of x chosen by greedy k-centre (farthest point) on a random projection."""
    n = x.shape[0]
    if n <= m:
        return np.arange(n)
    d = x.shape[1]
    z = x @ (rng.standard_normal((d, proj_dim)).astype(np.float32) / np.sqrt(proj_dim)) if d > proj_dim else x
    z = np.ascontiguousarray(z, dtype=np.float32)
    zz = np.einsum("ij,ij->i", z, z)
    chosen = np.empty(m, dtype=np.int64)
    chosen[0] = int(rng.integers(n))
    mind = zz + zz[chosen[0]] - 2.0 * (z @ z[chosen[0]])
    for i in range(1, m):
        k = int(np.argmax(mind))
        chosen[i] = k
        np.minimum(mind, zz + zz[k] - 2.0 * (z @ z[k]), out=mind)
    return chosen


class Projection:
    """PCA of normal features to k dimensions plus one more: the norm of what PCA leaves out.

    Distances in this space are a lower bound of the full ones that keeps the main directions of
    normal variation and, through the residual coordinate, anything off them. It makes the
    nearest-neighbour search cost independent of the backbone's width (PaDiM keeps a random
    100 of 448 dimensions for the same reason)."""

    def __init__(self, mean: np.ndarray, basis: np.ndarray) -> None:
        self.mean = np.ascontiguousarray(mean, dtype=np.float32)
        self.basis = np.ascontiguousarray(basis, dtype=np.float32)  # (F, k), orthonormal columns
        # one GEMM writes z into the first k columns of the output; the last (zero) column is then
        # overwritten with the residual norm: no concatenation, no extra copies per frame
        self._padded = np.zeros((self.basis.shape[0], self.basis.shape[1] + 1), np.float32)
        self._padded[:, :-1] = self.basis

    @property
    def in_dim(self) -> int:
        return self.basis.shape[0]

    @classmethod
    def fit(cls, x: np.ndarray, k: int, rng: np.random.Generator, max_rows: int = 20000) -> "Projection":
        if len(x) > max_rows:
            x = x[rng.choice(len(x), max_rows, replace=False)]
        mean = x.mean(0)
        xc = (x - mean).astype(np.float64)
        vals, vecs = np.linalg.eigh(xc.T @ xc)
        return cls(mean, vecs[:, ::-1][:, :k])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """(N, F) → (N, k+1)."""
        xc = np.subtract(x, self.mean, dtype=np.float32)
        out = xc @ self._padded
        k = self.basis.shape[1]
        z = out[:, :k]
        resid = np.einsum("ij,ij->i", xc, xc)
        resid -= np.einsum("ij,ij->i", z, z)
        np.maximum(resid, 0.0, out=resid)
        np.sqrt(resid, out=out[:, k])
        return out


class ColumnMemoryBank:
    """banks[j]: (M_j, D) normal features of feature column j (projected when `projection` is
    set). `distances` gives each patch's Euclidean distance to its nearest normal neighbour within
    `window` columns."""

    def __init__(self, banks: list[np.ndarray], window: int = 1, projection: Projection | None = None) -> None:
        if not banks:
            raise ModelError("memory bank is empty; refit the model on normal footage")
        self.banks = [np.ascontiguousarray(b, dtype=np.float32) for b in banks]
        self.window = window
        self.projection = projection
        self.dim = projection.in_dim if projection is not None else self.banks[0].shape[1]
        self.columns = len(self.banks)
        # Stack each column's neighbourhood once, padded with far-away rows, for one batched matmul.
        neigh = [np.concatenate(self.banks[max(0, j - window) : j + window + 1]) for j in range(self.columns)]
        mmax = max(len(n) for n in neigh)
        self._stack = np.zeros((self.columns, self.banks[0].shape[1], mmax), np.float32)
        self._norm = np.full((self.columns, 1, mmax), np.float32(1e30), np.float32)
        for j, n in enumerate(neigh):
            self._stack[j, :, : len(n)] = n.T
            self._norm[j, 0, : len(n)] = np.einsum("ij,ij->i", n, n)

    @property
    def size(self) -> int:
        return sum(len(b) for b in self.banks)

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        normal_mask: np.ndarray | None,
        size: int,
        window: int = 1,
        seed: int = 0,
        project_dim: int = 0,
    ) -> "ColumnMemoryBank":
        """features (N,F,h,w); normal_mask (N,h,w) True where a patch may enter the bank;
        project_dim > 0 and < F: search in a PCA space of that many dimensions (+ residual)."""
        n, f, h, w = features.shape
        rng = np.random.default_rng(seed)
        per_col = max(1, size // w)
        cols = []
        for j in range(w):
            col = features[:, :, :, j].transpose(0, 2, 1).reshape(-1, f)
            if normal_mask is not None:
                col = col[normal_mask[:, :, j].reshape(-1)]
            if len(col) == 0:
                raise ModelError(f"no normal patches for feature column {j}; the fitting data is all labelled or empty")
            cols.append(col)
        projection = None
        if 0 < project_dim < f:
            projection = Projection.fit(np.concatenate(cols), project_dim, rng)
            cols = [projection(c) for c in cols]
        banks = [c[greedy_coreset(c, per_col, rng)] for c in cols]
        return cls(banks, window, projection)

    def distances(self, feats: np.ndarray) -> np.ndarray:
        """feats (F,h,w) → (h,w) nearest-neighbour distances."""
        f, h, w = feats.shape
        if f != self.dim or w != self.columns:
            raise ModelError(
                f"features of shape {feats.shape} do not match the memory bank ({self.dim} channels, {self.columns} columns); "
                "the model artifact and backbone disagree: refit or re-export the model"
            )
        q = np.ascontiguousarray(feats.transpose(2, 1, 0))  # (w, h, F)
        if self.projection is not None:
            q = self.projection(q.reshape(w * h, f)).reshape(w, h, -1)
        qq = np.einsum("whf,whf->wh", q, q)[:, :, None]
        d2 = np.matmul(q, self._stack)  # (w, h, M)
        d2 *= -2.0
        d2 += self._norm
        best = d2.min(axis=2) + qq[:, :, 0]
        np.maximum(best, 0.0, out=best)
        return np.sqrt(best).T  # (h, w)

    def save(self, path: Path) -> None:
        extra = {} if self.projection is None else {"proj_mean": self.projection.mean, "proj_basis": self.projection.basis}
        np.savez(path, window=np.int64(self.window), **extra, **{f"col{j:04d}": b for j, b in enumerate(self.banks)})

    @classmethod
    def load(cls, path: Path) -> "ColumnMemoryBank":
        try:
            with np.load(path) as z:
                keys = sorted(k for k in z.files if k.startswith("col"))
                banks = [z[k] for k in keys]
                window = int(z["window"])
                projection = Projection(z["proj_mean"], z["proj_basis"]) if "proj_basis" in z.files else None
        except Exception as e:
            raise ModelError(f"memory bank {str(path)!r} cannot be read ({e.__class__.__name__}); the artifact is corrupt: refit it") from None
        return cls(banks, window, projection)
