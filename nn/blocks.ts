/**
 * The building blocks of MONAI's `DiffusionModelUNet`, with its parameter names:
 *
 * - `ResnetBlock` (`DiffusionUNetResnetBlock`): `norm1`, `conv1.conv`, `time_emb_proj`, `norm2`, `conv2.conv`,
 *   `skip_connection.conv` (only when the channel count changes); optionally up- or down-sampling inside;
 * - `Downsample`: `op.conv` (a stride-2 3×3 convolution) or parameter-free average pooling;
 * - `Upsample` (MONAI's `UpSample(mode="nontrainable")`): nearest ×2, then `postconv.conv`;
 * - `DownBlock`, `MidBlock`, `UpBlock`: `resnets.N`, `attentions.N` (self-attention or spatial transformers),
 *   `downsampler` / `upsampler`; the mid block is `resnet_1`, `attention`, `resnet_2`.
 *
 * Each block runs inside `scope`, so only its outputs outlive a call.
 *
 * @module
 */

import { scope } from "../engine/memory.ts";
import { checkpoint } from "../engine/ops/checkpoint.ts";
import { add, silu } from "../engine/ops/elementwise.ts";
import { avgPool2d, avgPool3d, interpolate } from "../engine/ops/resample.ts";
import { concat, reshape } from "../engine/ops/view.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { SpatialAttentionBlock, SpatialTransformer } from "./attention.ts";
import { Convolution, findChild, liveChild, seedStream, type SpatialDims } from "./conv.ts";
import { Linear } from "./linear.ts";
import { Module, ModuleList } from "./module.ts";
import { GroupNorm } from "./norm.ts";

/** Nearest-neighbour ×2 upsampling (PyTorch `interpolate(scale_factor=2, mode="nearest")`). */
function upsample2(x: Tensor): Tensor {
  return interpolate(x, { scaleFactor: 2, mode: "nearest" });
}

/** 2×2(×2) average pooling with stride 2. */
function avgPool2(x: Tensor, spatialDims: SpatialDims): Tensor {
  return spatialDims === 3 ? avgPool3d(x, 2, 2) : avgPool2d(x, 2, 2);
}

/**
 * Returns `next`, freeing `prev` (the previous stage of a chain) unless it is `keep`: the big feature maps of
 * a block are released as soon as they are consumed instead of at the end of the block's scope. Autograd
 * holds its own references to what backward needs, so this is safe while recording too.
 */
function advance(prev: Tensor, next: Tensor, keep?: Tensor): Tensor {
  if (prev !== next && prev !== keep) prev.dispose();
  return next;
}

/** Normalisation settings shared by every block of a U-Net. */
export interface NormSettings {
  /** GroupNorm groups (default 32). */
  normNumGroups?: number;
  /** GroupNorm epsilon (default 1e-6). */
  normEps?: number;
}

/** Options of {@linkcode ResnetBlock}. */
export interface ResnetBlockOptions extends NormSettings {
  /** Output channels (default: inChannels). */
  outChannels?: number;
  /** Upsample ×2 (nearest) after the first normalisation. */
  up?: boolean;
  /** Downsample ×2 (average pooling) after the first normalisation. */
  down?: boolean;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/**
 * MONAI's `DiffusionUNetResnetBlock`: h = conv1(SiLU(GN(x))) + time_emb_proj(SiLU(emb)), then
 * conv2(SiLU(GN(h))), plus the input (through a 1×1 convolution when the channel count changes). `conv2`
 * starts at zero like MONAI's.
 */
export class ResnetBlock extends Module {
  /** Output channels. */
  readonly outChannels: number;
  /** Whether the block upsamples ×2. */
  readonly up: boolean;
  /** Whether the block downsamples ×2. */
  readonly down: boolean;

  /**
   * Builds the block: `tembChannels` is the width of the time embedding (4 · channels[0] in a U-Net), or 0
   * for a block without one (no `time_emb_proj`; VCM's condition encoder).
   */
  constructor(
    readonly spatialDims: SpatialDims,
    readonly inChannels: number,
    readonly tembChannels: number,
    opts: ResnetBlockOptions = {},
  ) {
    super();
    const seed = seedStream(opts.seed ?? 0);
    const out = opts.outChannels || inChannels;
    this.outChannels = out;
    this.up = opts.up ?? false;
    this.down = !this.up && (opts.down ?? false);
    const groups = opts.normNumGroups ?? 32;
    const eps = opts.normEps ?? 1e-6;
    this.child("norm1", new GroupNorm(groups, inChannels, { eps }));
    this.child("conv1", new Convolution(spatialDims, inChannels, out, { padding: 1, seed: seed() }));
    if (tembChannels > 0) this.child("time_emb_proj", new Linear(tembChannels, out, { seed: seed() }));
    this.child("norm2", new GroupNorm(groups, out, { eps }));
    this.child("conv2", new Convolution(spatialDims, out, out, { padding: 1, seed: seed(), zeroInit: true }));
    if (out !== inChannels) {
      this.child(
        "skip_connection",
        new Convolution(spatialDims, inChannels, out, { kernelSize: 1, seed: seed() }),
      );
    }
  }

  /**
   * x [B, inChannels, …spatial], emb [B, tembChannels] (none when tembChannels is 0) → [B, outChannels,
   * …spatial (×2 or ÷2)].
   */
  forward(x: Tensor, emb?: Tensor): Tensor {
    if (x.rank !== this.spatialDims + 2 || x.shape[1] !== this.inChannels) {
      throw new Error(
        `ResnetBlock(${this.inChannels} → ${this.outChannels}): input ${
          formatShape(x.shape)
        } must have ${this.spatialDims} spatial axes and ${this.inChannels} channels.`,
      );
    }
    if ((emb === undefined) !== (this.tembChannels === 0)) {
      throw new Error(
        `ResnetBlock: ${
          this.tembChannels === 0
            ? "an embedding was given to a block without one"
            : "the time embedding is missing"
        }.`,
      );
    }
    if (
      emb && (emb.rank !== 2 || emb.shape[1] !== this.tembChannels ||
        (emb.shape[0] !== x.shape[0] && emb.shape[0] !== 1))
    ) {
      throw new Error(
        `ResnetBlock: embedding ${formatShape(emb.shape)} must be [${x.shape[0]}, ${this.tembChannels}].`,
      );
    }
    if (this.checkpointing) {
      return emb
        ? checkpoint((xs, es) => this.#body(xs, es), [x, emb], this.parameters())
        : checkpoint((xs) => this.#body(xs), [x], this.parameters());
    }
    return this.#body(x, emb);
  }

  /**
   * Gradient checkpointing: when true, training keeps only this block's inputs and recomputes its
   * activations in backward (less memory, about one more forward of the block per step).
   */
  checkpointing = false;

  #body(x: Tensor, emb?: Tensor): Tensor {
    return scope(() => {
      let h = liveChild<GroupNorm>(this, "norm1").forwardSilu(x);
      let skip = x;
      if (this.up) {
        skip = upsample2(x);
        h = advance(h, upsample2(h));
      } else if (this.down) {
        skip = avgPool2(x, this.spatialDims);
        h = advance(h, avgPool2(h, this.spatialDims));
      }
      h = advance(h, liveChild<Convolution>(this, "conv1").forward(h));
      if (emb) {
        const temb = liveChild(this, "time_emb_proj").forward(silu(emb));
        const ones = new Array<number>(this.spatialDims).fill(1);
        h = advance(h, add(h, reshape(temb, [emb.shape[0], this.outChannels, ...ones])));
      }
      h = advance(h, liveChild<GroupNorm>(this, "norm2").forwardSilu(h));
      h = advance(h, liveChild<Convolution>(this, "conv2").forward(h));
      if (this.outChannels !== this.inChannels) {
        skip = advance(skip, liveChild<Convolution>(this, "skip_connection").forward(skip), x);
      }
      return add(skip, h);
    });
  }
}

/** MONAI's `DiffusionUnetDownsample`: a stride-2 3×3 convolution (`op.conv`), or 2× average pooling. */
export class Downsample extends Module {
  /** Downsamples `numChannels` channels with a convolution (`useConv`) or average pooling. */
  constructor(
    readonly spatialDims: SpatialDims,
    readonly numChannels: number,
    readonly useConv: boolean,
    opts: { outChannels?: number; padding?: number; seed?: number } = {},
  ) {
    super();
    const out = opts.outChannels || numChannels;
    if (useConv) {
      this.child(
        "op",
        new Convolution(spatialDims, numChannels, out, {
          stride: 2,
          padding: opts.padding ?? 1,
          seed: opts.seed,
        }),
      );
    } else if (out !== numChannels) {
      throw new Error(
        `Downsample: outChannels ${out} must equal numChannels ${numChannels} without a convolution.`,
      );
    }
  }

  /** x [B, numChannels, …spatial] → half the spatial size. */
  forward(x: Tensor): Tensor {
    if (x.shape[1] !== this.numChannels) {
      throw new Error(`Downsample: input ${formatShape(x.shape)} must have ${this.numChannels} channels.`);
    }
    return this.useConv ? liveChild<Convolution>(this, "op").forward(x) : avgPool2(x, this.spatialDims);
  }
}

/** MONAI's `UpSample(mode="nontrainable", interp_mode="nearest", scale_factor=2)` with a 3×3 `postconv`. */
export class Upsample extends Module {
  /** Nearest ×2 upsampling of `numChannels` channels, followed by a 3×3 convolution unless `postConv` is false. */
  constructor(
    readonly spatialDims: SpatialDims,
    readonly numChannels: number,
    opts: { postConv?: boolean; seed?: number } = {},
  ) {
    super();
    if (opts.postConv ?? true) {
      this.child(
        "postconv",
        new Convolution(spatialDims, numChannels, numChannels, { padding: 1, seed: opts.seed }),
      );
    }
  }

  /** x [B, C, …spatial] → twice the spatial size. */
  forward(x: Tensor): Tensor {
    const conv = findChild<Convolution>(this, "postconv");
    return conv ? scope(() => conv.forward(upsample2(x))) : upsample2(x);
  }
}

/** What follows each ResnetBlock of a level: nothing, self-attention, or a spatial transformer. */
export type AttentionKind = "none" | "self" | "cross";

/** Attention settings of a level. */
export interface LevelAttention {
  /** The kind of attention after each ResnetBlock. */
  kind: AttentionKind;
  /** Channels per head. */
  numHeadChannels: number;
  /** Transformer blocks per spatial transformer (cross). */
  transformerNumLayers?: number;
  /** Context width (cross). */
  crossAttentionDim?: number;
  /** Dropout of the transformer (cross). */
  dropout?: number;
  /** Apply the self-attention output projection. */
  includeFc?: boolean;
  /** One combined qkv projection for self-attention. */
  useCombinedLinear?: boolean;
}

/** A block applied to a feature map, with an optional context (attention layers). */
type SpatialBlock = SpatialAttentionBlock | SpatialTransformer;

function attentionBlock(
  spatialDims: SpatialDims,
  channels: number,
  att: LevelAttention,
  norm: NormSettings,
  seed: number,
): SpatialBlock {
  if (att.kind === "self") {
    return new SpatialAttentionBlock(spatialDims, channels, {
      numHeadChannels: att.numHeadChannels,
      normNumGroups: norm.normNumGroups,
      normEps: norm.normEps,
      includeFc: att.includeFc,
      useCombinedLinear: att.useCombinedLinear,
      seed,
    });
  }
  return new SpatialTransformer(
    spatialDims,
    channels,
    Math.floor(channels / att.numHeadChannels),
    att.numHeadChannels,
    {
      numLayers: att.transformerNumLayers,
      dropout: att.dropout,
      normNumGroups: norm.normNumGroups,
      normEps: norm.normEps,
      crossAttentionDim: att.crossAttentionDim,
      includeFc: att.includeFc,
      useCombinedLinear: att.useCombinedLinear,
      seed,
    },
  );
}

function applyAttention(block: SpatialBlock, h: Tensor, context?: Tensor): Tensor {
  return block instanceof SpatialTransformer ? block.forward(h, context) : block.forward(h);
}

/** Options of {@linkcode DownBlock}. */
export interface DownBlockOptions extends NormSettings {
  /** ResnetBlocks in the level. */
  numResBlocks: number;
  /** End with a downsampler (all levels but the last). */
  addDownsample: boolean;
  /** Downsample with a ResnetBlock (average pooling inside) instead of a strided convolution. */
  resblockUpdown?: boolean;
  /** Attention after each ResnetBlock. */
  attention: LevelAttention;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/** Output of {@linkcode DownBlock.forward}. */
export interface DownBlockOutput {
  /** The level's output (after the downsampler, if any). */
  h: Tensor;
  /** Every intermediate the up path concatenates back: one per ResnetBlock, plus the downsampled output. */
  states: Tensor[];
}

/** MONAI's `DownBlock` / `AttnDownBlock` / `CrossAttnDownBlock`: one encoder level. */
export class DownBlock extends Module {
  /** An encoder level from `inChannels` to `outChannels` channels. */
  constructor(
    readonly spatialDims: SpatialDims,
    readonly inChannels: number,
    readonly outChannels: number,
    tembChannels: number,
    opts: DownBlockOptions,
  ) {
    super();
    const seed = seedStream(opts.seed ?? 0);
    const norm = { normNumGroups: opts.normNumGroups, normEps: opts.normEps };
    const resnets = new ModuleList<ResnetBlock>();
    const attentions = new ModuleList<SpatialBlock>();
    for (let i = 0; i < opts.numResBlocks; i++) {
      const cin = i === 0 ? inChannels : outChannels;
      resnets.push(new ResnetBlock(spatialDims, cin, tembChannels, { ...norm, outChannels, seed: seed() }));
      if (opts.attention.kind !== "none") {
        attentions.push(attentionBlock(spatialDims, outChannels, opts.attention, norm, seed()));
      }
    }
    // MONAI registers the attentions first in its attention blocks; the order only affects stateDict().
    if (opts.attention.kind !== "none") this.child("attentions", attentions);
    this.child("resnets", resnets);
    if (opts.addDownsample) {
      this.child(
        "downsampler",
        opts.resblockUpdown
          ? new ResnetBlock(spatialDims, outChannels, tembChannels, { ...norm, down: true, seed: seed() })
          : new Downsample(spatialDims, outChannels, true, { seed: seed() }),
      );
    }
  }

  /** Runs the level on h with the time embedding (and context for cross-attention). */
  forward(h: Tensor, temb: Tensor, context?: Tensor): DownBlockOutput {
    const resnets = liveChild<ModuleList<ResnetBlock>>(this, "resnets").items;
    const attentions = findChild<ModuleList<SpatialBlock>>(this, "attentions")?.items ?? [];
    const states: Tensor[] = [];
    resnets.forEach((resnet, i) => {
      h = scope(() => {
        const r = resnet.forward(h, temb);
        return attentions[i] ? applyAttention(attentions[i], r, context) : r;
      });
      states.push(h);
    });
    const down = findChild<ResnetBlock | Downsample>(this, "downsampler");
    if (down) {
      h = down instanceof ResnetBlock ? down.forward(h, temb) : down.forward(h);
      states.push(h);
    }
    return { h, states };
  }
}

/** Options of {@linkcode MidBlock}. */
export interface MidBlockOptions extends NormSettings {
  /** Attention between the two ResnetBlocks ("self" or "cross"). */
  attention: LevelAttention;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/** MONAI's `AttnMidBlock` / `CrossAttnMidBlock`: ResnetBlock, attention, ResnetBlock. */
export class MidBlock extends Module {
  /** The bottleneck at `channels` channels. */
  constructor(
    readonly spatialDims: SpatialDims,
    channels: number,
    tembChannels: number,
    opts: MidBlockOptions,
  ) {
    super();
    const seed = seedStream(opts.seed ?? 0);
    const norm = { normNumGroups: opts.normNumGroups, normEps: opts.normEps };
    this.child("resnet_1", new ResnetBlock(spatialDims, channels, tembChannels, { ...norm, seed: seed() }));
    this.child("attention", attentionBlock(spatialDims, channels, opts.attention, norm, seed()));
    this.child("resnet_2", new ResnetBlock(spatialDims, channels, tembChannels, { ...norm, seed: seed() }));
  }

  /** h [B, C, …spatial] → same shape. */
  forward(h: Tensor, temb: Tensor, context?: Tensor): Tensor {
    return scope(() => {
      const r = liveChild<ResnetBlock>(this, "resnet_1").forward(h, temb);
      const a = applyAttention(liveChild<SpatialBlock>(this, "attention"), r, context);
      return liveChild<ResnetBlock>(this, "resnet_2").forward(a, temb);
    });
  }
}

/** Options of {@linkcode UpBlock}. */
export interface UpBlockOptions extends NormSettings {
  /** ResnetBlocks in the level (MONAI: the encoder level's count + 1). */
  numResBlocks: number;
  /** End with an upsampler (all levels but the last). */
  addUpsample: boolean;
  /** Upsample with a ResnetBlock (nearest inside) instead of nearest + convolution. */
  resblockUpdown?: boolean;
  /** Attention after each ResnetBlock. */
  attention: LevelAttention;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/**
 * MONAI's `UpBlock` / `AttnUpBlock` / `CrossAttnUpBlock`: one decoder level. Each ResnetBlock sees the
 * previous output concatenated with one skip tensor ([h, skip] along channels), taken from the end.
 */
export class UpBlock extends Module {
  /** A decoder level: `prevOutputChannels` come from below, skips bring `outChannels` (or `inChannels` for the last one). */
  constructor(
    readonly spatialDims: SpatialDims,
    inChannels: number,
    prevOutputChannels: number,
    readonly outChannels: number,
    tembChannels: number,
    opts: UpBlockOptions,
  ) {
    super();
    const seed = seedStream(opts.seed ?? 0);
    const norm = { normNumGroups: opts.normNumGroups, normEps: opts.normEps };
    const resnets = new ModuleList<ResnetBlock>();
    const attentions = new ModuleList<SpatialBlock>();
    for (let i = 0; i < opts.numResBlocks; i++) {
      const skipChannels = i === opts.numResBlocks - 1 ? inChannels : outChannels;
      const cin = (i === 0 ? prevOutputChannels : outChannels) + skipChannels;
      resnets.push(new ResnetBlock(spatialDims, cin, tembChannels, { ...norm, outChannels, seed: seed() }));
      if (opts.attention.kind !== "none") {
        attentions.push(attentionBlock(spatialDims, outChannels, opts.attention, norm, seed()));
      }
    }
    // Registration order as in MONAI (it differs between its self- and cross-attention up blocks).
    if (opts.attention.kind === "cross") this.child("attentions", attentions);
    this.child("resnets", resnets);
    if (opts.attention.kind === "self") this.child("attentions", attentions);
    if (opts.addUpsample) {
      this.child(
        "upsampler",
        opts.resblockUpdown
          ? new ResnetBlock(spatialDims, outChannels, tembChannels, { ...norm, up: true, seed: seed() })
          : new Upsample(spatialDims, outChannels, { seed: seed() }),
      );
    }
  }

  /** Number of skip tensors the level consumes. */
  get numResBlocks(): number {
    return liveChild<ModuleList<ResnetBlock>>(this, "resnets").length;
  }

  /** Runs the level; `skips` holds exactly `numResBlocks` tensors, consumed from the last. */
  forward(h: Tensor, skips: readonly Tensor[], temb: Tensor, context?: Tensor): Tensor {
    const resnets = liveChild<ModuleList<ResnetBlock>>(this, "resnets").items;
    if (skips.length !== resnets.length) {
      throw new Error(`UpBlock: ${skips.length} skip tensors given, ${resnets.length} needed.`);
    }
    const attentions = findChild<ModuleList<SpatialBlock>>(this, "attentions")?.items ?? [];
    let cur = h;
    resnets.forEach((resnet, i) => {
      const next = scope(() => {
        const r = resnet.forward(concat([cur, skips[skips.length - 1 - i]], 1), temb);
        return attentions[i] ? applyAttention(attentions[i], r, context) : r;
      });
      cur = advance(cur, next, h);
    });
    const up = findChild<ResnetBlock | Upsample>(this, "upsampler");
    if (up) cur = advance(cur, up instanceof ResnetBlock ? up.forward(cur, temb) : up.forward(cur), h);
    return cur;
  }
}
