/**
 * The blocks of MONAI's `AutoencoderKL` that the diffusion U-Net does not have, with MONAI's parameter names:
 *
 * - `AEKLResBlock`: `norm1`, `conv1.conv`, `norm2`, `conv2.conv`, `nin_shortcut.conv` (only when the channel
 *   count changes); no time embedding and no zero-initialised convolution, unlike the U-Net's ResnetBlock;
 * - `AEKLDownsample`: zero padding of one voxel at the end of every spatial axis, then a stride-2 3×3
 *   convolution without padding (`conv.conv`);
 * - `ConvTranspose`: PyTorch's `ConvTranspose2d`/`3d` with kernel = stride (MONAI's `UpSample(mode="deconv")`,
 *   key `deconv`), built from a matrix product and a voxel shuffle, so its gradient is the existing ops'.
 *
 * The nearest-neighbour upsampling (`postconv`) and the attention are the U-Net's
 * (`Upsample`, `SpatialAttentionBlock`).
 *
 * @module
 */

import { scope } from "../engine/memory.ts";
import { checkpoint } from "../engine/ops/checkpoint.ts";
import { add } from "../engine/ops/elementwise.ts";
import { matmul } from "../engine/ops/matmul.ts";
import { pad, permute, reshape } from "../engine/ops/view.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { Convolution, liveChild, seedStream, type SpatialDims } from "./conv.ts";
import { defaultInit, seededRandom } from "./init.ts";
import { Module } from "./module.ts";
import { GroupNorm } from "./norm.ts";

/** Options of {@linkcode AEKLResBlock}. */
export interface AEKLResBlockOptions {
  /** GroupNorm groups (default 32). */
  normNumGroups?: number;
  /** GroupNorm epsilon (default 1e-6). */
  normEps?: number;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/** MONAI's `AEKLResBlock`: conv2(SiLU(GN(conv1(SiLU(GN(x)))))) plus the input (1×1 conv if channels change). */
export class AEKLResBlock extends Module {
  /** A residual block from `inChannels` to `outChannels`. */
  constructor(
    readonly spatialDims: SpatialDims,
    readonly inChannels: number,
    readonly outChannels: number,
    opts: AEKLResBlockOptions = {},
  ) {
    super();
    const seed = seedStream(opts.seed ?? 0);
    const groups = opts.normNumGroups ?? 32;
    const eps = opts.normEps ?? 1e-6;
    this.child("norm1", new GroupNorm(groups, inChannels, { eps }));
    this.child("conv1", new Convolution(spatialDims, inChannels, outChannels, { padding: 1, seed: seed() }));
    this.child("norm2", new GroupNorm(groups, outChannels, { eps }));
    this.child("conv2", new Convolution(spatialDims, outChannels, outChannels, { padding: 1, seed: seed() }));
    if (inChannels !== outChannels) {
      this.child(
        "nin_shortcut",
        new Convolution(spatialDims, inChannels, outChannels, { kernelSize: 1, seed: seed() }),
      );
    }
  }

  /** x [B, inChannels, …spatial] → [B, outChannels, …spatial]. */
  forward(x: Tensor): Tensor {
    if (x.rank !== this.spatialDims + 2 || x.shape[1] !== this.inChannels) {
      throw new Error(
        `AEKLResBlock(${this.inChannels} → ${this.outChannels}): input ${
          formatShape(x.shape)
        } must have ${this.spatialDims} spatial axes and ${this.inChannels} channels.`,
      );
    }
    return this.checkpointing ? checkpoint((xs) => this.#body(xs), [x], this.parameters()) : this.#body(x);
  }

  /**
   * Gradient checkpointing: when true, training keeps only this block's input and recomputes its
   * activations in backward (less memory, about one more forward of the block per step).
   */
  checkpointing = false;

  #body(x: Tensor): Tensor {
    return scope(() => {
      const a = liveChild<GroupNorm>(this, "norm1").forwardSilu(x);
      const b = liveChild<Convolution>(this, "conv1").forward(a);
      a.dispose();
      const c = liveChild<GroupNorm>(this, "norm2").forwardSilu(b);
      b.dispose();
      const h = liveChild<Convolution>(this, "conv2").forward(c);
      c.dispose();
      const skip = this.inChannels === this.outChannels
        ? x
        : liveChild<Convolution>(this, "nin_shortcut").forward(x);
      return add(skip, h);
    });
  }
}

/** MONAI's `AEKLDownsample`: pad (0, 1) on every spatial axis, then a 3×3 stride-2 convolution (n → ⌈n/2⌉). */
export class AEKLDownsample extends Module {
  /** Downsamples `channels` channels. */
  constructor(readonly spatialDims: SpatialDims, readonly channels: number, opts: { seed?: number } = {}) {
    super();
    this.child("conv", new Convolution(spatialDims, channels, channels, { stride: 2, seed: opts.seed }));
  }

  /** x [B, C, …spatial] → [B, C, …⌊(n − 1)/2⌋ + 1]. */
  forward(x: Tensor): Tensor {
    if (x.rank !== this.spatialDims + 2 || x.shape[1] !== this.channels) {
      throw new Error(`AEKLDownsample: input ${formatShape(x.shape)} must have ${this.channels} channels.`);
    }
    return scope(() => {
      const pads: Array<[number, number]> = [[0, 0], [0, 0]];
      for (let i = 0; i < this.spatialDims; i++) pads.push([0, 1]);
      return liveChild<Convolution>(this, "conv").forward(pad(x, pads));
    });
  }
}

/**
 * PyTorch's `ConvTranspose2d`/`ConvTranspose3d(in, out, kernel_size=k, stride=k)` (no padding, the only kind
 * MONAI's `UpSample(mode="deconv")` builds): every input voxel spreads into its own k×k(×k) output block, so
 * y = shuffle(x·W) exactly, with W [inChannels, outChannels, k, k(, k)] as in PyTorch.
 */
export class ConvTranspose extends Module {
  /** Weight [inChannels, outChannels, k, k(, k)]. */
  readonly weight: Tensor;
  /** Bias [outChannels]. */
  readonly bias: Tensor;

  /** A transposed convolution with kernel size and stride `scale`, PyTorch-initialised from `opts.seed`. */
  constructor(
    readonly spatialDims: SpatialDims,
    readonly inChannels: number,
    readonly outChannels: number,
    readonly scale = 2,
    opts: { seed?: number } = {},
  ) {
    super();
    if (!Number.isInteger(scale) || scale < 1) {
      throw new Error(`ConvTranspose: the kernel size (= stride) must be a positive integer, got ${scale}.`);
    }
    const random = seededRandom(opts.seed ?? 0);
    const kernel = new Array<number>(spatialDims).fill(scale);
    // PyTorch computes a transposed convolution's fan-in from weight.shape[1] (outChannels) · kernel volume.
    const fanIn = outChannels * scale ** spatialDims;
    this.weight = this.param("weight", defaultInit([inChannels, outChannels, ...kernel], fanIn, random));
    this.bias = this.param("bias", defaultInit([outChannels], fanIn, random));
  }

  /** x [B, inChannels, …n] → [B, outChannels, …scale·n]. */
  forward(x: Tensor): Tensor {
    const sd = this.spatialDims;
    if (x.rank !== sd + 2 || x.shape[1] !== this.inChannels) {
      throw new Error(
        `ConvTranspose(${this.inChannels} → ${this.outChannels}): input ${
          formatShape(x.shape)
        } must have ${sd} spatial axes and ${this.inChannels} channels.`,
      );
    }
    const k = this.scale;
    const [b, cin] = x.shape;
    const spatial = x.shape.slice(2);
    const taps = k ** sd;
    return scope(() => {
      // [B, C, …n] → [B·N, C] · [C, Cout·taps] → [B, …n, Cout, …k].
      const tokens = reshape(permute(x, [0, ...spatial.map((_, i) => i + 2), 1]), [-1, cin]);
      const w = reshape(this.weight, [cin, this.outChannels * taps]);
      const y = reshape(matmul(tokens, w), [b, ...spatial, this.outChannels, ...new Array(sd).fill(k)]);
      // Interleave each axis with its kernel axis: [B, Cout, n0, k, n1, k, (n2, k)].
      const perm = [0, sd + 1];
      for (let i = 0; i < sd; i++) perm.push(1 + i, sd + 2 + i);
      const out = reshape(permute(y, perm), [b, this.outChannels, ...spatial.map((n) => n * k)]);
      return add(out, reshape(this.bias, [this.outChannels, ...new Array(sd).fill(1)]));
    });
  }
}

/** MONAI's `UpSample(mode="deconv")` as the autoencoder builds it: a `ConvTranspose` ×2 registered as `deconv`. */
export class DeconvUpsample extends Module {
  /** Upsamples `channels` channels ×2 with a learned transposed convolution. */
  constructor(readonly spatialDims: SpatialDims, readonly channels: number, opts: { seed?: number } = {}) {
    super();
    this.child("deconv", new ConvTranspose(spatialDims, channels, channels, 2, opts));
  }

  /** x [B, C, …n] → [B, C, …2n]. */
  forward(x: Tensor): Tensor {
    return liveChild<ConvTranspose>(this, "deconv").forward(x);
  }
}
