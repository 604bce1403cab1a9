/**
 * Matrix product with NumPy `matmul` / PyTorch `torch.matmul` semantics.
 *
 * @module
 */

import {
  broadcastIndex,
  broadcastShapes,
  checkTensor,
  formatShape,
  type RefTensor,
  sizeOf,
} from "./tensor.ts";

/**
 * `a @ b`. Both operands need rank ≥ 1. A 1-D `a` of shape [k] is treated as [1, k] and a 1-D `b` as
 * [k, 1]; the added axis is removed from the result (two vectors give a scalar, shape `[]`). The leading
 * (batch) axes of both broadcast like NumPy; the result is [...batch, m, n]. Sums run in float64 over k in
 * order.
 */
export function matmul(a: RefTensor, b: RefTensor): RefTensor {
  checkTensor(a, "matmul: a");
  checkTensor(b, "matmul: b");
  if (a.shape.length === 0 || b.shape.length === 0) {
    throw new Error(
      `matmul: operands must have rank >= 1, got ${formatShape(a.shape)} and ${formatShape(b.shape)}`,
    );
  }
  const aVec = a.shape.length === 1;
  const bVec = b.shape.length === 1;
  const as = aVec ? [1, a.shape[0]] : a.shape;
  const bs = bVec ? [b.shape[0], 1] : b.shape;
  const m = as[as.length - 2];
  const k = as[as.length - 1];
  const k2 = bs[bs.length - 2];
  const n = bs[bs.length - 1];
  if (k !== k2) {
    throw new Error(
      `matmul: inner sizes differ: ${formatShape(a.shape)} @ ${formatShape(b.shape)} (${k} vs ${k2})`,
    );
  }
  const aBatch = as.slice(0, -2);
  const bBatch = bs.slice(0, -2);
  const batch = broadcastShapes(aBatch, bBatch);
  const ia = broadcastIndex(aBatch, batch);
  const ib = broadcastIndex(bBatch, batch);
  const nb = sizeOf(batch);
  const out = new Float64Array(nb * m * n);
  for (let t = 0; t < nb; t++) {
    const aOff = ia[t] * m * k;
    const bOff = ib[t] * k * n;
    const oOff = t * m * n;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) s += a.data[aOff + i * k + p] * b.data[bOff + p * n + j];
        out[oOff + i * n + j] = s;
      }
    }
  }
  const shape = [...batch];
  if (!aVec) shape.push(m);
  if (!bVec) shape.push(n);
  return { shape, data: out };
}
