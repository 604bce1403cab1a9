/**
 * Fréchet distance between two sets of feature vectors (FID when the features come from an image
 * network), as MONAI's `FIDMetric` / `get_fid_score` defines it, in float64:
 *
 *   FID = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂),
 *
 * with μ the mean and Σ the unbiased (n − 1) covariance of each set. MONAI takes tr √(Σ₁Σ₂) from SciPy's
 * general `sqrtm` of the non-symmetric product; here it is computed from symmetric eigen-decompositions,
 * which is the same number (Σ₁Σ₂ is similar to the PSD matrix Σ₁^½ Σ₂ Σ₁^½, so tr √(Σ₁Σ₂) = Σᵢ √λᵢ) but
 * never produces complex round-off:
 * - with fewer samples than features (the usual case: e.g. 100 volumes, 2048 ResNet-50 features), through
 *   the n₁ × n₂ matrix C = A₁A₂ᵀ/√((n₁−1)(n₂−1)) of centred samples, whose singular values are the √λᵢ;
 * - otherwise through Σ₁^½ Σ₂ Σ₁^½ in feature space.
 * Tiny negative eigenvalues from round-off count as 0, as MONAI's real part of `sqrtm` does.
 *
 * @module
 */

import { type Features, toRows } from "./linalg.ts";
import { symmetricEigen } from "./linalg.ts";

/** Mean vector and centred rows of a sample set. */
function centre(rows: ArrayLike<number>[], dim: number): { mu: Float64Array; centred: Float64Array[] } {
  const mu = new Float64Array(dim);
  for (const r of rows) for (let j = 0; j < dim; j++) mu[j] += r[j];
  for (let j = 0; j < dim; j++) mu[j] /= rows.length;
  const centred = rows.map((r) => Float64Array.from({ length: dim }, (_, j) => r[j] - mu[j]));
  return { mu, centred };
}

function dot(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** Σ √max(λ, 0) over the eigenvalues of a symmetric PSD matrix. */
function traceSqrt(m: Float64Array, n: number): number {
  return symmetricEigen(m, n).values.reduce((s, l) => s + Math.sqrt(Math.max(l, 0)), 0);
}

/** tr √(Σ₁Σ₂) through the smaller of the sample-space Gram matrices (n₁ or n₂ ≤ features). */
function traceSqrtViaSamples(a: Float64Array[], b: Float64Array[]): number {
  const scale = 1 / Math.sqrt((a.length - 1) * (b.length - 1));
  const [small, large] = a.length <= b.length ? [a, b] : [b, a];
  // C = small · largeᵀ · scale; G = C Cᵀ (small × small) has eigenvalues σᵢ² of C.
  const c = small.map((s) => Float64Array.from(large, (l) => dot(s, l) * scale));
  const n = small.length;
  const g = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) g[i * n + j] = g[j * n + i] = dot(c[i], c[j]);
  }
  return traceSqrt(g, n);
}

/** Covariance (n − 1 normalisation) of centred rows as a dim × dim row-major matrix. */
function covariance(centred: Float64Array[], dim: number): Float64Array {
  const cov = new Float64Array(dim * dim);
  for (const r of centred) {
    for (let i = 0; i < dim; i++) {
      const ri = r[i];
      if (ri === 0) continue;
      for (let j = 0; j <= i; j++) cov[i * dim + j] += ri * r[j];
    }
  }
  const k = 1 / (centred.length - 1);
  for (let i = 0; i < dim; i++) {
    for (let j = 0; j <= i; j++) cov[i * dim + j] = cov[j * dim + i] = cov[i * dim + j] * k;
  }
  return cov;
}

/** tr √(Σ₁Σ₂) = tr √(Σ₁^½ Σ₂ Σ₁^½) in feature space. */
function traceSqrtViaFeatures(a: Float64Array[], b: Float64Array[], dim: number): number {
  const s1 = covariance(a, dim);
  const s2 = covariance(b, dim);
  const { values, vectors } = symmetricEigen(s1, dim);
  // R = V √Λ Vᵀ, then M = R Σ₂ R.
  const root = new Float64Array(dim * dim);
  for (let k = 0; k < dim; k++) {
    const w = Math.sqrt(Math.max(values[k], 0));
    if (w === 0) continue;
    for (let i = 0; i < dim; i++) {
      const vik = vectors[i * dim + k] * w;
      for (let j = 0; j < dim; j++) root[i * dim + j] += vik * vectors[j * dim + k];
    }
  }
  const t = multiply(root, s2, dim);
  const m = multiply(t, root, dim);
  for (let i = 0; i < dim; i++) {
    for (let j = 0; j < i; j++) m[i * dim + j] = m[j * dim + i] = 0.5 * (m[i * dim + j] + m[j * dim + i]);
  }
  return traceSqrt(m, dim);
}

function multiply(a: Float64Array, b: Float64Array, n: number): Float64Array {
  const out = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let k = 0; k < n; k++) {
      const aik = a[i * n + k];
      if (aik === 0) continue;
      for (let j = 0; j < n; j++) out[i * n + j] += aik * b[k * n + j];
    }
  }
  return out;
}

/**
 * Fréchet distance between the Gaussians fitted to two feature sets (MONAI `FIDMetric`), in float64. Each
 * set is a `[samples, features]` matrix (or a list of feature rows) with at least 2 samples; both need the
 * same feature count. Symmetric in its arguments.
 *
 * @example
 * ```ts
 * const net = await Med3dResNet.load("resnet_50.safetensors");
 * const rows = async (vols: Tensor[]) => Promise.all(vols.map(async (v) => await net.extract(v).toArray()));
 * const score = fid(await rows(fakeVolumes), await rows(realVolumes)); // each volume [1, 1, D, H, W]
 * ```
 */
export function fid(a: Features, b: Features): number {
  const op = "fid";
  const ra = toRows(op, "a", a);
  const rb = toRows(op, "b", b);
  const dim = ra[0]?.length ?? 0;
  if (ra.length < 2 || rb.length < 2) {
    throw new Error(
      `${op}: each set needs at least 2 samples for a covariance, got ${ra.length} and ${rb.length}.`,
    );
  }
  if ((rb[0]?.length ?? 0) !== dim || dim === 0) {
    throw new Error(
      `${op}: both sets need the same, non-zero feature count, got ${dim} and ${rb[0]?.length}.`,
    );
  }
  const ca = centre(ra, dim);
  const cb = centre(rb, dim);
  let meanTerm = 0;
  for (let j = 0; j < dim; j++) meanTerm += (ca.mu[j] - cb.mu[j]) ** 2;
  const trace = (c: Float64Array[]): number => c.reduce((s, r) => s + dot(r, r), 0) / (c.length - 1);
  const trSqrt = Math.min(ra.length, rb.length) <= dim
    ? traceSqrtViaSamples(ca.centred, cb.centred)
    : traceSqrtViaFeatures(ca.centred, cb.centred, dim);
  return meanTerm + trace(ca.centred) + trace(cb.centred) - 2 * trSqrt;
}
