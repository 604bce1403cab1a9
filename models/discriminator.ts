/**
 * `PatchDiscriminator`: MONAI's Patch-GAN discriminator (Pix2PixHD), as MONAI's 3D LDM tutorials train it
 * against an `AutoencoderKL`: the same options (camelCase), parameter names (`initial_conv.conv`, `0.conv`, …,
 * `final_conv.conv`) and forward pass, returning every intermediate like MONAI (the logits last).
 *
 * Normalisation: `"INSTANCE"` (the tutorials repository's choice; PyTorch's InstanceNorm without affine, eps
 * 1e-5) or `"NONE"`. MONAI's default `"BATCH"` needs running statistics, which voxgen's modules do not keep,
 * and is refused with a message saying so.
 *
 * @module
 */

import { scope } from "../engine/memory.ts";
import { maximum, mul } from "../engine/ops/elementwise.ts";
import { tensor, zeros } from "../engine/ops/create.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { checkSpatialDims, ConvNd, liveChild, type SpatialDims } from "../nn/conv.ts";
import { seededRandom } from "../nn/init.ts";
import { Module } from "../nn/module.ts";
import { GroupNorm } from "../nn/norm.ts";

/** LeakyReLU: x for x ≥ 0, slope·x below (0 ≤ slope ≤ 1), as max(x, slope·x). Differentiable. */
export function leakyRelu(x: Tensor, slope: number): Tensor {
  if (!(slope >= 0 && slope <= 1)) throw new Error(`leakyRelu: slope must be in [0, 1], got ${slope}.`);
  return scope(() => maximum(x, mul(x, slope)));
}

/** Normalisation after each middle convolution of the discriminator. */
export type DiscriminatorNorm = "INSTANCE" | "NONE";

/** Constructor options of {@linkcode PatchDiscriminator}: MONAI's arguments in camelCase, same defaults. */
export interface PatchDiscriminatorOptions {
  /** 2 or 3. */
  spatialDims: SpatialDims;
  /** Filters of the first convolution, doubled by each further layer. */
  channels: number;
  /** Image channels. */
  inChannels: number;
  /** Logit channels (default 1). */
  outChannels?: number;
  /** Middle layers (default 3): all stride 2 but the last, which has stride 1. */
  numLayersD?: number;
  /** Kernel size of every convolution but the last (default 4). */
  kernelSize?: number;
  /** LeakyReLU negative slope of the activations (default 0.2, MONAI's). */
  negativeSlope?: number;
  /** Normalisation of the middle layers (default "INSTANCE"; see the module notes about "BATCH"). */
  norm?: DiscriminatorNorm | "BATCH";
  /** Bias in the middle layers (default false). */
  bias?: boolean;
  /** Zero padding of every convolution but the last (default 1). */
  padding?: number;
  /** Dropout; only 0 is supported (default 0). */
  dropout?: number;
  /** Kernel size of the last convolution (default: kernelSize); its padding is ⌊(k − 1)/2⌋. */
  lastConvKernelSize?: number;
  /** Seed of MONAI's N(0, 0.02) initial weights (default 0). */
  seed?: number;
}

/** MONAI's `PatchDiscriminator` option names (snake_case) and voxgen's. */
const MONAI_KEYS: Record<string, keyof PatchDiscriminatorOptions> = {
  spatial_dims: "spatialDims",
  channels: "channels",
  in_channels: "inChannels",
  out_channels: "outChannels",
  num_layers_d: "numLayersD",
  kernel_size: "kernelSize",
  norm: "norm",
  bias: "bias",
  padding: "padding",
  dropout: "dropout",
  last_conv_kernel_size: "lastConvKernelSize",
};

/** Options from a MONAI `PatchDiscriminator(**config)` config (snake_case keys; null means default). */
export function discriminatorOptionsFromMonai(config: Record<string, unknown>): PatchDiscriminatorOptions {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(config)) {
    const name = MONAI_KEYS[key];
    if (!name) {
      throw new Error(
        `discriminatorOptionsFromMonai: unknown or unsupported PatchDiscriminator argument "${key}"; ` +
          `supported: ${Object.keys(MONAI_KEYS).join(", ")}.`,
      );
    }
    if (value !== null) out[name] = typeof value === "string" ? value.toUpperCase() : value;
  }
  return out as unknown as PatchDiscriminatorOptions;
}

/** N(mean, std²) values from a seeded uniform stream (Box–Muller), as a tensor. */
function normalTensor(shape: number[], mean: number, std: number, random: () => number): Tensor {
  const n = shape.reduce((p, d) => p * d, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = 1 - random();
    data[i] = mean + std * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * random());
  }
  return tensor(data, shape);
}

/**
 * A MONAI `Convolution` as the discriminator uses it: `conv` (a ConvNd), then optional instance norm and
 * LeakyReLU (MONAI's "NDA" order; neither has parameters, so the keys are `<name>.conv.weight|bias`).
 */
class ConvLayer extends Module {
  constructor(
    sd: SpatialDims,
    cin: number,
    cout: number,
    opts: {
      kernelSize: number;
      stride: number;
      padding: number;
      bias: boolean;
      norm: boolean;
      slope: number | null;
      random: () => number;
    },
  ) {
    super();
    const conv = this.child(
      "conv",
      new ConvNd(sd, cin, cout, {
        kernelSize: opts.kernelSize,
        stride: opts.stride,
        padding: opts.padding,
        bias: opts.bias,
      }),
    );
    // MONAI's normal_init: weights N(0, 0.02), biases 0.
    const shape = [...conv.weight.shape];
    const init = new Map([["weight", normalTensor(shape, 0, 0.02, opts.random)]]);
    if (opts.bias) init.set("bias", zeros([cout]));
    conv.loadStateDict(init);
    for (const t of init.values()) t.dispose();
    if (opts.norm) this.child("norm", new GroupNorm(cout, cout, { eps: 1e-5, affine: false }));
    this.slope = opts.slope;
  }

  readonly slope: number | null;

  forward(x: Tensor): Tensor {
    return scope(() => {
      let h = liveChild(this, "conv").forward(x);
      const norm = this.children().find(([n]) => n === "norm");
      if (norm) h = (norm[1] as GroupNorm).forward(h);
      return this.slope === null ? h : leakyRelu(h, this.slope);
    });
  }
}

/** MONAI's `PatchDiscriminator`: per-patch real/fake logits of an image. */
export class PatchDiscriminator extends Module {
  /** Number of middle layers. */
  readonly numLayersD: number;
  /** Image channels. */
  readonly inChannels: number;
  /** 2 or 3. */
  readonly spatialDims: SpatialDims;
  readonly #geometry: { k: number; padding: number; lastK: number };

  /** Builds the discriminator (MONAI's layout and initialisation). */
  constructor(opts: PatchDiscriminatorOptions) {
    super();
    const fail = (m: string): never => {
      throw new Error(`PatchDiscriminator: ${m}`);
    };
    const sd = checkSpatialDims("PatchDiscriminator", opts.spatialDims);
    const norm = opts.norm ?? "INSTANCE";
    if (norm === "BATCH") {
      fail(
        'norm "BATCH" (MONAI\'s default) needs running statistics, which voxgen does not keep; use "INSTANCE" ' +
          '(MONAI\'s 3D LDM tutorial) or "NONE".',
      );
    }
    if (norm !== "INSTANCE" && norm !== "NONE") fail(`norm must be "INSTANCE" or "NONE", got ${norm}.`);
    if ((opts.dropout ?? 0) !== 0) fail(`dropout must be 0, got ${opts.dropout}.`);
    for (const key of ["channels", "inChannels"] as const) {
      if (!Number.isInteger(opts[key]) || opts[key] < 1) fail(`${key} must be a positive integer.`);
    }
    const numLayersD = opts.numLayersD ?? 3;
    if (!Number.isInteger(numLayersD) || numLayersD < 1) fail(`numLayersD must be ≥ 1, got ${numLayersD}.`);
    this.numLayersD = numLayersD;
    this.inChannels = opts.inChannels;
    this.spatialDims = sd;
    const k = opts.kernelSize ?? 4;
    const padding = opts.padding ?? 1;
    const slope = opts.negativeSlope ?? 0.2;
    const lastK = opts.lastConvKernelSize ?? k;
    this.#geometry = { k, padding, lastK };
    const random = seededRandom(opts.seed ?? 0);
    const common = { kernelSize: k, padding, slope, random };
    this.child(
      "initial_conv",
      new ConvLayer(sd, opts.inChannels, opts.channels, { ...common, stride: 2, bias: true, norm: false }),
    );
    let cin = opts.channels;
    for (let l = 0; l < numLayersD; l++) {
      const stride = l === numLayersD - 1 ? 1 : 2;
      this.child(
        String(l),
        new ConvLayer(sd, cin, cin * 2, {
          ...common,
          stride,
          bias: opts.bias ?? false,
          norm: norm === "INSTANCE",
        }),
      );
      cin *= 2;
    }
    this.child(
      "final_conv",
      new ConvLayer(sd, cin, opts.outChannels ?? 1, {
        kernelSize: lastK,
        padding: Math.floor((lastK - 1) / 2),
        stride: 1,
        bias: true,
        norm: false,
        slope: null,
        random,
      }),
    );
  }

  /** Every layer's output for x [B, inChannels, …spatial], in order; the last is the logits. */
  forward(x: Tensor): Tensor[] {
    if (x.rank !== this.spatialDims + 2 || x.shape[1] !== this.inChannels) {
      throw new Error(
        `PatchDiscriminator: input ${formatShape(x.shape)} must have ${this.spatialDims} spatial axes and ` +
          `${this.inChannels} channels.`,
      );
    }
    for (const n of x.shape.slice(2)) {
      if (this.outputSize(n) < 1) {
        let smallest = 1;
        while (this.outputSize(smallest) < 1) smallest++;
        throw new Error(
          `PatchDiscriminator: input ${
            formatShape(x.shape)
          } is too small for ${this.numLayersD} layers: every ` +
            `spatial axis needs at least ${smallest} voxels (or use fewer layers, numLayersD).`,
        );
      }
    }
    return scope(() => {
      const outs: Tensor[] = [];
      let h = x;
      for (const [, layer] of this.children()) {
        h = (layer as ConvLayer).forward(h);
        outs.push(h);
      }
      return outs;
    });
  }

  /** Size of the logits along an axis of `n` voxels (< 1: the input is too small). */
  outputSize(n: number): number {
    const { k, padding, lastK } = this.#geometry;
    const conv = (m: number, kernel: number, pad: number, stride: number) =>
      m + 2 * pad < kernel ? 0 : Math.floor((m + 2 * pad - kernel) / stride) + 1;
    let m = conv(n, k, padding, 2);
    for (let l = 0; l < this.numLayersD; l++) m = conv(m, k, padding, l === this.numLayersD - 1 ? 1 : 2);
    return conv(m, lastK, Math.floor((lastK - 1) / 2), 1);
  }

  /** The logits only (the last output), freeing the intermediates. */
  logits(x: Tensor): Tensor {
    return scope(() => {
      const outs = this.forward(x);
      return outs[outs.length - 1];
    });
  }
}
