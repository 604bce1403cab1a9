/**
 * Optimizers. {@linkcode AdamW} updates each parameter, and its moment estimates, in place with one fused
 * kernel dispatch per parameter tensor. Updates run outside autograd: they record nothing.
 *
 * @module
 */

import { adamwKernel, adamwParams } from "../kernels/optim.ts";
import { WG } from "../kernels/types.ts";
import { keep } from "./memory.ts";
import { zeros } from "./ops/create.ts";
import { contiguous, copyInto } from "./ops/map.ts";
import { dispatch } from "./runtime.ts";
import { formatShape } from "./shape.ts";
import { Tensor } from "./tensor.ts";

/** Hyperparameters of {@linkcode AdamW}; the defaults are PyTorch's. */
export interface AdamWOptions {
  /** Learning rate (default 1e-3). */
  lr?: number;
  /** Decay rates of the first and second moment estimates (default [0.9, 0.999]). */
  betas?: [number, number];
  /** Added to the denominator for numerical stability (default 1e-8). */
  eps?: number;
  /** Decoupled weight decay: each step multiplies parameters by 1 − lr·weightDecay (default 0.01). */
  weightDecay?: number;
}

const kernel = adamwKernel();

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

const finiteNonNegative = (x: number): boolean => Number.isFinite(x) && x >= 0;

function checkOption(name: string, value: number, valid: (x: number) => boolean, accepted: string): void {
  if (typeof value !== "number" || !valid(value)) {
    throw new Error(`AdamW: ${name} ${value} is invalid; accepted: ${accepted}.`);
  }
}

/** Throws unless `p` can be updated in place: a float32 leaf owning all of its (contiguous) storage. */
function checkParam(p: unknown, i: number): Tensor {
  if (!(p instanceof Tensor)) throw new Error(`AdamW: params[${i}] must be a Tensor, got ${typeof p}.`);
  const storage = p.storage(`AdamW: params[${i}]`);
  const what = `AdamW: params[${i}] (${p})`;
  if (p.dtype !== "float32") throw new Error(`${what} has dtype ${p.dtype}; only float32 can be optimized.`);
  if (p.node) {
    throw new Error(
      `${what} is the output of ${p.node.op}, not a leaf tensor; optimize the tensor it came from.`,
    );
  }
  if (!p.isContiguous || p.offset !== 0 || storage.bytes !== p.size * 4) {
    throw new Error(
      `${what} is a view (strides [${p.strides.join(", ")}], offset ${p.offset}) of a larger or ` +
        "reordered buffer; parameters are updated in place and must own their contiguous storage.",
    );
  }
  return p;
}

/**
 * AdamW (Loshchilov & Hutter), with PyTorch's `torch.optim.AdamW` semantics: bias-corrected moment
 * estimates and decoupled weight decay `p ← p − lr·wd·p`. Each {@linkcode AdamW.step} is one fused kernel
 * dispatch per parameter updating the parameter and both moments in place.
 *
 * The moment buffers survive enclosing `scope`s; free them with {@linkcode AdamW.dispose}.
 *
 * @example
 * ```ts
 * const opt = new AdamW([w, b], { lr: 1e-3 });
 * for (let i = 0; i < steps; i++) {
 *   scope(() => {
 *     const grads = grad(loss(w, b), [w, b]);
 *     opt.step(grads);
 *   });
 * }
 * opt.dispose();
 * ```
 */
export class AdamW {
  /** The tensors this optimizer updates, in order. */
  readonly params: readonly Tensor[];
  /** Steps taken so far (the t of the bias corrections 1 − βᵗ). */
  stepCount = 0;
  /** Decay rates of the first and second moments. */
  readonly betas: readonly [number, number];
  /** Denominator stabiliser. */
  readonly eps: number;
  /** Decoupled weight decay factor. */
  readonly weightDecay: number;
  #lr = 0;
  readonly #m: Tensor[];
  readonly #v: Tensor[];
  #disposed = false;

  /** An optimizer over `params`, with zero moment estimates. */
  constructor(params: readonly Tensor[], opts: AdamWOptions = {}) {
    if (!Array.isArray(params) || params.length === 0) {
      throw new Error("AdamW: params must be a non-empty array of tensors.");
    }
    const checked = params.map(checkParam);
    const owner = new Map<GPUBuffer, number>();
    checked.forEach((p, i) => {
      const buffer = p.storage().buffer;
      const j = owner.get(buffer);
      if (j !== undefined) {
        throw new Error(`AdamW: params[${j}] and params[${i}] share storage; each may appear only once.`);
      }
      owner.set(buffer, i);
    });
    const { lr = 1e-3, betas = [0.9, 0.999], eps = 1e-8, weightDecay = 0.01 } = opts;
    if (!Array.isArray(betas) || betas.length !== 2) {
      throw new Error(`AdamW: betas ${JSON.stringify(betas)} is invalid; accepted: [beta1, beta2].`);
    }
    betas.forEach((b, k) => checkOption(`betas[${k}]`, b, (x) => x >= 0 && x < 1, "a number in [0, 1)"));
    checkOption("eps", eps, finiteNonNegative, "a finite number ≥ 0");
    checkOption("weightDecay", weightDecay, finiteNonNegative, "a finite number ≥ 0");
    this.lr = lr;
    this.params = Object.freeze([...checked]);
    this.betas = Object.freeze([betas[0], betas[1]] as [number, number]);
    this.eps = eps;
    this.weightDecay = weightDecay;
    this.#m = checked.map((p) => keep(zeros(p.shape)));
    this.#v = checked.map((p) => keep(zeros(p.shape)));
  }

  /** Learning rate; may be changed between steps (schedules). */
  get lr(): number {
    return this.#lr;
  }

  set lr(value: number) {
    checkOption("lr", value, finiteNonNegative, "a finite number ≥ 0");
    this.#lr = value;
  }

  /**
   * One AdamW step: `grads[i]` is the gradient of `params[i]` (same shape). Updates every parameter and
   * its moments in place — one kernel dispatch per parameter (plus a copy for a non-contiguous gradient).
   * Step after the backward pass: autograd records still to be run share the parameters' storage.
   */
  step(grads: readonly Tensor[]): void {
    this.#checkAlive("step");
    if (!Array.isArray(grads) || grads.length !== this.params.length) {
      throw new Error(
        `AdamW.step: got ${Array.isArray(grads) ? grads.length : typeof grads} gradients for ` +
          `${this.params.length} parameters; pass one gradient per parameter, in order.`,
      );
    }
    // Validate everything before the first update, so that a bad call changes nothing.
    grads.forEach((g, i) => {
      const p = this.params[i];
      p.storage(`AdamW.step: params[${i}]`);
      if (!(g instanceof Tensor)) {
        throw new Error(`AdamW.step: grads[${i}] must be a Tensor, got ${typeof g}.`);
      }
      const buffer = g.storage(`AdamW.step: grads[${i}]`).buffer;
      if (!sameShape(g.shape, p.shape) || g.dtype !== "float32") {
        throw new Error(
          `AdamW.step: grads[${i}] is ${g} but params[${i}] is ${p}; each gradient must be float32 with ` +
            "its parameter's shape.",
        );
      }
      if (buffer === p.storage().buffer) {
        throw new Error(
          `AdamW.step: grads[${i}] shares storage with params[${i}]; pass a separate gradient.`,
        );
      }
    });
    const t = ++this.stepCount;
    const [beta1, beta2] = this.betas;
    // Bias corrections and step factors in float64; the kernel gets them rounded once to f32.
    const factors = {
      decay: 1 - this.#lr * this.weightDecay,
      stepSize: this.#lr / (1 - beta1 ** t),
      beta1,
      beta2,
      invSqrtBias2: 1 / Math.sqrt(1 - beta2 ** t),
      eps: this.eps,
    };
    this.params.forEach((p, i) => {
      if (p.size === 0) return;
      const g = contiguous(grads[i]);
      const params = adamwParams(p.size, g.offset, factors);
      const buffers = [g, p, this.#m[i], this.#v[i]].map((x) => x.storage("AdamW.step").buffer);
      dispatch(kernel, params, buffers, Math.ceil(p.size / WG));
      g.dispose();
    });
  }

  /**
   * The optimizer state for checkpointing: `"m.<i>"` and `"v.<i>"`, the first and second moment estimates
   * of `params[i]` (with {@linkcode AdamW.stepCount}, everything a resumed run needs). The tensors are the
   * optimizer's own, updated in place by each step: read them, do not dispose them.
   */
  state(): Map<string, Tensor> {
    this.#checkAlive("state");
    const state = new Map<string, Tensor>();
    this.#m.forEach((m, i) => state.set(`m.${i}`, m));
    this.#v.forEach((v, i) => state.set(`v.${i}`, v));
    return state;
  }

  /**
   * Restores a state saved with {@linkcode AdamW.state} (the tensors are copied; the caller keeps
   * ownership of `state`) and the number of steps taken.
   */
  loadState(state: Map<string, Tensor>, stepCount: number): void {
    this.#checkAlive("loadState");
    if (!(state instanceof Map)) throw new Error("AdamW.loadState: state must be a Map from AdamW.state().");
    if (!Number.isSafeInteger(stepCount) || stepCount < 0) {
      throw new Error(`AdamW.loadState: stepCount ${stepCount} is invalid; accepted: an integer ≥ 0.`);
    }
    const targets = new Map<string, Tensor>();
    this.#m.forEach((m, i) => targets.set(`m.${i}`, m));
    this.#v.forEach((v, i) => targets.set(`v.${i}`, v));
    const unknown = [...state.keys()].filter((k) => !targets.has(k));
    if (unknown.length > 0) {
      throw new Error(
        `AdamW.loadState: unknown keys ${unknown.join(", ")}; accepted: m.<i> and v.<i> for 0 ≤ i < ` +
          `${this.params.length}.`,
      );
    }
    for (const [key, target] of targets) {
      const src = state.get(key);
      if (!(src instanceof Tensor)) throw new Error(`AdamW.loadState: state has no tensor "${key}".`);
      src.storage(`AdamW.loadState: "${key}"`);
      if (!sameShape(src.shape, target.shape)) {
        throw new Error(
          `AdamW.loadState: "${key}" has shape ${formatShape(src.shape)} but the parameter has ` +
            `${formatShape(target.shape)}.`,
        );
      }
    }
    for (const [key, target] of targets) {
      const src = state.get(key)!;
      if (src !== target) copyInto(target, src);
    }
    this.stepCount = stepCount;
  }

  /** Frees the moment estimates. The optimizer cannot be used afterwards; the parameters are untouched. */
  dispose(): void {
    for (const t of [...this.#m, ...this.#v]) t.dispose();
    this.#disposed = true;
  }

  #checkAlive(method: string): void {
    if (this.#disposed) throw new Error(`AdamW.${method}: the optimizer was disposed.`);
  }
}
