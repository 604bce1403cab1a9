/**
 * `DiffusionModelUNet`: MONAI's diffusion U-Net (2D and 3D) with the same constructor options (camelCase),
 * the same parameter names and shapes, and the same forward pass, so a state dict saved from MONAI's
 * `DiffusionModelUNet` (e.g. as safetensors) loads with `loadStateDict` and gives the same output.
 *
 * State dicts of the older MONAI Generative (GenerativeModels) layout convert with
 * {@linkcode convertGenerativeStateDict}.
 *
 * @module
 */

import { scope } from "../engine/memory.ts";
import { cast } from "../engine/ops/cast.ts";
import { add, silu } from "../engine/ops/elementwise.ts";
import { withPrecision } from "../engine/precision.ts";
import { formatShape } from "../engine/shape.ts";
import { Tensor } from "../engine/tensor.ts";
import { DownBlock, type LevelAttention, MidBlock, ResnetBlock, UpBlock } from "../nn/blocks.ts";
import {
  checkSpatialDims,
  Convolution,
  isPositiveInt,
  type Layer,
  liveChild,
  seedStream,
  type SpatialDims,
} from "../nn/conv.ts";
import { Embedding, timestepEmbedding, type Timesteps } from "../nn/embedding.ts";
import { Linear } from "../nn/linear.ts";
import { Module, ModuleList } from "../nn/module.ts";
import { GroupNorm } from "../nn/norm.ts";

/** Constructor options of {@linkcode DiffusionModelUNet}: MONAI's arguments in camelCase, same defaults. */
export interface DiffusionModelUNetOptions {
  /** 2 (images [B, C, H, W]) or 3 (volumes [B, C, D, H, W]). */
  spatialDims: SpatialDims;
  /** Input channels. */
  inChannels: number;
  /** Output channels. */
  outChannels: number;
  /** ResnetBlocks per level: one number for all, or one per level (default [2, 2, 2, 2]). */
  numResBlocks?: number | readonly number[];
  /** Output channels of each level (default [32, 64, 64, 64]). */
  channels?: readonly number[];
  /** Which levels have attention (default [false, false, true, true]). The middle block always has it. */
  attentionLevels?: readonly boolean[];
  /** GroupNorm groups; every channel count must be a multiple (default 32). */
  normNumGroups?: number;
  /** GroupNorm epsilon (default 1e-6). */
  normEps?: number;
  /** Up- and downsample with ResnetBlocks instead of (strided) convolutions (default false). */
  resblockUpdown?: boolean;
  /** Channels per attention head: one number, or one per level (default 8). */
  numHeadChannels?: number | readonly number[];
  /** Cross-attention conditioning: spatial transformers instead of self-attention (default false). */
  withConditioning?: boolean;
  /** Transformer blocks per spatial transformer (default 1). */
  transformerNumLayers?: number;
  /** Width of the context tokens (required with `withConditioning`). */
  crossAttentionDim?: number;
  /** Number of classes of a class-conditional model (adds `class_embedding`). */
  numClassEmbeds?: number;
  /** MONAI computes attention in float32; voxgen always does, so this changes nothing. */
  upcastAttention?: boolean;
  /** Dropout of the cross-attention transformers; must be 0 in training mode (see the attention layers). */
  dropoutCattn?: number;
  /** Apply the self-attention output projection `attn.out_proj` (default true). */
  includeFc?: boolean;
  /** One `attn.qkv` projection instead of `to_q`, `to_k`, `to_v` (default false). */
  useCombinedLinear?: boolean;
  /** MONAI's flash-attention switch; voxgen's attention is always fused, so this changes nothing. */
  useFlashAttention?: boolean;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/** Conditioning and extra inputs of {@linkcode DiffusionModelUNet.forward}. */
export interface UNetForwardOptions {
  /** Cross-attention context [B (or 1), tokens, crossAttentionDim]. */
  context?: Tensor;
  /** Class labels [B] (a tensor of integer values, or numbers). */
  classLabels?: Tensor | readonly number[];
  /** ControlNet residuals added to the skip tensors (one per skip, in order). */
  downBlockAdditionalResiduals?: readonly Tensor[];
  /** ControlNet residual added to the middle block's output. */
  midBlockAdditionalResidual?: Tensor;
}

/** The options with every default filled in and lists expanded per level. */
export interface ResolvedUNetOptions {
  /** See {@linkcode DiffusionModelUNetOptions}. */
  spatialDims: SpatialDims;
  /** Input channels. */
  inChannels: number;
  /** Output channels. */
  outChannels: number;
  /** ResnetBlocks per level. */
  numResBlocks: number[];
  /** Channels per level. */
  channels: number[];
  /** Attention per level. */
  attentionLevels: boolean[];
  /** GroupNorm groups. */
  normNumGroups: number;
  /** GroupNorm epsilon. */
  normEps: number;
  /** ResnetBlock up/down sampling. */
  resblockUpdown: boolean;
  /** Channels per head, per level. */
  numHeadChannels: number[];
  /** Cross-attention conditioning. */
  withConditioning: boolean;
  /** Transformer blocks per spatial transformer. */
  transformerNumLayers: number;
  /** Context width, or null. */
  crossAttentionDim: number | null;
  /** Classes, or null. */
  numClassEmbeds: number | null;
  /** Cross-attention dropout. */
  dropoutCattn: number;
  /** Self-attention output projection. */
  includeFc: boolean;
  /** Combined qkv projection. */
  useCombinedLinear: boolean;
  /** Seed of the initial weights. */
  seed: number;
}

const fail = (message: string): never => {
  throw new Error(`DiffusionModelUNet: ${message}`);
};

/** Validates options like MONAI's constructor (plus the checks MONAI leaves to its blocks) and fills defaults. */
export function resolveUNetOptions(opts: DiffusionModelUNetOptions): ResolvedUNetOptions {
  if (typeof opts !== "object" || opts === null) {
    fail("options { spatialDims, inChannels, outChannels, … } are required.");
  }
  const spatialDims = checkSpatialDims("DiffusionModelUNet", opts.spatialDims);
  for (const key of ["inChannels", "outChannels"] as const) {
    if (!isPositiveInt(opts[key])) {
      fail(`${key} must be a positive integer, got ${JSON.stringify(opts[key])}.`);
    }
  }
  const channels = [...(opts.channels ?? [32, 64, 64, 64])];
  if (channels.length === 0 || !channels.every(isPositiveInt)) {
    fail(`channels must be a non-empty list of positive integers, got ${JSON.stringify(opts.channels)}.`);
  }
  const levels = channels.length;
  const attentionLevels = [...(opts.attentionLevels ?? [false, false, true, true])];
  if (attentionLevels.length !== levels) {
    fail(
      `attentionLevels ${JSON.stringify(attentionLevels)} must have one entry per level of channels ` +
        `${JSON.stringify(channels)}.`,
    );
  }
  const normNumGroups = opts.normNumGroups ?? 32;
  if (!isPositiveInt(normNumGroups)) fail(`normNumGroups must be a positive integer, got ${normNumGroups}.`);
  if (channels.some((c) => c % normNumGroups !== 0)) {
    fail(
      `every entry of channels ${
        JSON.stringify(channels)
      } must be a multiple of normNumGroups ${normNumGroups}.`,
    );
  }
  const normEps = opts.normEps ?? 1e-6;
  if (!(normEps > 0)) fail(`normEps must be positive, got ${normEps}.`);
  const heads = opts.numHeadChannels ?? 8;
  const numHeadChannels = typeof heads === "number" ? new Array<number>(levels).fill(heads) : [...heads];
  if (numHeadChannels.length !== levels) {
    fail(
      `numHeadChannels ${JSON.stringify(heads)} must be one number or one per level (${levels}); levels ` +
        "without attention ignore their entry.",
    );
  }
  const res = opts.numResBlocks ?? [2, 2, 2, 2];
  const numResBlocks = typeof res === "number" ? new Array<number>(levels).fill(res) : [...res];
  if (numResBlocks.length !== levels || !numResBlocks.every(isPositiveInt)) {
    fail(`numResBlocks ${JSON.stringify(res)} must be a positive integer or one per level (${levels}).`);
  }
  const withConditioning = opts.withConditioning ?? false;
  const crossAttentionDim = opts.crossAttentionDim ?? null;
  if (withConditioning && crossAttentionDim === null) {
    fail("withConditioning needs crossAttentionDim (the width of the context tokens).");
  }
  if (crossAttentionDim !== null && !withConditioning) {
    fail("crossAttentionDim needs withConditioning: true.");
  }
  if (crossAttentionDim !== null && !isPositiveInt(crossAttentionDim)) {
    fail(`crossAttentionDim must be a positive integer, got ${crossAttentionDim}.`);
  }
  const dropoutCattn = opts.dropoutCattn ?? 0;
  if (!(dropoutCattn >= 0 && dropoutCattn <= 1)) fail(`dropoutCattn must be in [0, 1], got ${dropoutCattn}.`);
  const transformerNumLayers = opts.transformerNumLayers ?? 1;
  if (!isPositiveInt(transformerNumLayers)) {
    fail(`transformerNumLayers must be a positive integer, got ${transformerNumLayers}.`);
  }
  const numClassEmbeds = opts.numClassEmbeds ?? null;
  if (numClassEmbeds !== null && !isPositiveInt(numClassEmbeds)) {
    fail(`numClassEmbeds must be a positive integer, got ${numClassEmbeds}.`);
  }
  // The levels with attention, and the middle block (always), need a valid head split.
  const attended = [...channels.keys()].filter((i) => attentionLevels[i]);
  if (!attended.includes(levels - 1)) attended.push(levels - 1);
  for (const i of attended) {
    const c = channels[i];
    const h = numHeadChannels[i];
    if (!isPositiveInt(h)) fail(`numHeadChannels[${i}] must be a positive integer, got ${h}.`);
    if (!withConditioning && c % h !== 0) {
      fail(`channels[${i}] = ${c} must be divisible by numHeadChannels[${i}] = ${h} (self-attention heads).`);
    }
    if (withConditioning && h > c) {
      fail(
        `numHeadChannels[${i}] = ${h} exceeds channels[${i}] = ${c}: the spatial transformer would have no head.`,
      );
    }
  }
  return {
    spatialDims,
    inChannels: opts.inChannels,
    outChannels: opts.outChannels,
    numResBlocks,
    channels,
    attentionLevels,
    normNumGroups,
    normEps,
    resblockUpdown: opts.resblockUpdown ?? false,
    numHeadChannels,
    withConditioning,
    transformerNumLayers,
    crossAttentionDim,
    numClassEmbeds,
    dropoutCattn,
    includeFc: opts.includeFc ?? true,
    useCombinedLinear: opts.useCombinedLinear ?? false,
    seed: opts.seed ?? 0,
  };
}

/** The MONAI constructor keys (snake_case) and their voxgen names. */
const MONAI_KEYS: Record<string, keyof DiffusionModelUNetOptions> = {
  spatial_dims: "spatialDims",
  in_channels: "inChannels",
  out_channels: "outChannels",
  num_res_blocks: "numResBlocks",
  channels: "channels",
  attention_levels: "attentionLevels",
  norm_num_groups: "normNumGroups",
  norm_eps: "normEps",
  resblock_updown: "resblockUpdown",
  num_head_channels: "numHeadChannels",
  with_conditioning: "withConditioning",
  transformer_num_layers: "transformerNumLayers",
  cross_attention_dim: "crossAttentionDim",
  num_class_embeds: "numClassEmbeds",
  upcast_attention: "upcastAttention",
  dropout_cattn: "dropoutCattn",
  include_fc: "includeFc",
  use_combined_linear: "useCombinedLinear",
  use_flash_attention: "useFlashAttention",
};

/** Options of {@linkcode unetOptionsFromMonai}. */
export interface MonaiConfigOptions {
  /**
   * The config is MONAI Generative's (GenerativeModels): `num_channels` instead of `channels`, and
   * `includeFc` set to what reproduces the old model: false without conditioning (its self-attention built
   * `proj_attn` but never applied it), true with conditioning (its transformers apply `to_out`).
   */
  generative?: boolean;
}

/**
 * Options from a MONAI constructor config with snake_case keys (e.g. a bundle's or a training script's
 * `DiffusionModelUNet(**config)`). Unknown keys are an error; `null` values mean "default".
 */
export function unetOptionsFromMonai(
  config: Record<string, unknown>,
  opts: MonaiConfigOptions = {},
): DiffusionModelUNetOptions {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(config)) {
    const name = opts.generative && key === "num_channels" ? "channels" : MONAI_KEYS[key];
    if (!name) {
      throw new Error(
        `unetOptionsFromMonai: unknown DiffusionModelUNet argument "${key}"; known: ${
          Object.keys(MONAI_KEYS).join(", ")
        }${opts.generative ? ", num_channels" : ""}.`,
      );
    }
    if (value !== null) out[name] = value;
  }
  if (opts.generative && out.includeFc === undefined) out.includeFc = out.withConditioning === true;
  return out as unknown as DiffusionModelUNetOptions;
}

/** How many timesteps were given (−1 for a tensor that is not 1-D), and how to print them. */
function timestepCount(t: Timesteps): [number, string] {
  if (typeof t === "number") return [1, String(t)];
  if (t instanceof Tensor) return [t.rank === 1 ? t.shape[0] : -1, `a tensor ${formatShape(t.shape)}`];
  return [t.length, JSON.stringify(t)];
}

/**
 * Checks a U-Net-style forward's inputs against `cfg` (errors start with `name`) and returns the batch size:
 * x's shape, the timesteps, the context, the class labels and the number of ControlNet residuals.
 */
export function checkUNetInputs(
  name: string,
  cfg: ResolvedUNetOptions,
  x: Tensor,
  timesteps: Timesteps,
  opts: UNetForwardOptions,
): number {
  const fail = (message: string): never => {
    throw new Error(`${name}: ${message}`);
  };
  const spatial = x.shape.slice(2);
  const factor = 2 ** (cfg.channels.length - 1);
  if (x.rank !== cfg.spatialDims + 2 || x.shape[1] !== cfg.inChannels) {
    const axes = cfg.spatialDims === 3 ? "D, H, W" : "H, W";
    fail(`x ${formatShape(x.shape)} must be [B, ${cfg.inChannels}, ${axes}].`);
  }
  if (spatial.some((d) => d % factor !== 0)) {
    fail(
      `the spatial size ${formatShape(spatial)} of x must be divisible by ${factor} ` +
        `(${cfg.channels.length - 1} downsamplings).`,
    );
  }
  const batch = x.shape[0];
  const [steps, described] = timestepCount(timesteps);
  if (steps !== 1 && steps !== batch) {
    fail(`timesteps must be one number or ${batch} (one per sample); got ${described}.`);
  }
  if (opts.context && !cfg.withConditioning) {
    fail("a context was given but the model has withConditioning: false.");
  }
  if (opts.context && (opts.context.rank !== 3 || opts.context.shape[2] !== cfg.crossAttentionDim)) {
    fail(`context ${formatShape(opts.context.shape)} must be [B, tokens, ${cfg.crossAttentionDim}].`);
  }
  if (cfg.numClassEmbeds !== null && opts.classLabels === undefined) {
    fail(`classLabels are required: the model has ${cfg.numClassEmbeds} class embeddings.`);
  }
  if (cfg.numClassEmbeds === null && opts.classLabels !== undefined) {
    fail("classLabels were given but the model has no class embeddings (numClassEmbeds).");
  }
  const residuals = opts.downBlockAdditionalResiduals;
  const skips = 1 + cfg.numResBlocks.reduce((n, r, i) => n + r + (i < cfg.channels.length - 1 ? 1 : 0), 0);
  if (residuals && residuals.length !== skips) {
    fail(`downBlockAdditionalResiduals has ${residuals.length} tensors; the skips are ${skips}.`);
  }
  if (opts.classLabels !== undefined) {
    const n = Array.isArray(opts.classLabels)
      ? opts.classLabels.length
      : (opts.classLabels as Tensor).shape[0];
    if (n !== batch) fail(`classLabels must have one label per sample (${batch}), got ${n}.`);
  }
  return batch;
}

/** MONAI's `time_embed`: Sequential(Linear(C0, 4C0), SiLU, Linear(4C0, 4C0)), parameters at "0" and "2". */
export class TimeEmbedMlp extends Module {
  /** The MLP from the sinusoidal embedding of width `inFeatures` to `dim`, weights seeded by `seed`. */
  constructor(inFeatures: number, dim: number, seed: () => number) {
    super();
    this.child("0", new Linear(inFeatures, dim, { seed: seed() }));
    this.child("2", new Linear(dim, dim, { seed: seed() }));
  }

  /** The embedding of the sinusoidal features `t` [B, inFeatures]. */
  forward(t: Tensor): Tensor {
    return scope(() => liveChild(this, "2").forward(silu(liveChild(this, "0").forward(t))));
  }
}

/**
 * The time embedding [B, 4·c0] (plus the class embedding) of a network holding MONAI's `time_embed` and
 * optional `class_embedding` children (the U-Net and the ControlNet): sinusoidal features of width `c0`
 * through the MLP.
 */
export function unetTimeEmbedding(
  net: Module,
  c0: number,
  batch: number,
  timesteps: Timesteps,
  classLabels?: Tensor | readonly number[],
): Tensor {
  let ts = timesteps;
  if (typeof ts === "number") ts = new Array<number>(batch).fill(ts);
  else if (Array.isArray(ts) && ts.length === 1) ts = new Array<number>(batch).fill(ts[0]);
  const tEmb = timestepEmbedding(ts, c0);
  const emb = liveChild<TimeEmbedMlp>(net, "time_embed").forward(tEmb);
  if (classLabels === undefined) return emb;
  return add(emb, liveChild<Embedding>(net, "class_embedding").forward(classLabels));
}

/** MONAI's `out`: Sequential(GroupNorm, SiLU, Convolution 3×3 starting at zero) at "0" and "2". */
export class OutputHead extends Module {
  /** The head from `channels` to `outChannels` channels. */
  constructor(
    spatialDims: SpatialDims,
    channels: number,
    outChannels: number,
    groups: number,
    eps: number,
    seed: number,
  ) {
    super();
    this.child("0", new GroupNorm(groups, channels, { eps }));
    this.child(
      "2",
      new Convolution(spatialDims, channels, outChannels, { padding: 1, seed, zeroInit: true }),
    );
  }

  /** h [B, channels, …spatial] → [B, outChannels, …spatial]. */
  forward(h: Tensor): Tensor {
    return scope(() =>
      liveChild<Convolution>(this, "2").forward(liveChild<GroupNorm>(this, "0").forwardSilu(h))
    );
  }
}

/**
 * MONAI's `DiffusionModelUNet` (Rombach et al.; Pinaya et al.): a time-conditioned U-Net with ResnetBlocks,
 * self-attention or cross-attention spatial transformers at chosen levels, and optional class embeddings.
 * Parameters start from a seeded PyTorch-style initialisation, with MONAI's zero-initialised last
 * convolutions; load trained weights with `loadStateDict`.
 *
 * @example
 * ```ts
 * const unet = new DiffusionModelUNet({
 *   spatialDims: 3, inChannels: 1, outChannels: 1, channels: [32, 64, 64],
 *   attentionLevels: [false, true, true], numResBlocks: 1, numHeadChannels: 8,
 * });
 * unet.loadStateDict(await loadSafetensors("unet.safetensors"));
 * const eps = noGrad(() => unet.eval().forward(x, 500));
 * ```
 */
export class DiffusionModelUNet extends Module {
  /** The options with defaults filled in. */
  readonly config: ResolvedUNetOptions;

  /** Builds the network (validating the options like MONAI, see {@linkcode resolveUNetOptions}). */
  constructor(options: DiffusionModelUNetOptions) {
    super();
    const cfg = resolveUNetOptions(options);
    this.config = cfg;
    const seed = seedStream(cfg.seed);
    const { spatialDims: sd, channels } = cfg;
    const norm = { normNumGroups: cfg.normNumGroups, normEps: cfg.normEps };
    const tembDim = channels[0] * 4;
    const levelAttention = (i: number, on: boolean): LevelAttention => ({
      kind: on ? (cfg.withConditioning ? "cross" : "self") : "none",
      numHeadChannels: cfg.numHeadChannels[i],
      transformerNumLayers: cfg.transformerNumLayers,
      crossAttentionDim: cfg.crossAttentionDim ?? undefined,
      dropout: cfg.dropoutCattn,
      includeFc: cfg.includeFc,
      useCombinedLinear: cfg.useCombinedLinear,
    });

    this.child("conv_in", new Convolution(sd, cfg.inChannels, channels[0], { padding: 1, seed: seed() }));
    this.child("time_embed", new TimeEmbedMlp(channels[0], tembDim, seed));
    if (cfg.numClassEmbeds !== null) {
      this.child("class_embedding", new Embedding(cfg.numClassEmbeds, tembDim, { seed: seed() }));
    }
    const down = new ModuleList<DownBlock>();
    channels.forEach((c, i) => {
      down.push(
        new DownBlock(sd, i === 0 ? channels[0] : channels[i - 1], c, tembDim, {
          ...norm,
          numResBlocks: cfg.numResBlocks[i],
          addDownsample: i < channels.length - 1,
          resblockUpdown: cfg.resblockUpdown,
          attention: levelAttention(i, cfg.attentionLevels[i]),
          seed: seed(),
        }),
      );
    });
    this.child("down_blocks", down);
    const last = channels.length - 1;
    this.child(
      "middle_block",
      new MidBlock(sd, channels[last], tembDim, {
        ...norm,
        attention: levelAttention(last, true),
        seed: seed(),
      }),
    );
    const up = new ModuleList<UpBlock>();
    let out = channels[last];
    for (let i = last; i >= 0; i--) {
      const prev = out;
      out = channels[i];
      up.push(
        new UpBlock(sd, channels[Math.max(i - 1, 0)], prev, out, tembDim, {
          ...norm,
          numResBlocks: cfg.numResBlocks[i] + 1,
          addUpsample: i > 0,
          resblockUpdown: cfg.resblockUpdown,
          attention: levelAttention(i, cfg.attentionLevels[i]),
          seed: seed(),
        }),
      );
    }
    this.child("up_blocks", up);
    this.child(
      "out",
      new OutputHead(sd, channels[0], cfg.outChannels, cfg.normNumGroups, cfg.normEps, seed()),
    );
  }

  /** The time embedding [B, 4·channels[0]] (plus the class embedding), as every ResnetBlock receives it. */
  #embedding(batch: number, timesteps: Timesteps, classLabels?: Tensor | readonly number[]): Tensor {
    return unetTimeEmbedding(this, this.config.channels[0], batch, timesteps, classLabels);
  }

  /**
   * Turns gradient checkpointing of every res block on or off: training then keeps each block's input
   * instead of its activations and recomputes them in backward. Returns `this`.
   */
  gradientCheckpointing(on = true): this {
    for (const [, m] of this.namedModules()) if (m instanceof ResnetBlock) m.checkpointing = on;
    return this;
  }

  /**
   * Predicts the model output (noise, velocity or sample, as trained) for x [B, inChannels, …spatial] at
   * `timesteps` (one per sample, or one for all). Intermediates are freed; only the output is returned.
   * After `toPrecision("f16")` the activations are stored as f16 too and the output is converted back, so
   * the output is float32 either way.
   */
  forward(x: Tensor, timesteps: Timesteps, opts: UNetForwardOptions = {}): Tensor {
    const batch = checkUNetInputs("DiffusionModelUNet", this.config, x, timesteps, opts);
    const { context } = opts;
    return withPrecision(this.precision, () =>
      scope(() => {
        const emb = this.#embedding(batch, timesteps, opts.classLabels);
        let h = liveChild<Layer>(this, "conv_in").forward(x);
        let skips: Tensor[] = [h];
        for (const block of liveChild<ModuleList<DownBlock>>(this, "down_blocks").items) {
          const out = block.forward(h, emb, context);
          h = out.h;
          skips.push(...out.states);
        }
        const extra = opts.downBlockAdditionalResiduals;
        if (extra) skips = skips.map((s, i) => add(s, extra[i]));
        h = liveChild<MidBlock>(this, "middle_block").forward(h, emb, context);
        if (opts.midBlockAdditionalResidual) h = add(h, opts.midBlockAdditionalResidual);
        for (const block of liveChild<ModuleList<UpBlock>>(this, "up_blocks").items) {
          const used = skips.splice(skips.length - block.numResBlocks);
          const next = block.forward(h, used, emb, context);
          // Free each level's inputs as soon as they are consumed (peak memory of big volumes).
          h.dispose();
          for (const s of used) s.dispose();
          h = next;
        }
        const out = liveChild<OutputHead>(this, "out").forward(h);
        return out.dtype === "float32" ? out : cast(out, "float32");
      }));
  }
}

/** Result of {@linkcode convertGenerativeStateDict}. */
export interface ConvertedStateDict {
  /** The state dict under current MONAI names (sharing the input's tensors). */
  state: Map<string, Tensor>;
  /** Old keys that have no counterpart in the model and were left out. */
  dropped: string[];
}

/**
 * Renames a state dict of MONAI Generative's (GenerativeModels) `DiffusionModelUNet` to current MONAI names,
 * like MONAI's `load_old_state_dict`: `…attentions.N.to_q|to_k|to_v` → `…attentions.N.attn.to_q|…`,
 * `…proj_attn` → `…attn.out_proj`, transformer `…to_out.0` → `…out_proj`, upsampler `conv.conv` →
 * `postconv.conv`.
 *
 * The old self-attention block (models without conditioning) built `proj_attn` but never applied it. To
 * reproduce such a model's outputs build the new one with `includeFc: false` (what
 * `unetOptionsFromMonai(config, { generative: true })` does): `proj_attn` is then dropped (listed in
 * `dropped`). With `includeFc: true` it is loaded into `out_proj`, as MONAI's converter does, and the outputs
 * change. Conditioned models need `includeFc: true` (their transformers apply `to_out`).
 */
export function convertGenerativeStateDict(old: Map<string, Tensor>, model: Module): ConvertedStateDict {
  const wanted = new Set(model.stateDict().keys());
  const state = new Map<string, Tensor>();
  const dropped: string[] = [];
  const rules: Array<(key: string) => string> = [
    (k) => k.replace(/\.(to_q|to_k|to_v)\.(weight|bias)$/, ".attn.$1.$2"),
    (k) => k.replace(/\.proj_attn\.(weight|bias)$/, ".attn.out_proj.$1"),
    (k) => k.replace(/\.to_out\.0\.(weight|bias)$/, ".out_proj.$1"),
    (k) => k.replace(/\.upsampler\.conv\.conv\.(weight|bias)$/, ".upsampler.postconv.conv.$1"),
  ];
  for (const [key, t] of old) {
    if (wanted.has(key)) {
      state.set(key, t);
      continue;
    }
    const renamed = rules.map((rule) => rule(key)).find((k) => k !== key && wanted.has(k));
    if (renamed) state.set(renamed, t);
    else dropped.push(key);
  }
  return { state, dropped };
}
