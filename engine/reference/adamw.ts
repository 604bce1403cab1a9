/**
 * Reference AdamW step in float64, following `torch.optim.AdamW` (Loshchilov & Hutter, "Decoupled Weight
 * Decay Regularization"): with t the step number (from 1),
 *
 *   p ← p − lr·wd·p
 *   m ← β1·m + (1 − β1)·g,          v ← β2·v + (1 − β2)·g²
 *   p ← p − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + eps)
 *
 * @module
 */

/** AdamW hyperparameters (all required here; the engine's optimizer has PyTorch's defaults). */
export interface AdamWRefOptions {
  /** Learning rate of this step. */
  lr: number;
  /** Decay rate of the first moment. */
  beta1: number;
  /** Decay rate of the second moment. */
  beta2: number;
  /** Added to the denominator √v̂. */
  eps: number;
  /** Decoupled weight decay: p ← p − lr·weightDecay·p. */
  weightDecay: number;
}

/** The optimizer state of one parameter: first and second moments and the number of steps taken. */
export interface AdamWRefState {
  /** First moment estimate (exponential average of gradients). */
  m: Float64Array;
  /** Second moment estimate (exponential average of squared gradients). */
  v: Float64Array;
  /** Steps taken so far. */
  step: number;
}

/** Fresh state (zero moments, no steps) for a parameter of `n` elements. */
export function adamwRefState(n: number): AdamWRefState {
  return { m: new Float64Array(n), v: new Float64Array(n), step: 0 };
}

/** One AdamW step: updates `param` and `state` in place from the gradient `grad`. */
export function adamwStepRef(
  param: Float64Array,
  grad: ArrayLike<number>,
  state: AdamWRefState,
  opts: AdamWRefOptions,
): void {
  if (grad.length !== param.length || state.m.length !== param.length) {
    throw new Error(`adamwStepRef: param (${param.length}), grad (${grad.length}) and state lengths differ`);
  }
  const { lr, beta1, beta2, eps, weightDecay } = opts;
  const t = ++state.step;
  const bias1 = 1 - beta1 ** t;
  const bias2 = 1 - beta2 ** t;
  for (let i = 0; i < param.length; i++) {
    const g = grad[i];
    param[i] -= lr * weightDecay * param[i];
    state.m[i] = beta1 * state.m[i] + (1 - beta1) * g;
    state.v[i] = beta2 * state.v[i] + (1 - beta2) * g * g;
    param[i] -= (lr / bias1) * state.m[i] / (Math.sqrt(state.v[i]) / Math.sqrt(bias2) + eps);
  }
}
