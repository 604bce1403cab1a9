/**
 * Normalisation layers with PyTorch semantics: group norm and layer norm. Statistics are two-pass (mean,
 * then the mean of squared deviations) in float64, with the biased variance as PyTorch uses.
 *
 * @module
 */

import { checkTensor, formatShape, type RefTensor } from "./tensor.ts";

/** Normalises each contiguous block of `block` elements of `data` in place: (v − mean)/√(var + eps). */
function normalizeBlocks(data: Float64Array, block: number, eps: number): void {
  if (block <= 0) return;
  for (let start = 0; start < data.length; start += block) {
    let m = 0;
    for (let i = start; i < start + block; i++) m += data[i];
    m /= block;
    let v = 0;
    for (let i = start; i < start + block; i++) v += (data[i] - m) * (data[i] - m);
    v /= block;
    const r = 1 / Math.sqrt(v + eps);
    for (let i = start; i < start + block; i++) data[i] = (data[i] - m) * r;
  }
}

/**
 * PyTorch `F.group_norm`: x [N, C, ...spatial] (rank ≥ 2). The C channels are split into `numGroups`
 * consecutive groups; each (sample, group) is normalised over its channels and all spatial positions with
 * its own mean and biased variance, y = (x − μ)/√(σ² + eps), then the per-channel affine y·weight[c] + bias[c]
 * is applied (weight and bias have shape [C]; either may be omitted).
 */
export function groupNorm(
  x: RefTensor,
  numGroups: number,
  weight?: RefTensor | null,
  bias?: RefTensor | null,
  eps = 1e-5,
): RefTensor {
  checkTensor(x, "groupNorm: x");
  if (x.shape.length < 2) throw new Error(`groupNorm: x must be [N, C, ...], got ${formatShape(x.shape)}`);
  const c = x.shape[1];
  if (!Number.isInteger(numGroups) || numGroups < 1 || c % numGroups !== 0) {
    throw new Error(`groupNorm: numGroups ${numGroups} must be a positive divisor of C = ${c}`);
  }
  for (const [name, t] of [["weight", weight], ["bias", bias]] as const) {
    if (t && (checkTensor(t, `groupNorm: ${name}`).shape.length !== 1 || t.shape[0] !== c)) {
      throw new Error(`groupNorm: ${name} must have shape [${c}], got ${formatShape(t.shape)}`);
    }
  }
  const spatial = x.shape.slice(2).reduce((p, d) => p * d, 1);
  // In row-major [N, C, ...] order, each (n, group) is one contiguous block of (C / G)·spatial elements.
  const data = new Float64Array(x.data);
  normalizeBlocks(data, (c / numGroups) * spatial, eps);
  if (weight || bias) {
    for (let i = 0; i < data.length; i++) {
      const ch = Math.floor(i / spatial) % c;
      data[i] = data[i] * (weight ? weight.data[ch] : 1) + (bias ? bias.data[ch] : 0);
    }
  }
  return { shape: [...x.shape], data };
}

/**
 * PyTorch `F.layer_norm`: normalises over the trailing axes given by `normalizedShape` (which must equal
 * the last axes of x), with biased variance, then applies the element-wise affine weight/bias of shape
 * `normalizedShape` (either may be omitted).
 */
export function layerNorm(
  x: RefTensor,
  normalizedShape: readonly number[],
  weight?: RefTensor | null,
  bias?: RefTensor | null,
  eps = 1e-5,
): RefTensor {
  checkTensor(x, "layerNorm: x");
  const k = normalizedShape.length;
  const tail = x.shape.slice(x.shape.length - k);
  if (k === 0 || k > x.shape.length || tail.some((d, i) => d !== normalizedShape[i])) {
    throw new Error(
      `layerNorm: normalizedShape ${formatShape(normalizedShape)} must be the trailing shape of x ${
        formatShape(x.shape)
      }`,
    );
  }
  for (const [name, t] of [["weight", weight], ["bias", bias]] as const) {
    if (
      t &&
      (checkTensor(t, `layerNorm: ${name}`).shape.length !== k ||
        t.shape.some((d, i) => d !== normalizedShape[i]))
    ) {
      throw new Error(
        `layerNorm: ${name} must have shape ${formatShape(normalizedShape)}, got ${formatShape(t.shape)}`,
      );
    }
  }
  const block = normalizedShape.reduce((p, d) => p * d, 1);
  const data = new Float64Array(x.data);
  normalizeBlocks(data, block, eps);
  if (weight || bias) {
    for (let i = 0; i < data.length; i++) {
      const j = i % block;
      data[i] = data[i] * (weight ? weight.data[j] : 1) + (bias ? bias.data[j] : 0);
    }
  }
  return { shape: [...x.shape], data };
}
