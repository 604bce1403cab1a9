/**
 * Scaled dot-product attention, the ground truth for fused attention kernels.
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
 * softmax(q·kᵀ·scale)·v per batch entry, like PyTorch `F.scaled_dot_product_attention` without mask or
 * dropout. q [...batch, Nq, d], k [...batch, Nk, d], v [...batch, Nk, dv] (typically batch = [B, H]);
 * leading batch axes broadcast like NumPy. Returns [...batch, Nq, dv]. `scale` defaults to 1/√d. The softmax
 * subtracts the row maximum and everything is float64.
 */
export function attention(q: RefTensor, k: RefTensor, v: RefTensor, scale?: number): RefTensor {
  checkTensor(q, "attention: q");
  checkTensor(k, "attention: k");
  checkTensor(v, "attention: v");
  if (q.shape.length < 2 || k.shape.length < 2 || v.shape.length < 2) {
    throw new Error(
      `attention: q, k, v need rank >= 2, got ${formatShape(q.shape)}, ${formatShape(k.shape)}, ${
        formatShape(v.shape)
      }`,
    );
  }
  const [nq, d] = q.shape.slice(-2);
  const [nk, dk] = k.shape.slice(-2);
  const [nv, dv] = v.shape.slice(-2);
  if (dk !== d || nv !== nk) {
    throw new Error(
      `attention: need q [..., Nq, d], k [..., Nk, d], v [..., Nk, dv]; got q ${formatShape(q.shape)}, k ${
        formatShape(k.shape)
      }, v ${formatShape(v.shape)}`,
    );
  }
  const s = scale ?? 1 / Math.sqrt(d);
  const qb = q.shape.slice(0, -2);
  const kb = k.shape.slice(0, -2);
  const vb = v.shape.slice(0, -2);
  const batch = broadcastShapes(qb, kb, vb);
  const iq = broadcastIndex(qb, batch);
  const ik = broadcastIndex(kb, batch);
  const iv = broadcastIndex(vb, batch);
  const out = new Float64Array(sizeOf(batch) * nq * dv);
  const scores = new Float64Array(nk);
  for (let b = 0; b < iq.length; b++) {
    const qo = iq[b] * nq * d;
    const ko = ik[b] * nk * d;
    const vo = iv[b] * nk * dv;
    for (let i = 0; i < nq; i++) {
      let m = -Infinity;
      for (let j = 0; j < nk; j++) {
        let dot = 0;
        for (let c = 0; c < d; c++) dot += q.data[qo + i * d + c] * k.data[ko + j * d + c];
        scores[j] = dot * s;
        m = Math.max(m, scores[j]);
      }
      let z = 0;
      for (let j = 0; j < nk; j++) {
        scores[j] = Math.exp(scores[j] - m);
        z += scores[j];
      }
      const oo = (b * nq + i) * dv;
      for (let j = 0; j < nk; j++) {
        const p = scores[j] / z;
        for (let c = 0; c < dv; c++) out[oo + c] += p * v.data[vo + j * dv + c];
      }
    }
  }
  return { shape: [...batch, nq, dv], data: out };
}
