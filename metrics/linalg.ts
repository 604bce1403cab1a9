/**
 * Small float64 linear algebra for the distribution metrics: sample sets as row lists, and the eigen-
 * decomposition of a symmetric matrix (Householder tridiagonalisation followed by the implicit QL method
 * with Wilkinson shifts, the EISPACK `tred2`/`tql2` pair): O(n³), accurate to a few ulps of the largest
 * eigenvalue, and fast enough for a 2048 × 2048 covariance in seconds.
 *
 * @module
 */

/** A row-major `[rows, cols]` matrix, e.g. one feature vector per row. */
export interface FeatureMatrix {
  /** Number of rows (samples). */
  rows: number;
  /** Number of columns (features). */
  cols: number;
  /** `rows · cols` values, row after row. */
  data: ArrayLike<number>;
}

/** Samples: a {@linkcode FeatureMatrix}, or a list of equally long rows (e.g. flattened volumes). */
export type Features = FeatureMatrix | ReadonlyArray<ArrayLike<number>>;

/** The rows of `x` as views (no copy for typed arrays), checked for a consistent width. */
export function toRows(op: string, name: string, x: Features): ArrayLike<number>[] {
  if (Array.isArray(x)) {
    const rows = x as ReadonlyArray<ArrayLike<number>>;
    const width = rows[0]?.length ?? 0;
    rows.forEach((r, i) => {
      if (!r || typeof r.length !== "number" || r.length !== width) {
        throw new Error(`${op}: ${name} row ${i} has ${r?.length} values, but row 0 has ${width}.`);
      }
    });
    return [...rows];
  }
  const m = x as FeatureMatrix;
  if (
    !m || !Number.isInteger(m.rows) || !Number.isInteger(m.cols) || m.rows < 0 || m.cols < 0 ||
    !m.data || m.data.length !== m.rows * m.cols
  ) {
    throw new Error(
      `${op}: ${name} must be a list of rows or { rows, cols, data } with data.length = rows·cols` +
        (m?.data ? ` (got ${m.data.length} values for ${m.rows} × ${m.cols})` : "") + ".",
    );
  }
  const rows: ArrayLike<number>[] = [];
  for (let i = 0; i < m.rows; i++) {
    const begin = i * m.cols;
    const d = m.data;
    rows.push(
      d instanceof Float32Array || d instanceof Float64Array
        ? d.subarray(begin, begin + m.cols)
        : Array.prototype.slice.call(d, begin, begin + m.cols) as number[],
    );
  }
  return rows;
}

/** Eigenvalues (ascending) and eigenvectors (column j of `vectors` pairs with value j) of a symmetric matrix. */
export interface SymmetricEigen {
  /** Eigenvalues, ascending. */
  values: Float64Array;
  /** Row-major n × n matrix whose columns are orthonormal eigenvectors. */
  vectors: Float64Array;
}

/**
 * Eigen-decomposition of the symmetric n × n matrix `a` (row-major; only symmetry is assumed, the lower
 * triangle is what is read). `a` is not modified.
 */
export function symmetricEigen(a: ArrayLike<number>, n: number): SymmetricEigen {
  if (!Number.isInteger(n) || n < 0 || a.length !== n * n) {
    throw new Error(`symmetricEigen: ${a.length} values do not form a ${n} × ${n} matrix.`);
  }
  const v = Float64Array.from(a);
  const d = new Float64Array(n);
  const e = new Float64Array(n);
  if (n === 0) return { values: d, vectors: v };
  tridiagonalize(v, d, e, n);
  diagonalize(v, d, e, n);
  // Sort ascending, permuting the vector columns alongside.
  const order = [...d.keys()].sort((i, j) => d[i] - d[j]);
  const values = Float64Array.from(order, (i) => d[i]);
  const vectors = new Float64Array(n * n);
  for (let r = 0; r < n; r++) for (let c = 0; c < n; c++) vectors[r * n + c] = v[r * n + order[c]];
  return { values, vectors };
}

/** Householder reduction of the symmetric matrix in `v` to tridiagonal form (d diagonal, e sub-diagonal). */
function tridiagonalize(v: Float64Array, d: Float64Array, e: Float64Array, n: number): void {
  const at = (r: number, c: number): number => r * n + c;
  for (let j = 0; j < n; j++) d[j] = v[at(n - 1, j)];
  for (let i = n - 1; i > 0; i--) {
    let scale = 0;
    let h = 0;
    for (let k = 0; k < i; k++) scale += Math.abs(d[k]);
    if (scale === 0) {
      e[i] = d[i - 1];
      for (let j = 0; j < i; j++) {
        d[j] = v[at(i - 1, j)];
        v[at(i, j)] = 0;
        v[at(j, i)] = 0;
      }
    } else {
      // Generate the Householder vector.
      for (let k = 0; k < i; k++) {
        d[k] /= scale;
        h += d[k] * d[k];
      }
      let f = d[i - 1];
      let g = Math.sqrt(h);
      if (f > 0) g = -g;
      e[i] = scale * g;
      h -= f * g;
      d[i - 1] = f - g;
      for (let j = 0; j < i; j++) e[j] = 0;
      // Apply the similarity transformation to the remaining columns.
      for (let j = 0; j < i; j++) {
        f = d[j];
        v[at(j, i)] = f;
        g = e[j] + v[at(j, j)] * f;
        for (let k = j + 1; k <= i - 1; k++) {
          g += v[at(k, j)] * d[k];
          e[k] += v[at(k, j)] * f;
        }
        e[j] = g;
      }
      f = 0;
      for (let j = 0; j < i; j++) {
        e[j] /= h;
        f += e[j] * d[j];
      }
      const hh = f / (h + h);
      for (let j = 0; j < i; j++) e[j] -= hh * d[j];
      for (let j = 0; j < i; j++) {
        f = d[j];
        g = e[j];
        for (let k = j; k <= i - 1; k++) v[at(k, j)] -= f * e[k] + g * d[k];
        d[j] = v[at(i - 1, j)];
        v[at(i, j)] = 0;
      }
    }
    d[i] = h;
  }
  // Accumulate the transformations.
  for (let i = 0; i < n - 1; i++) {
    v[at(n - 1, i)] = v[at(i, i)];
    v[at(i, i)] = 1;
    const h = d[i + 1];
    if (h !== 0) {
      for (let k = 0; k <= i; k++) d[k] = v[at(k, i + 1)] / h;
      for (let j = 0; j <= i; j++) {
        let g = 0;
        for (let k = 0; k <= i; k++) g += v[at(k, i + 1)] * v[at(k, j)];
        for (let k = 0; k <= i; k++) v[at(k, j)] -= g * d[k];
      }
    }
    for (let k = 0; k <= i; k++) v[at(k, i + 1)] = 0;
  }
  for (let j = 0; j < n; j++) {
    d[j] = v[at(n - 1, j)];
    v[at(n - 1, j)] = 0;
  }
  v[at(n - 1, n - 1)] = 1;
  e[0] = 0;
}

/** Implicit QL iterations on the tridiagonal (d, e), accumulating rotations into `v`. */
function diagonalize(v: Float64Array, d: Float64Array, e: Float64Array, n: number): void {
  const at = (r: number, c: number): number => r * n + c;
  for (let i = 1; i < n; i++) e[i - 1] = e[i];
  e[n - 1] = 0;
  let f = 0;
  let tst1 = 0;
  const eps = 2 ** -52;
  for (let l = 0; l < n; l++) {
    // Find a small sub-diagonal element.
    tst1 = Math.max(tst1, Math.abs(d[l]) + Math.abs(e[l]));
    let m = l;
    while (m < n - 1 && Math.abs(e[m]) > eps * tst1) m++;
    if (m > l) {
      let iterations = 0;
      do {
        if (++iterations > 60) throw new Error("symmetricEigen: QL iteration did not converge.");
        // Wilkinson shift.
        let g = d[l];
        let p = (d[l + 1] - g) / (2 * e[l]);
        let r = Math.hypot(p, 1);
        if (p < 0) r = -r;
        d[l] = e[l] / (p + r);
        d[l + 1] = e[l] * (p + r);
        const dl1 = d[l + 1];
        let h = g - d[l];
        for (let i = l + 2; i < n; i++) d[i] -= h;
        f += h;
        // Implicit QL transformation.
        p = d[m];
        let c = 1;
        let c2 = c;
        let c3 = c;
        const el1 = e[l + 1];
        let s = 0;
        let s2 = 0;
        for (let i = m - 1; i >= l; i--) {
          c3 = c2;
          c2 = c;
          s2 = s;
          g = c * e[i];
          h = c * p;
          r = Math.hypot(p, e[i]);
          e[i + 1] = s * r;
          s = e[i] / r;
          c = p / r;
          p = c * d[i] - s * g;
          d[i + 1] = h + s * (c * g + s * d[i]);
          for (let k = 0; k < n; k++) {
            const vk1 = v[at(k, i + 1)];
            v[at(k, i + 1)] = s * v[at(k, i)] + c * vk1;
            v[at(k, i)] = c * v[at(k, i)] - s * vk1;
          }
        }
        p = -s * s2 * c3 * el1 * e[l] / dl1;
        e[l] = s * p;
        d[l] = c * p;
      } while (Math.abs(e[l]) > eps * tst1);
    }
    d[l] += f;
    e[l] = 0;
  }
}
