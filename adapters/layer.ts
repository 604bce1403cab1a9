/**
 * `AdaptedLayer`: a Linear or convolution whose weight is updated by an adapter. It stands in the model in
 * place of the original layer (through `Module.replaceChild`) and registers the original `weight` and `bias`
 * under the same names, so state-dict paths of the base parameters do not change; the cores are added as
 * `<layer>.<core name>` (e.g. `…conv1.conv.tenvoo_weights.3`).
 *
 * Unmerged, each forward builds W + s·(f(T) − f(T*)) from the cores on the GPU (f(T*) under noGrad, from the
 * frozen copy; the term is absent for methods without one) and applies the layer with it, so gradients reach
 * the cores. At the start f(T) and f(T*) are computed identically, so their difference is exactly zero and
 * the adapted layer reproduces the original bit for bit. Merged, the update is folded into the weight and
 * the original layer's forward runs unchanged.
 *
 * @module
 */

import { noGrad, record } from "../engine/autograd.ts";
import { conv2d, conv3d } from "../engine/ops/conv.ts";
import { tensor } from "../engine/ops/create.ts";
import { add } from "../engine/ops/elementwise.ts";
import { copyInto, map } from "../engine/ops/map.ts";
import { matmul } from "../engine/ops/matmul.ts";
import { transpose } from "../engine/ops/view.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { ConvNd } from "../nn/conv.ts";
import { Linear } from "../nn/linear.ts";
import { Module } from "../nn/module.ts";
import type { LayerMethod, WeightShape } from "./method.ts";

/** The layers adapters can wrap. */
export type AdaptableLayer = ConvNd | Linear;

/** True for layers an adapter can wrap (a `ConvNd` or a `Linear`). */
export function isAdaptable(m: Module): m is AdaptableLayer {
  return m instanceof ConvNd || m instanceof Linear;
}

/** Throws when `model` already carries adapters (`op` names the caller in the message). */
export function assertNoAdapters(model: Module, op: string): void {
  const found = model.namedModules().find(([, m]) => m instanceof AdaptedLayer);
  if (found) {
    throw new Error(
      `${op}: the model already has adapters (at "${found[0]}"); remove() them or start from the base model.`,
    );
  }
}

/** The weight shape of an adaptable layer. */
export function weightShapeOf(layer: AdaptableLayer): WeightShape {
  const [out, inn, ...kernel] = layer.weight.shape;
  return { out, in: inn, kernel };
}

/** A plain container, so that cores get dotted names such as `tenvoo_weights.0`. */
class CoreGroup extends Module {
  /** Registers a core. */
  add(name: string, t: Tensor): Tensor {
    return this.param(name, t);
  }
}

/**
 * W + s·(Δ − Δ*) in one kernel (W + s·Δ without a frozen copy). Only Δ receives a gradient (s·g): W and Δ*
 * are frozen by construction, which is checked.
 */
function updatedWeight(weight: Tensor, delta: Tensor, frozen: Tensor | null, scale: number): Tensor {
  if (weight.requiresGrad || frozen?.requiresGrad) {
    throw new Error("AdaptedLayer: the base weight and the frozen copy must not require gradients.");
  }
  const out = frozen
    ? map("adapter_update_frozen", "a + s0 * (b - c)", [weight, delta, frozen], [scale], weight.shape)
    : map("adapter_update", "a + s0 * b", [weight, delta], [scale], weight.shape);
  return record("adapter weight", out, [delta], (g) => [map("adapter_update_grad", "a * s0", [g], [scale])]);
}

/** A Linear or convolution with an adapter on its weight. */
export class AdaptedLayer extends Module {
  /** The original layer (not registered: its parameters are registered here under the same names). */
  readonly base: AdaptableLayer;
  /** The method instantiated for this layer. */
  readonly method: LayerMethod;
  /** The base weight (frozen). */
  readonly weight: Tensor;
  /** The base bias, or null. */
  readonly bias: Tensor | null;
  /** Trainable cores, in the method's order. */
  readonly cores: Tensor[] = [];
  /** Frozen copies of the initial cores (empty for methods without one). */
  readonly frozenCores: Tensor[] = [];
  #mergedWeight: number | null = null;
  #groups = new Map<string, CoreGroup>();

  /**
   * Wraps `base`; the cores start from `method.cores` (the frozen copy from the same values). The base
   * weight is frozen; the bias keeps its `requiresGrad` flag (the caller decides).
   */
  constructor(base: AdaptableLayer, method: LayerMethod) {
    super();
    this.base = base;
    this.method = method;
    const biasFlag = base.bias?.requiresGrad ?? false;
    this.weight = this.param("weight", base.weight);
    this.weight.setRequiresGrad(false);
    this.bias = base.bias ? this.param("bias", base.bias) : null;
    this.bias?.setRequiresGrad(biasFlag);
    for (const core of method.cores) this.cores.push(this.#register(core.name, core.values, core.shape));
    if (method.frozenPrefix) {
      // `tenvoo_weights.3` → `tenvoo_weights2.3`.
      for (const core of method.cores) {
        const name = `${method.frozenPrefix}.${core.name.slice(core.name.indexOf(".") + 1)}`;
        this.frozenCores.push(this.#register(name, core.values, core.shape).setRequiresGrad(false));
      }
    }
  }

  /** Registers a new tensor under `name`, or `group.rest` inside a container named `group`. */
  #register(name: string, values: Float32Array, shape: number[]): Tensor {
    const t = tensor(values, shape);
    const dot = name.indexOf(".");
    if (dot < 0) return this.param(name, t);
    const head = name.slice(0, dot);
    let group = this.#groups.get(head);
    if (!group) {
      group = this.child(head, new CoreGroup());
      this.#groups.set(head, group);
    }
    return group.add(name.slice(dot + 1), t);
  }

  /** The shape of the adapted weight. */
  get weightShape(): WeightShape {
    return weightShapeOf(this.base);
  }

  /** Whether the update is currently folded into the weight. */
  get merged(): boolean {
    return this.#mergedWeight !== null;
  }

  /** Number of trainable adapter elements (the cores). */
  get numAdapterParameters(): number {
    return this.cores.reduce((n, t) => n + t.size, 0);
  }

  /** Number of frozen-copy elements. */
  get numFrozenParameters(): number {
    return this.frozenCores.reduce((n, t) => n + t.size, 0);
  }

  /** s·(f(T) − f(T*)), the current update (no gradients). */
  delta(): Tensor {
    return noGrad(() => {
      const d = this.method.delta(this.cores);
      const dStar = this.frozenCores.length > 0 ? this.method.delta(this.frozenCores) : null;
      const out = dStar
        ? map("adapter_delta_frozen", "s0 * (a - b)", [d, dStar], [this.method.scale])
        : map("adapter_delta", "s0 * a", [d], [this.method.scale]);
      d.dispose();
      dStar?.dispose();
      return out;
    });
  }

  /** W + s·(f(T) − f(T*)) for `weight`; differentiable with respect to the cores. */
  #updated(weight: Tensor): Tensor {
    const d = this.method.delta(this.cores);
    const dStar = this.frozenCores.length > 0 ? noGrad(() => this.method.delta(this.frozenCores)) : null;
    const out = updatedWeight(weight, d, dStar, this.method.scale);
    d.dispose();
    dStar?.dispose();
    return out;
  }

  /** The weight the layer currently computes with (a new tensor). */
  effectiveWeight(): Tensor {
    return this.merged ? map("copy", "a", [this.weight]) : this.#updated(this.weight);
  }

  /** Applies the layer with the updated weight (or the merged one). */
  forward(x: Tensor): Tensor {
    if (this.merged) return this.base.forward(x);
    const base = this.base;
    if (base instanceof Linear) {
      if (x.shape[x.rank - 1] !== base.inFeatures) {
        throw new Error(
          `Linear(${base.inFeatures} → ${base.outFeatures}) + ${this.method.kind}: input ${
            formatShape(x.shape)
          } must end in ${base.inFeatures}.`,
        );
      }
      const w = this.#updated(this.weight);
      const wt = transpose(w);
      const y = matmul(x, wt);
      w.dispose();
      wt.dispose();
      if (!this.bias) return y;
      const out = add(y, this.bias);
      y.dispose();
      return out;
    }
    if (x.rank !== base.spatialDims + 2 || x.shape[1] !== base.inChannels) {
      throw new Error(
        `Conv${base.spatialDims}d(${base.inChannels} → ${base.outChannels}) + ${this.method.kind}: input ${
          formatShape(x.shape)
        } must be [N, ${base.inChannels}, …${base.spatialDims} spatial axes].`,
      );
    }
    const w = this.#updated(this.weight);
    const opts = { bias: this.bias ?? undefined, stride: base.stride, padding: base.padding };
    const y = base.spatialDims === 3 ? conv3d(x, w, opts) : conv2d(x, w, opts);
    w.dispose();
    return y;
  }

  /**
   * Folds `amount`·s·(f(T) − f(T*)) into the weight (in place), after which the forward pass is the original
   * layer's. `amount` scales the update (1 = as trained), e.g. to blend several adapters.
   */
  merge(amount = 1): void {
    if (this.merged) throw new Error("AdaptedLayer.merge: the update is already merged; unmerge() first.");
    this.#fold(amount);
    this.#mergedWeight = amount;
  }

  /** Subtracts the merged update again (exact up to f32 rounding of W + Δ − Δ). */
  unmerge(): void {
    if (this.#mergedWeight === null) throw new Error("AdaptedLayer.unmerge: the update is not merged.");
    this.#fold(-this.#mergedWeight);
    this.#mergedWeight = null;
  }

  #fold(amount: number): void {
    noGrad(() => {
      const d = this.delta();
      // A new tensor, then a copy: WebGPU cannot bind the weight as both input and output of one dispatch.
      const next = map("adapter_fold", "a + s0 * b", [this.weight, d], [amount], this.weight.shape);
      copyInto(this.weight, next);
      d.dispose();
      next.dispose();
    });
  }

  /** Frees the cores and frozen copies (not the base weight and bias, which belong to the model). */
  disposeAdapter(): void {
    for (const t of [...this.cores, ...this.frozenCores]) t.dispose();
  }
}
