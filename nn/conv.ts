/**
 * Convolutions with PyTorch's and MONAI's parameter names: `ConvNd` is `torch.nn.Conv2d`/`Conv3d` (`weight`
 * [Cout, Cin, k…], `bias` [Cout]); `Convolution` is MONAI's `Convolution(conv_only=True)` wrapper, which holds
 * that layer under the name `conv` (so a U-Net's keys read `conv_in.conv.weight`).
 *
 * Also the small helpers the other layers share: {@linkcode Layer} (a module with a one-tensor forward) and
 * {@linkcode liveChild}, which looks sub-layers up by name at call time so that `Module.replaceChild` (adapters
 * wrapping a Linear or a convolution) takes effect.
 *
 * @module
 */

import { conv2d, conv3d } from "../engine/ops/conv.ts";
import { zeros } from "../engine/ops/create.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { defaultInit, seededRandom } from "./init.ts";
import { Module } from "./module.ts";

/** A module with a single-tensor forward: Linear, ConvNd, or an adapter standing in for one. */
export interface Layer extends Module {
  /** Applies the layer. */
  forward(x: Tensor): Tensor;
}

/**
 * The sub-module registered under `name` now (not when the parent was built), so that a layer replaced with
 * `replaceChild` is the one that runs.
 */
export function liveChild<M extends Module = Layer>(parent: Module, name: string): M {
  const m = findChild<M>(parent, name);
  if (!m) throw new Error(`${parent.constructor.name}: no sub-module "${name}".`);
  return m;
}

/** Like {@linkcode liveChild}, for optional sub-modules: undefined when none is registered as `name`. */
export function findChild<M extends Module = Layer>(parent: Module, name: string): M | undefined {
  for (const [n, m] of parent.children()) if (n === name) return m as M;
  return undefined;
}

/** Derives independent child seeds from one seed (deterministic; the values only need to differ). */
export function seedStream(seed: number): () => number {
  const random = seededRandom(seed);
  return () => Math.floor(random() * 2 ** 32);
}

/** Spatial dimensionality of a convolution: 2 (NCHW) or 3 (NCDHW). */
export type SpatialDims = 2 | 3;

/** Options of {@linkcode ConvNd} and {@linkcode Convolution}. */
export interface ConvOptions {
  /** Kernel size along every spatial axis (default 3). */
  kernelSize?: number;
  /** Stride (default 1). */
  stride?: number;
  /** Zero padding on both sides of every spatial axis (default 0). */
  padding?: number;
  /** Add a bias (default true). */
  bias?: boolean;
  /** Seed of the initial weights (default 0). */
  seed?: number;
  /** Start from zero weights and bias (MONAI's `zero_module`, used on a block's last convolution). */
  zeroInit?: boolean;
}

/** Whether an option value is a positive integer (the models' option checks). */
export function isPositiveInt(v: unknown): v is number {
  return Number.isInteger(v) && (v as number) > 0;
}

/** Checks the spatial dimensionality argument of a layer. */
export function checkSpatialDims(layer: string, spatialDims: unknown): SpatialDims {
  if (spatialDims !== 2 && spatialDims !== 3) {
    throw new Error(`${layer}: spatialDims must be 2 or 3, got ${JSON.stringify(spatialDims)}.`);
  }
  return spatialDims;
}

function checkCount(layer: string, what: string, v: unknown, min: number): number {
  if (!Number.isInteger(v) || (v as number) < min) {
    throw new Error(`${layer}: ${what} must be an integer ≥ ${min}, got ${JSON.stringify(v)}.`);
  }
  return v as number;
}

/** A 2-D or 3-D convolution layer (PyTorch `Conv2d`/`Conv3d`, zero padding, no dilation or groups). */
export class ConvNd extends Module {
  /** Weight [outChannels, inChannels, k, k(, k)]. */
  readonly weight: Tensor;
  /** Bias [outChannels], or null. */
  readonly bias: Tensor | null;
  /** Kernel size along every spatial axis. */
  readonly kernelSize: number;
  /** Stride. */
  readonly stride: number;
  /** Zero padding. */
  readonly padding: number;

  /** A convolution from `inChannels` to `outChannels` channels, PyTorch-initialised from `opts.seed`. */
  constructor(
    readonly spatialDims: SpatialDims,
    readonly inChannels: number,
    readonly outChannels: number,
    opts: ConvOptions = {},
  ) {
    super();
    const name = `Conv${spatialDims}d`;
    checkSpatialDims(name, spatialDims);
    checkCount(name, "inChannels", inChannels, 1);
    checkCount(name, "outChannels", outChannels, 1);
    this.kernelSize = checkCount(name, "kernelSize", opts.kernelSize ?? 3, 1);
    this.stride = checkCount(name, "stride", opts.stride ?? 1, 1);
    this.padding = checkCount(name, "padding", opts.padding ?? 0, 0);
    const random = seededRandom(opts.seed ?? 0);
    const kernel = new Array<number>(spatialDims).fill(this.kernelSize);
    const fanIn = inChannels * this.kernelSize ** spatialDims;
    const init = (shape: number[]) => opts.zeroInit ? zeros(shape) : defaultInit(shape, fanIn, random);
    this.weight = this.param("weight", init([outChannels, inChannels, ...kernel]));
    this.bias = (opts.bias ?? true) ? this.param("bias", init([outChannels])) : null;
  }

  /** Applies the convolution to x [N, inChannels, (D,) H, W]. */
  forward(x: Tensor): Tensor {
    if (x.rank !== this.spatialDims + 2 || x.shape[1] !== this.inChannels) {
      const want = this.spatialDims === 3 ? "[N, C, D, H, W]" : "[N, C, H, W]";
      throw new Error(
        `Conv${this.spatialDims}d(${this.inChannels} → ${this.outChannels}): input ${
          formatShape(x.shape)
        } must be ${want} with C = ${this.inChannels}.`,
      );
    }
    const opts = { bias: this.bias ?? undefined, stride: this.stride, padding: this.padding };
    return this.spatialDims === 3 ? conv3d(x, this.weight, opts) : conv2d(x, this.weight, opts);
  }
}

/**
 * MONAI's `Convolution(..., conv_only=True)`: a `ConvNd` registered as `conv`. The layer is looked up at
 * call time, so an adapter installed with `replaceChild("conv", …)` runs in its place.
 */
export class Convolution extends Module {
  /** MONAI's `Convolution(spatial_dims, in_channels, out_channels, conv_only=True)`. */
  constructor(
    readonly spatialDims: SpatialDims,
    readonly inChannels: number,
    readonly outChannels: number,
    opts: ConvOptions = {},
  ) {
    super();
    this.child("conv", new ConvNd(spatialDims, inChannels, outChannels, opts));
  }

  /** The convolution layer currently registered as `conv`. */
  get conv(): Layer {
    return liveChild(this, "conv");
  }

  /** Applies the convolution. */
  forward(x: Tensor): Tensor {
    return this.conv.forward(x);
  }
}
