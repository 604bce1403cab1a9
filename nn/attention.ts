/**
 * Attention layers of MONAI's diffusion U-Net, with the parameter names of current MONAI:
 *
 * - `SelfAttention` (MONAI `SABlock`): `to_q`, `to_k`, `to_v` (or one combined `qkv`), `out_proj`;
 * - `CrossAttention` (MONAI `CrossAttentionBlock`): `to_q`, `to_k`, `to_v`, `out_proj`;
 * - `SpatialAttentionBlock`: `norm` (GroupNorm) and `attn` (a SelfAttention with biases) over the voxels;
 * - `GegluMlp` (MONAI `MLPBlock(act="GEGLU")`): `linear1` (to 2·hidden), `linear2`;
 * - `TransformerBlock` (MONAI `DiffusionUNetTransformerBlock`): `attn1`, `ff`, `attn2`, `norm1..3`;
 * - `SpatialTransformer`: `norm`, `proj_in.conv`, `transformer_blocks.N`, `proj_out.conv`.
 *
 * Heads are computed by the fused attention op (`[B, heads, N, d]`, the N×N matrix is never stored), so
 * MONAI's `use_flash_attention` makes no difference here and `upcast_attention` is implied (all float32).
 *
 * @module
 */

import { attention } from "../engine/ops/attention.ts";
import { add, gelu, mul } from "../engine/ops/elementwise.ts";
import { expand, permute, reshape, slice, transpose } from "../engine/ops/view.ts";
import { scope } from "../engine/memory.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { Convolution, liveChild, seedStream, type SpatialDims } from "./conv.ts";
import { Linear } from "./linear.ts";
import { Module, ModuleList } from "./module.ts";
import { GroupNorm, LayerNorm } from "./norm.ts";

/** Throws when dropout would be needed: the fused attention kernel has no attention-weight dropout. */
function checkDropout(layer: Module, rate: number): void {
  if (rate > 0 && layer.training) {
    throw new Error(
      `${layer.constructor.name}: dropout ${rate} in training mode is not supported (the fused attention ` +
        "kernel cannot drop attention weights). Call .eval() for inference, or train with dropout 0.",
    );
  }
}

function checkDropoutRate(layer: string, rate: number): number {
  if (!(rate >= 0 && rate <= 1)) throw new Error(`${layer}: dropout must be in [0, 1], got ${rate}.`);
  return rate;
}

/** [B, N, heads·d] → [B, heads, N, d] (a view). */
function splitHeads(x: Tensor, heads: number): Tensor {
  const [b, n, c] = x.shape;
  const r = reshape(x, [b, n, heads, c / heads]);
  const out = permute(r, [0, 2, 1, 3]);
  r.dispose();
  return out;
}

/** [B, heads, N, d] → [B, N, heads·d]. */
function mergeHeads(x: Tensor): Tensor {
  const [b, h, n, d] = x.shape;
  const p = permute(x, [0, 2, 1, 3]);
  const out = reshape(p, [b, n, h * d]);
  p.dispose();
  return out;
}

function checkTokens(layer: string, x: Tensor, width: number, what = "x"): void {
  if (x.rank !== 3 || x.shape[2] !== width) {
    throw new Error(`${layer}: ${what} ${formatShape(x.shape)} must be [B, N, ${width}].`);
  }
}

/** Options of {@linkcode SelfAttention}. */
export interface SelfAttentionOptions {
  /** Width of the attention (heads·dimHead when dimHead is given). */
  hiddenSize: number;
  /** Number of heads. */
  numHeads: number;
  /** Channels per head (default hiddenSize / numHeads). */
  dimHead?: number;
  /** Width of the input tokens (default hiddenSize). */
  hiddenInputSize?: number;
  /** Biases on the q, k, v projections (default false, MONAI's). */
  qkvBias?: boolean;
  /** Project the heads back with `out_proj` (default true). Without it the output has the inner width. */
  includeFc?: boolean;
  /** One `qkv` Linear instead of `to_q`, `to_k`, `to_v` (default false). */
  useCombinedLinear?: boolean;
  /** Dropout rate (default 0; only 0 is supported in training mode). */
  dropout?: number;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/** MONAI's `SABlock`: multi-head self-attention over tokens [B, N, C]. */
export class SelfAttention extends Module {
  /** Number of heads. */
  readonly numHeads: number;
  /** Channels per head. */
  readonly dimHead: number;
  /** numHeads · dimHead. */
  readonly innerDim: number;
  /** Width of the input tokens. */
  readonly inputSize: number;
  /** Whether `out_proj` is applied. */
  readonly includeFc: boolean;
  /** Whether q, k, v come from one `qkv` Linear. */
  readonly useCombinedLinear: boolean;
  /** Dropout rate. */
  readonly dropout: number;

  /** Builds the projections (`to_q`/`to_k`/`to_v` or `qkv`, and `out_proj`). */
  constructor(opts: SelfAttentionOptions) {
    super();
    const { hiddenSize, numHeads } = opts;
    if (!Number.isInteger(numHeads) || numHeads < 1 || !Number.isInteger(hiddenSize) || hiddenSize < 1) {
      throw new Error(
        `SelfAttention: hiddenSize (${hiddenSize}) and numHeads (${numHeads}) must be positive.`,
      );
    }
    if (hiddenSize % numHeads !== 0) {
      throw new Error(`SelfAttention: hiddenSize ${hiddenSize} must be divisible by numHeads ${numHeads}.`);
    }
    this.numHeads = numHeads;
    this.dimHead = opts.dimHead || hiddenSize / numHeads;
    this.innerDim = numHeads * this.dimHead;
    this.inputSize = opts.hiddenInputSize || hiddenSize;
    this.includeFc = opts.includeFc ?? true;
    this.useCombinedLinear = opts.useCombinedLinear ?? false;
    this.dropout = checkDropoutRate("SelfAttention", opts.dropout ?? 0);
    const seed = seedStream(opts.seed ?? 0);
    const bias = opts.qkvBias ?? false;
    // Registration order follows MONAI's, so stateDict() lists keys like torch's state_dict.
    if (this.includeFc) this.child("out_proj", new Linear(this.innerDim, this.inputSize, { seed: seed() }));
    if (this.useCombinedLinear) {
      this.child("qkv", new Linear(this.inputSize, 3 * this.innerDim, { bias, seed: seed() }));
    } else {
      for (const name of ["to_q", "to_k", "to_v"]) {
        this.child(name, new Linear(this.inputSize, this.innerDim, { bias, seed: seed() }));
      }
    }
  }

  /** x [B, N, inputSize] → [B, N, inputSize] (or [B, N, innerDim] without `out_proj`). */
  forward(x: Tensor): Tensor {
    checkTokens("SelfAttention", x, this.inputSize);
    checkDropout(this, this.dropout);
    return scope(() => {
      let q: Tensor, k: Tensor, v: Tensor;
      if (this.useCombinedLinear) {
        // MONAI's "b h (qkv l d) -> qkv b l h d": q, k, v are consecutive blocks of the output columns.
        const [b, n] = x.shape;
        const qkv = liveChild(this, "qkv").forward(x);
        const parts = permute(reshape(qkv, [b, n, 3, this.numHeads, this.dimHead]), [2, 0, 3, 1, 4]);
        [q, k, v] = [0, 1, 2].map((i) => reshape(slice(parts, [i], [i + 1]), parts.shape.slice(1)));
      } else {
        q = splitHeads(liveChild(this, "to_q").forward(x), this.numHeads);
        k = splitHeads(liveChild(this, "to_k").forward(x), this.numHeads);
        v = splitHeads(liveChild(this, "to_v").forward(x), this.numHeads);
      }
      const heads = attention(q, k, v, { scale: this.dimHead ** -0.5 });
      const merged = mergeHeads(heads);
      return this.includeFc ? liveChild(this, "out_proj").forward(merged) : merged;
    });
  }
}

/** Options of {@linkcode CrossAttention}. */
export interface CrossAttentionOptions {
  /** Width of the attention (heads·dimHead when dimHead is given). */
  hiddenSize: number;
  /** Number of heads. */
  numHeads: number;
  /** Channels per head (default hiddenSize / numHeads). */
  dimHead?: number;
  /** Width of the query tokens (default hiddenSize). */
  hiddenInputSize?: number;
  /** Width of the context tokens (default hiddenSize). */
  contextInputSize?: number;
  /** Biases on the q, k, v projections (default false). */
  qkvBias?: boolean;
  /** Dropout rate (default 0; only 0 is supported in training mode). */
  dropout?: number;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/** MONAI's `CrossAttentionBlock`: queries from x [B, N, C], keys and values from a context [B, T, Cctx]. */
export class CrossAttention extends Module {
  /** Number of heads. */
  readonly numHeads: number;
  /** Channels per head. */
  readonly dimHead: number;
  /** Width of the query tokens. */
  readonly inputSize: number;
  /** Width of the context tokens. */
  readonly contextSize: number;
  /** Dropout rate. */
  readonly dropout: number;

  /** Builds `out_proj`, `to_q`, `to_k`, `to_v`. */
  constructor(opts: CrossAttentionOptions) {
    super();
    const { hiddenSize, numHeads } = opts;
    if (!Number.isInteger(numHeads) || numHeads < 1 || !Number.isInteger(hiddenSize) || hiddenSize < 1) {
      throw new Error(
        `CrossAttention: hiddenSize (${hiddenSize}) and numHeads (${numHeads}) must be positive.`,
      );
    }
    if (!opts.dimHead && hiddenSize % numHeads !== 0) {
      throw new Error(`CrossAttention: hiddenSize ${hiddenSize} must be divisible by numHeads ${numHeads}.`);
    }
    this.numHeads = numHeads;
    this.dimHead = opts.dimHead || hiddenSize / numHeads;
    const inner = numHeads * this.dimHead;
    this.inputSize = opts.hiddenInputSize || hiddenSize;
    this.contextSize = opts.contextInputSize || hiddenSize;
    this.dropout = checkDropoutRate("CrossAttention", opts.dropout ?? 0);
    const seed = seedStream(opts.seed ?? 0);
    const bias = opts.qkvBias ?? false;
    this.child("out_proj", new Linear(inner, this.inputSize, { seed: seed() }));
    this.child("to_q", new Linear(this.inputSize, inner, { bias, seed: seed() }));
    this.child("to_k", new Linear(this.contextSize, inner, { bias, seed: seed() }));
    this.child("to_v", new Linear(this.contextSize, inner, { bias, seed: seed() }));
  }

  /**
   * x [B, N, inputSize], context [B or 1, T, contextSize] (a batch of one is shared by every sample);
   * without a context it attends to x itself, like MONAI. Returns [B, N, inputSize].
   */
  forward(x: Tensor, context?: Tensor): Tensor {
    checkTokens("CrossAttention", x, this.inputSize);
    checkDropout(this, this.dropout);
    if (context) {
      checkTokens("CrossAttention", context, this.contextSize, "context");
      if (context.shape[0] !== x.shape[0] && context.shape[0] !== 1) {
        throw new Error(
          `CrossAttention: context batch ${context.shape[0]} must be 1 or match x ${formatShape(x.shape)}.`,
        );
      }
    } else if (this.contextSize !== this.inputSize) {
      throw new Error(
        `CrossAttention: a context [B, T, ${this.contextSize}] is required (queries are ${this.inputSize} wide).`,
      );
    }
    return scope(() => {
      let kv = context ?? x;
      if (kv.shape[0] !== x.shape[0]) kv = expand(kv, [x.shape[0], kv.shape[1], kv.shape[2]]);
      const q = splitHeads(liveChild(this, "to_q").forward(x), this.numHeads);
      const k = splitHeads(liveChild(this, "to_k").forward(kv), this.numHeads);
      const v = splitHeads(liveChild(this, "to_v").forward(kv), this.numHeads);
      const heads = attention(q, k, v, { scale: this.dimHead ** -0.5 });
      return liveChild(this, "out_proj").forward(mergeHeads(heads));
    });
  }
}

/** Options of {@linkcode SpatialAttentionBlock}. */
export interface SpatialAttentionOptions {
  /** Channels per head (default: one head over all channels). */
  numHeadChannels?: number;
  /** GroupNorm groups (default 32). */
  normNumGroups?: number;
  /** GroupNorm epsilon (default 1e-6). */
  normEps?: number;
  /** Apply `attn.out_proj` (default true). */
  includeFc?: boolean;
  /** One `attn.qkv` Linear instead of three (default false). */
  useCombinedLinear?: boolean;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/** MONAI's `SpatialAttentionBlock`: GroupNorm, self-attention over all voxels, plus the input. */
export class SpatialAttentionBlock extends Module {
  /** Self-attention over the voxels of a `numChannels`-channel feature map. */
  constructor(
    readonly spatialDims: SpatialDims,
    readonly numChannels: number,
    opts: SpatialAttentionOptions = {},
  ) {
    super();
    const headChannels = opts.numHeadChannels;
    if (headChannels !== undefined && (!Number.isInteger(headChannels) || numChannels % headChannels !== 0)) {
      throw new Error(
        `SpatialAttentionBlock: numChannels ${numChannels} must be divisible by numHeadChannels ${headChannels}.`,
      );
    }
    const seed = seedStream(opts.seed ?? 0);
    this.child("norm", new GroupNorm(opts.normNumGroups ?? 32, numChannels, { eps: opts.normEps ?? 1e-6 }));
    this.child(
      "attn",
      new SelfAttention({
        hiddenSize: numChannels,
        numHeads: headChannels ? numChannels / headChannels : 1,
        qkvBias: true,
        includeFc: opts.includeFc,
        useCombinedLinear: opts.useCombinedLinear,
        seed: seed(),
      }),
    );
  }

  /** x [B, C, (D,) H, W] → same shape. */
  forward(x: Tensor): Tensor {
    if (x.rank !== this.spatialDims + 2 || x.shape[1] !== this.numChannels) {
      throw new Error(
        `SpatialAttentionBlock: input ${
          formatShape(x.shape)
        } must have ${this.spatialDims} spatial axes and ` +
          `${this.numChannels} channels.`,
      );
    }
    return scope(() => {
      const [b, c] = x.shape;
      const h = liveChild<GroupNorm>(this, "norm").forward(x);
      const tokens = transpose(reshape(h, [b, c, -1]), 1, 2); // b c (spatial) -> b (spatial) c
      const y = liveChild<SelfAttention>(this, "attn").forward(tokens);
      const back = reshape(transpose(y, 1, 2), x.shape);
      return add(back, x);
    });
  }
}

/** MONAI's `MLPBlock(act="GEGLU")`: linear1 to 2·mlpDim, x·gelu(gate) on its halves, linear2 back. */
export class GegluMlp extends Module {
  /** Width of the hidden layer. */
  readonly mlpDim: number;
  /** Dropout rate. */
  readonly dropout: number;

  /** `hiddenSize` → 2·`mlpDim` (value and gate) → `hiddenSize`. */
  constructor(readonly hiddenSize: number, mlpDim: number, opts: { dropout?: number; seed?: number } = {}) {
    super();
    this.mlpDim = mlpDim || hiddenSize;
    this.dropout = checkDropoutRate("GegluMlp", opts.dropout ?? 0);
    const seed = seedStream(opts.seed ?? 0);
    this.child("linear1", new Linear(hiddenSize, 2 * this.mlpDim, { seed: seed() }));
    this.child("linear2", new Linear(this.mlpDim, hiddenSize, { seed: seed() }));
  }

  /** x [..., hiddenSize] → [..., hiddenSize]. */
  forward(x: Tensor): Tensor {
    checkDropout(this, this.dropout);
    return scope(() => {
      const h = liveChild(this, "linear1").forward(x);
      const lead = h.shape.slice(0, -1);
      const zeros = lead.map(() => 0);
      const value = slice(h, [...zeros, 0], [...lead, this.mlpDim]);
      const gate = slice(h, [...zeros, this.mlpDim], [...lead, 2 * this.mlpDim]);
      return liveChild(this, "linear2").forward(mul(value, gelu(gate)));
    });
  }
}

/** Options of {@linkcode TransformerBlock}. */
export interface TransformerBlockOptions {
  /** Width of the context tokens (default: numChannels, i.e. attn2 attends to x itself without a context). */
  crossAttentionDim?: number;
  /** Dropout rate of the attention layers and the feed-forward (default 0). */
  dropout?: number;
  /** Apply `attn1.out_proj` (default true; attn2 always has its projection, like MONAI). */
  includeFc?: boolean;
  /** One `attn1.qkv` Linear (default false). */
  useCombinedLinear?: boolean;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/** MONAI's `DiffusionUNetTransformerBlock`: pre-norm self-attention, cross-attention and GEGLU feed-forward. */
export class TransformerBlock extends Module {
  /** `numHeads` heads of `dimHead` channels over `numChannels`-wide tokens (numHeads·dimHead = numChannels). */
  constructor(
    readonly numChannels: number,
    numHeads: number,
    dimHead: number,
    opts: TransformerBlockOptions = {},
  ) {
    super();
    const seed = seedStream(opts.seed ?? 0);
    const hiddenSize = numHeads * dimHead;
    this.child(
      "attn1",
      new SelfAttention({
        hiddenSize,
        hiddenInputSize: numChannels,
        numHeads,
        dimHead,
        dropout: opts.dropout,
        includeFc: opts.includeFc,
        useCombinedLinear: opts.useCombinedLinear,
        seed: seed(),
      }),
    );
    this.child("ff", new GegluMlp(numChannels, 4 * numChannels, { dropout: opts.dropout, seed: seed() }));
    this.child(
      "attn2",
      new CrossAttention({
        hiddenSize,
        numHeads,
        hiddenInputSize: numChannels,
        contextInputSize: opts.crossAttentionDim,
        dimHead,
        dropout: opts.dropout,
        seed: seed(),
      }),
    );
    for (const name of ["norm1", "norm2", "norm3"]) this.child(name, new LayerNorm(numChannels));
  }

  /** x [B, N, numChannels], context [B, T, crossAttentionDim] → [B, N, numChannels]. */
  forward(x: Tensor, context?: Tensor): Tensor {
    return scope(() => {
      const norm = (name: string, t: Tensor) => liveChild<LayerNorm>(this, name).forward(t);
      let h = add(liveChild<SelfAttention>(this, "attn1").forward(norm("norm1", x)), x);
      h = add(liveChild<CrossAttention>(this, "attn2").forward(norm("norm2", h), context), h);
      return add(liveChild<GegluMlp>(this, "ff").forward(norm("norm3", h)), h);
    });
  }
}

/** Options of {@linkcode SpatialTransformer}. */
export interface SpatialTransformerOptions {
  /** Number of transformer blocks (default 1). */
  numLayers?: number;
  /** Dropout rate (default 0). */
  dropout?: number;
  /** GroupNorm groups (default 32). */
  normNumGroups?: number;
  /** GroupNorm epsilon (default 1e-6). */
  normEps?: number;
  /** Width of the context tokens. */
  crossAttentionDim?: number;
  /** Apply `attn1.out_proj` (default true). */
  includeFc?: boolean;
  /** One `attn1.qkv` Linear (default false). */
  useCombinedLinear?: boolean;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/**
 * MONAI's `SpatialTransformer`: GroupNorm, a 1×1 convolution to heads·dimHead channels, transformer blocks
 * over the voxels as tokens, a 1×1 convolution back, plus the input.
 */
export class SpatialTransformer extends Module {
  /** heads · dimHead. */
  readonly innerDim: number;

  /** `numHeads` heads of `dimHead` channels over an `inChannels`-channel feature map. */
  constructor(
    readonly spatialDims: SpatialDims,
    readonly inChannels: number,
    numHeads: number,
    dimHead: number,
    opts: SpatialTransformerOptions = {},
  ) {
    super();
    const seed = seedStream(opts.seed ?? 0);
    const numLayers = opts.numLayers ?? 1;
    if (!Number.isInteger(numLayers) || numLayers < 1) {
      throw new Error(`SpatialTransformer: numLayers must be a positive integer, got ${numLayers}.`);
    }
    if (!Number.isInteger(numHeads) || numHeads < 1) {
      throw new Error(
        `SpatialTransformer: ${inChannels} channels with ${dimHead} channels per head give ${numHeads} heads; ` +
          "at least one is needed.",
      );
    }
    const inner = numHeads * dimHead;
    this.innerDim = inner;
    this.child("norm", new GroupNorm(opts.normNumGroups ?? 32, inChannels, { eps: opts.normEps ?? 1e-6 }));
    this.child("proj_in", new Convolution(spatialDims, inChannels, inner, { kernelSize: 1, seed: seed() }));
    const blocks = new ModuleList<TransformerBlock>();
    for (let i = 0; i < numLayers; i++) {
      blocks.push(
        new TransformerBlock(inner, numHeads, dimHead, {
          crossAttentionDim: opts.crossAttentionDim,
          dropout: opts.dropout,
          includeFc: opts.includeFc,
          useCombinedLinear: opts.useCombinedLinear,
          seed: seed(),
        }),
      );
    }
    this.child("transformer_blocks", blocks);
    this.child("proj_out", new Convolution(spatialDims, inner, inChannels, { kernelSize: 1, seed: seed() }));
  }

  /** x [B, C, (D,) H, W], context [B, T, crossAttentionDim] → same shape as x. */
  forward(x: Tensor, context?: Tensor): Tensor {
    if (x.rank !== this.spatialDims + 2 || x.shape[1] !== this.inChannels) {
      throw new Error(
        `SpatialTransformer: input ${formatShape(x.shape)} must have ${this.spatialDims} spatial axes and ` +
          `${this.inChannels} channels.`,
      );
    }
    return scope(() => {
      const b = x.shape[0];
      const h = liveChild<Convolution>(this, "proj_in").forward(
        liveChild<GroupNorm>(this, "norm").forward(x),
      );
      let tokens = transpose(reshape(h, [b, this.innerDim, -1]), 1, 2);
      for (const block of liveChild<ModuleList<TransformerBlock>>(this, "transformer_blocks").items) {
        tokens = block.forward(tokens, context);
      }
      const grid = reshape(transpose(tokens, 1, 2), [b, this.innerDim, ...x.shape.slice(2)]);
      return add(liveChild<Convolution>(this, "proj_out").forward(grid), x);
    });
  }
}
