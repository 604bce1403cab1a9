/**
 * Finite-difference gradients in float64, the ground truth for GPU backward passes that have no exact
 * reference gradient.
 *
 * @module
 */

import { formatShape, type RefTensor } from "../../engine/reference/tensor.ts";

/** Σ y ⊙ g over all elements (y and g must have the same shape). */
function weightedSum(y: RefTensor, g: RefTensor): number {
  if (y.shape.length !== g.shape.length || y.shape.some((d, i) => d !== g.shape[i])) {
    throw new Error(
      `numericGrad: gradOut shape ${formatShape(g.shape)} differs from the output shape ${
        formatShape(y.shape)
      }`,
    );
  }
  let s = 0;
  for (let i = 0; i < y.data.length; i++) s += y.data[i] * g.data[i];
  return s;
}

/**
 * The gradient of L(inputs) = Σ f(inputs) ⊙ gradOut with respect to `inputs[wrt]`, by central differences
 * (L(x + eps·eᵢ) − L(x − eps·eᵢ)) / (2·eps) for each element i, in float64. `gradOut` defaults to ones (then L
 * is the plain sum), but tests should pass a random `gradOut` so that a wrong permutation of the gradient
 * cannot cancel out. The error is O(eps²·f''') from truncation plus about 1e-16·(Σ|terms of L|)/eps from
 * rounding — with the default eps, ~1e-9 absolute for L of order 10-100. For f linear (or multilinear) in the
 * input, truncation is zero and a large eps such as 1e-2 is exact up to rounding. At kinks (relu at 0, max
 * ties, clamp bounds) the result is the average of the one-sided slopes. The caller's tensors are not
 * modified. Cost: 2 evaluations of f per element.
 */
export function numericGrad(
  f: (inputs: RefTensor[]) => RefTensor,
  inputs: RefTensor[],
  wrt: number,
  gradOut?: RefTensor,
  eps = 1e-6,
): RefTensor {
  if (!Number.isInteger(wrt) || wrt < 0 || wrt >= inputs.length) {
    throw new Error(`numericGrad: wrt ${wrt} is not an index into ${inputs.length} inputs`);
  }
  if (!(eps > 0)) throw new Error(`numericGrad: eps ${eps} must be positive`);
  const x = inputs[wrt];
  const work: RefTensor = { shape: [...x.shape], data: new Float64Array(x.data) };
  const args = inputs.map((t, i) => (i === wrt ? work : t));
  let g = gradOut;
  if (g === undefined) {
    const y = f(args);
    g = { shape: [...y.shape], data: new Float64Array(y.data.length).fill(1) };
  }
  const grad = new Float64Array(work.data.length);
  for (let i = 0; i < work.data.length; i++) {
    const v = work.data[i];
    work.data[i] = v + eps;
    const plus = weightedSum(f(args), g);
    work.data[i] = v - eps;
    const minus = weightedSum(f(args), g);
    work.data[i] = v;
    grad[i] = (plus - minus) / (2 * eps);
  }
  return { shape: [...x.shape], data: grad };
}
