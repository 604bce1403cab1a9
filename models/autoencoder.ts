/**
 * `AutoencoderKL`: MONAI's KL-regularised autoencoder (Rombach et al.; Pinaya et al.'s brain LDM), 2D and 3D,
 * with the same constructor options (camelCase), the same parameter names and shapes and the same forward
 * pass, so a state dict saved from MONAI's `AutoencoderKL` loads with `loadStateDict` and gives the same
 * outputs. State dicts of the older MONAI Generative (GenerativeModels) layout convert with
 * {@linkcode convertGenerativeAutoencoderStateDict}.
 *
 * @module
 */

import { scope } from "../engine/memory.ts";
import { add, clamp, exp, mul } from "../engine/ops/elementwise.ts";
import { randn } from "../engine/ops/random.ts";
import { formatShape } from "../engine/shape.ts";
import { tensor } from "../engine/ops/create.ts";
import type { Tensor } from "../engine/tensor.ts";
import { SpatialAttentionBlock } from "../nn/attention.ts";
import { AEKLDownsample, AEKLResBlock, DeconvUpsample } from "../nn/autoencoder_blocks.ts";
import { Upsample } from "../nn/blocks.ts";
import {
  checkSpatialDims,
  Convolution,
  isPositiveInt,
  type Layer,
  liveChild,
  seedStream,
  type SpatialDims,
} from "../nn/conv.ts";
import { Module, ModuleList } from "../nn/module.ts";
import { GroupNorm } from "../nn/norm.ts";

/** Constructor options of {@linkcode AutoencoderKL}: MONAI's arguments in camelCase, same defaults. */
export interface AutoencoderKLOptions {
  /** 2 (images [B, C, H, W]) or 3 (volumes [B, C, D, H, W]). */
  spatialDims: SpatialDims;
  /** Image channels in (default 1). */
  inChannels?: number;
  /** Image channels out (default 1). */
  outChannels?: number;
  /** Residual blocks per level: one number for all, or one per level (default [2, 2, 2, 2]). */
  numResBlocks?: number | readonly number[];
  /** Channels of each level (default [32, 64, 64, 64]); each level but the last halves the size. */
  channels?: readonly number[];
  /** Which levels have self-attention after each residual block (default [false, false, true, true]). */
  attentionLevels?: readonly boolean[];
  /** Channels of the latent (default 3). */
  latentChannels?: number;
  /** GroupNorm groups; every channel count must be a multiple (default 32). */
  normNumGroups?: number;
  /** GroupNorm epsilon (default 1e-6). */
  normEps?: number;
  /** Residual block, attention, residual block at the end of the encoder (default true). */
  withEncoderNonlocalAttn?: boolean;
  /** Residual block, attention, residual block at the start of the decoder (default true). */
  withDecoderNonlocalAttn?: boolean;
  /** Upsample with a learned ×2 transposed convolution (`deconv`) instead of nearest + 3×3 conv (default false). */
  useConvtranspose?: boolean;
  /** Apply the attention output projection `attn.out_proj` (default true). */
  includeFc?: boolean;
  /** One `attn.qkv` projection instead of `to_q`, `to_k`, `to_v` (default false). */
  useCombinedLinear?: boolean;
  /** MONAI's flash-attention switch; voxgen's attention is always fused, so this changes nothing. */
  useFlashAttention?: boolean;
  /**
   * MONAI's activation checkpointing: turns on {@linkcode AutoencoderKL.gradientCheckpointing} (voxgen
   * checkpoints each residual block rather than the whole encoder and decoder; values and gradients are the
   * same). Not stored in the model's config: it is a training choice.
   */
  useCheckpoint?: boolean;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/** The options with every default filled in and lists expanded per level. */
export interface ResolvedAutoencoderOptions {
  /** 2 or 3. */
  spatialDims: SpatialDims;
  /** Image channels in. */
  inChannels: number;
  /** Image channels out. */
  outChannels: number;
  /** Residual blocks per level. */
  numResBlocks: number[];
  /** Channels per level. */
  channels: number[];
  /** Attention per level. */
  attentionLevels: boolean[];
  /** Latent channels. */
  latentChannels: number;
  /** GroupNorm groups. */
  normNumGroups: number;
  /** GroupNorm epsilon. */
  normEps: number;
  /** Encoder non-local attention. */
  withEncoderNonlocalAttn: boolean;
  /** Decoder non-local attention. */
  withDecoderNonlocalAttn: boolean;
  /** Transposed-convolution upsampling. */
  useConvtranspose: boolean;
  /** Attention output projection. */
  includeFc: boolean;
  /** Combined qkv projection. */
  useCombinedLinear: boolean;
  /** Seed of the initial weights. */
  seed: number;
}

const fail = (message: string): never => {
  throw new Error(`AutoencoderKL: ${message}`);
};

/** Validates options like MONAI's constructor and fills the defaults. */
export function resolveAutoencoderOptions(opts: AutoencoderKLOptions): ResolvedAutoencoderOptions {
  if (typeof opts !== "object" || opts === null) fail("options { spatialDims, … } are required.");
  const spatialDims = checkSpatialDims("AutoencoderKL", opts.spatialDims);
  const inChannels = opts.inChannels ?? 1;
  const outChannels = opts.outChannels ?? 1;
  const latentChannels = opts.latentChannels ?? 3;
  for (const [key, v] of Object.entries({ inChannels, outChannels, latentChannels })) {
    if (!isPositiveInt(v)) fail(`${key} must be a positive integer, got ${JSON.stringify(v)}.`);
  }
  const channels = [...(opts.channels ?? [32, 64, 64, 64])];
  if (channels.length === 0 || !channels.every(isPositiveInt)) {
    fail(`channels must be a non-empty list of positive integers, got ${JSON.stringify(opts.channels)}.`);
  }
  const levels = channels.length;
  const normNumGroups = opts.normNumGroups ?? 32;
  if (!isPositiveInt(normNumGroups)) fail(`normNumGroups must be a positive integer, got ${normNumGroups}.`);
  if (channels.some((c) => c % normNumGroups !== 0)) {
    fail(
      `every entry of channels ${
        JSON.stringify(channels)
      } must be a multiple of normNumGroups ${normNumGroups}.`,
    );
  }
  const attentionLevels = [...(opts.attentionLevels ?? [false, false, true, true])];
  if (attentionLevels.length !== levels) {
    fail(
      `attentionLevels ${JSON.stringify(attentionLevels)} must have one entry per level of channels ` +
        `${JSON.stringify(channels)}.`,
    );
  }
  const res = opts.numResBlocks ?? [2, 2, 2, 2];
  const numResBlocks = typeof res === "number" ? new Array<number>(levels).fill(res) : [...res];
  if (numResBlocks.length !== levels || !numResBlocks.every((n) => Number.isInteger(n) && n >= 0)) {
    fail(`numResBlocks ${JSON.stringify(res)} must be a non-negative integer or one per level (${levels}).`);
  }
  const normEps = opts.normEps ?? 1e-6;
  if (!(normEps > 0)) fail(`normEps must be positive, got ${normEps}.`);
  return {
    spatialDims,
    inChannels,
    outChannels,
    numResBlocks,
    channels,
    attentionLevels,
    latentChannels,
    normNumGroups,
    normEps,
    withEncoderNonlocalAttn: opts.withEncoderNonlocalAttn ?? true,
    withDecoderNonlocalAttn: opts.withDecoderNonlocalAttn ?? true,
    useConvtranspose: opts.useConvtranspose ?? false,
    includeFc: opts.includeFc ?? true,
    useCombinedLinear: opts.useCombinedLinear ?? false,
    seed: opts.seed ?? 0,
  };
}

/** The MONAI constructor keys (snake_case) and their voxgen names. */
const MONAI_KEYS: Record<string, keyof AutoencoderKLOptions> = {
  spatial_dims: "spatialDims",
  in_channels: "inChannels",
  out_channels: "outChannels",
  num_res_blocks: "numResBlocks",
  channels: "channels",
  attention_levels: "attentionLevels",
  latent_channels: "latentChannels",
  norm_num_groups: "normNumGroups",
  norm_eps: "normEps",
  with_encoder_nonlocal_attn: "withEncoderNonlocalAttn",
  with_decoder_nonlocal_attn: "withDecoderNonlocalAttn",
  use_checkpoint: "useCheckpoint",
  use_convtranspose: "useConvtranspose",
  include_fc: "includeFc",
  use_combined_linear: "useCombinedLinear",
  use_flash_attention: "useFlashAttention",
};

/** The GenerativeModels spellings of MONAI's keys. */
const GENERATIVE_KEYS: Record<string, keyof AutoencoderKLOptions> = {
  num_channels: "channels",
  use_checkpointing: "useCheckpoint",
};

/**
 * Options from a MONAI `AutoencoderKL(**config)` config with snake_case keys. With `generative: true` the
 * config is GenerativeModels' (`num_channels`, `use_checkpointing`), and `includeFc` defaults to false, which
 * reproduces the old model exactly (its attention built `proj_attn` but never applied it). Unknown keys are an
 * error; `null` values mean "default".
 */
export function autoencoderOptionsFromMonai(
  config: Record<string, unknown>,
  opts: { generative?: boolean } = {},
): AutoencoderKLOptions {
  const out: Record<string, unknown> = {};
  const known = opts.generative ? { ...MONAI_KEYS, ...GENERATIVE_KEYS } : MONAI_KEYS;
  for (const [key, value] of Object.entries(config)) {
    const name = known[key];
    if (!name) {
      throw new Error(
        `autoencoderOptionsFromMonai: unknown AutoencoderKL argument "${key}"; known: ${
          Object.keys(known).join(", ")
        }.`,
      );
    }
    if (value !== null) out[name] = value;
  }
  if (opts.generative && out.includeFc === undefined) out.includeFc = false;
  return out as unknown as AutoencoderKLOptions;
}

/** Runs `layers` in order, freeing each intermediate as soon as the next layer has consumed it. */
function runChain(layers: readonly Layer[], x: Tensor): Tensor {
  return scope(() => {
    let h = x;
    for (const layer of layers) {
      const next = layer.forward(h);
      if (h !== x) h.dispose();
      h = next;
    }
    return h;
  });
}

/** The attention block the autoencoder places after residual blocks: one head over all channels. */
function attention(cfg: ResolvedAutoencoderOptions, channels: number, seed: number): SpatialAttentionBlock {
  return new SpatialAttentionBlock(cfg.spatialDims, channels, {
    normNumGroups: cfg.normNumGroups,
    normEps: cfg.normEps,
    includeFc: cfg.includeFc,
    useCombinedLinear: cfg.useCombinedLinear,
    seed,
  });
}

/** MONAI's autoencoder `Encoder`: a `blocks` list from the image to `latentChannels` channels. */
export class Encoder extends Module {
  /** The layers in order (registered as `blocks.N`). */
  readonly blocks: ModuleList<Layer>;

  /** Builds the encoder of an autoencoder with the resolved options `cfg`. */
  constructor(cfg: ResolvedAutoencoderOptions) {
    super();
    const seed = seedStream(cfg.seed + 1);
    const { spatialDims: sd, channels } = cfg;
    const norm = { normNumGroups: cfg.normNumGroups, normEps: cfg.normEps };
    const blocks = new ModuleList<Layer>();
    blocks.push(new Convolution(sd, cfg.inChannels, channels[0], { padding: 1, seed: seed() }));
    let cin = channels[0];
    channels.forEach((c, i) => {
      for (let r = 0; r < cfg.numResBlocks[i]; r++) {
        blocks.push(new AEKLResBlock(sd, cin, c, { ...norm, seed: seed() }));
        cin = c;
        if (cfg.attentionLevels[i]) blocks.push(attention(cfg, c, seed()));
      }
      if (i < channels.length - 1) blocks.push(new AEKLDownsample(sd, cin, { seed: seed() }));
    });
    const last = channels[channels.length - 1];
    if (cfg.withEncoderNonlocalAttn) {
      blocks.push(new AEKLResBlock(sd, last, last, { ...norm, seed: seed() }));
      blocks.push(attention(cfg, last, seed()));
      blocks.push(new AEKLResBlock(sd, last, last, { ...norm, seed: seed() }));
    }
    blocks.push(new GroupNorm(cfg.normNumGroups, last, { eps: cfg.normEps }));
    blocks.push(new Convolution(sd, last, cfg.latentChannels, { padding: 1, seed: seed() }));
    this.blocks = this.child("blocks", blocks);
  }

  /** x [B, inChannels, …spatial] → [B, latentChannels, …spatial / 2^(levels − 1)]. */
  forward(x: Tensor): Tensor {
    return runChain(this.blocks.items, x);
  }
}

/** MONAI's autoencoder `Decoder`: a `blocks` list from the latent to the image. */
export class Decoder extends Module {
  /** The layers in order (registered as `blocks.N`). */
  readonly blocks: ModuleList<Layer>;

  /** Builds the decoder of an autoencoder with the resolved options `cfg`. */
  constructor(cfg: ResolvedAutoencoderOptions) {
    super();
    const seed = seedStream(cfg.seed + 2);
    const { spatialDims: sd } = cfg;
    const norm = { normNumGroups: cfg.normNumGroups, normEps: cfg.normEps };
    const channels = [...cfg.channels].reverse();
    const attentionLevels = [...cfg.attentionLevels].reverse();
    const numResBlocks = [...cfg.numResBlocks].reverse();
    const blocks = new ModuleList<Layer>();
    blocks.push(new Convolution(sd, cfg.latentChannels, channels[0], { padding: 1, seed: seed() }));
    if (cfg.withDecoderNonlocalAttn) {
      blocks.push(new AEKLResBlock(sd, channels[0], channels[0], { ...norm, seed: seed() }));
      blocks.push(attention(cfg, channels[0], seed()));
      blocks.push(new AEKLResBlock(sd, channels[0], channels[0], { ...norm, seed: seed() }));
    }
    let cin = channels[0];
    channels.forEach((c, i) => {
      for (let r = 0; r < numResBlocks[i]; r++) {
        blocks.push(new AEKLResBlock(sd, cin, c, { ...norm, seed: seed() }));
        cin = c;
        if (attentionLevels[i]) blocks.push(attention(cfg, c, seed()));
      }
      if (i < channels.length - 1) {
        blocks.push(
          cfg.useConvtranspose
            ? new DeconvUpsample(sd, cin, { seed: seed() })
            : new Upsample(sd, cin, { seed: seed() }),
        );
      }
    });
    blocks.push(new GroupNorm(cfg.normNumGroups, cin, { eps: cfg.normEps }));
    blocks.push(new Convolution(sd, cin, cfg.outChannels, { padding: 1, seed: seed() }));
    this.blocks = this.child("blocks", blocks);
  }

  /** z [B, latentChannels, …latent] → [B, outChannels, …latent · 2^(levels − 1)]. */
  forward(z: Tensor): Tensor {
    return runChain(this.blocks.items, z);
  }
}

/** The latent posterior of {@linkcode AutoencoderKL.encode}: a diagonal Gaussian N(mu, sigma²). */
export interface LatentPosterior {
  /** Mean [B, latentChannels, …latent]. */
  mu: Tensor;
  /** Standard deviation, exp(clamp(log σ², −30, 20) / 2), same shape. */
  sigma: Tensor;
}

/** Options of {@linkcode AutoencoderKL.sampling}. */
export interface LatentSamplingOptions {
  /** Seed of the Philox noise ξ (deterministic across machines). */
  seed: number;
  /** Counter offset into the seed's stream (default 0), to draw several independent samples. */
  offset?: number;
}

/**
 * MONAI's `AutoencoderKL`: an encoder to a diagonal Gaussian latent (`quant_conv_mu`, `quant_conv_log_sigma`)
 * and a decoder back (`post_quant_conv`, `decoder`). Parameters start from a seeded PyTorch-style
 * initialisation; load trained weights with `loadStateDict`.
 *
 * @example
 * ```ts
 * const ae = new AutoencoderKL({
 *   spatialDims: 3, channels: [32, 64, 64], latentChannels: 3, numResBlocks: 1, normNumGroups: 16,
 *   attentionLevels: [false, false, false], withEncoderNonlocalAttn: false, withDecoderNonlocalAttn: false,
 * });
 * const { mu, sigma } = noGrad(() => ae.eval().encode(x));
 * const xHat = noGrad(() => ae.decode(mu));
 * ```
 */
export class AutoencoderKL extends Module {
  /** The options with defaults filled in. */
  readonly config: ResolvedAutoencoderOptions;

  /** Builds the network (validating the options like MONAI, see {@linkcode resolveAutoencoderOptions}). */
  constructor(options: AutoencoderKLOptions) {
    super();
    const cfg = resolveAutoencoderOptions(options);
    this.config = cfg;
    const seed = seedStream(cfg.seed);
    const { spatialDims: sd, latentChannels: lc } = cfg;
    this.child("encoder", new Encoder(cfg));
    this.child("decoder", new Decoder(cfg));
    this.child("quant_conv_mu", new Convolution(sd, lc, lc, { kernelSize: 1, seed: seed() }));
    this.child("quant_conv_log_sigma", new Convolution(sd, lc, lc, { kernelSize: 1, seed: seed() }));
    this.child("post_quant_conv", new Convolution(sd, lc, lc, { kernelSize: 1, seed: seed() }));
    if (options.useCheckpoint) this.gradientCheckpointing(true);
  }

  /**
   * Turns gradient checkpointing of every residual block (encoder and decoder) on or off: training then
   * keeps each block's input instead of its activations and recomputes them in backward, for about one more
   * forward of the blocks per step. Values and gradients do not change. Returns the model.
   */
  gradientCheckpointing(on = true): this {
    for (const [, m] of this.namedModules()) if (m instanceof AEKLResBlock) m.checkpointing = on;
    return this;
  }

  /** How many times the encoder halves each spatial axis: 2^(levels − 1). */
  get downsampling(): number {
    return 2 ** (this.config.channels.length - 1);
  }

  /** The latent shape [latentChannels, …] of an image of spatial shape `spatial` (checked). */
  latentShape(spatial: readonly number[]): number[] {
    this.#checkSpatial(spatial, "the image");
    return [this.config.latentChannels, ...spatial.map((n) => n / this.downsampling)];
  }

  #checkSpatial(spatial: readonly number[], what: string): void {
    const f = this.downsampling;
    if (spatial.length !== this.config.spatialDims || spatial.some((n) => !isPositiveInt(n) || n % f !== 0)) {
      fail(
        `${what}'s spatial size ${formatShape(spatial)} must have ${this.config.spatialDims} axes, each a ` +
          `multiple of ${f} (${this.config.channels.length - 1} halvings).`,
      );
    }
  }

  #checkInput(x: Tensor, channels: number, what: string): void {
    const axes = this.config.spatialDims === 3 ? "D, H, W" : "H, W";
    if (x.rank !== this.config.spatialDims + 2 || x.shape[1] !== channels) {
      fail(`${what} ${formatShape(x.shape)} must be [B, ${channels}, ${axes}].`);
    }
  }

  /** Encodes x [B, inChannels, …spatial] to the latent posterior N(mu, sigma²). */
  encode(x: Tensor): LatentPosterior {
    this.#checkInput(x, this.config.inChannels, "the image");
    this.#checkSpatial(x.shape.slice(2), "the image");
    return scope(() => {
      const h = liveChild<Encoder>(this, "encoder").forward(x);
      const mu = liveChild<Convolution>(this, "quant_conv_mu").forward(h);
      const logVar = clamp(liveChild<Convolution>(this, "quant_conv_log_sigma").forward(h), -30, 20);
      return { mu, sigma: exp(mul(logVar, 0.5)) };
    });
  }

  /** z = mu + sigma ⊙ ξ with ξ ~ N(0, I) from the Philox stream of `opts.seed` (the reparameterisation). */
  sampling(mu: Tensor, sigma: Tensor, opts: LatentSamplingOptions): Tensor {
    if (mu.rank !== sigma.rank || mu.shape.some((d, i) => d !== sigma.shape[i])) {
      fail(
        `sampling: mu ${formatShape(mu.shape)} and sigma ${formatShape(sigma.shape)} must have one shape.`,
      );
    }
    return scope(() => add(mu, mul(sigma, randn(mu.shape, { seed: opts.seed, offset: opts.offset ?? 0 }))));
  }

  /** Decodes a latent z [B, latentChannels, …latent] to an image [B, outChannels, …latent · 2^(levels − 1)]. */
  decode(z: Tensor): Tensor {
    this.#checkInput(z, this.config.latentChannels, "the latent");
    return scope(() => {
      const h = liveChild<Convolution>(this, "post_quant_conv").forward(z);
      return liveChild<Decoder>(this, "decoder").forward(h);
    });
  }

  /** decode(mu): the deterministic reconstruction of x. */
  reconstruct(x: Tensor): Tensor {
    return scope(() => this.decode(this.encode(x).mu));
  }

  /** MONAI's `forward`: encode, sample (seeded), decode. Returns the reconstruction with mu and sigma. */
  forward(x: Tensor, opts: LatentSamplingOptions): { reconstruction: Tensor } & LatentPosterior {
    return scope(() => {
      const { mu, sigma } = this.encode(x);
      const reconstruction = this.decode(this.sampling(mu, sigma, opts));
      return { reconstruction, mu, sigma };
    });
  }

  /** The diffusion model's input: a sample of the posterior of x (MONAI's `encode_stage_2_inputs`). */
  encodeStage2Inputs(x: Tensor, opts: LatentSamplingOptions): Tensor {
    return scope(() => {
      const { mu, sigma } = this.encode(x);
      return this.sampling(mu, sigma, opts);
    });
  }

  /** The image of a diffusion model's latent output (MONAI's `decode_stage_2_outputs`: decode). */
  decodeStage2Outputs(z: Tensor): Tensor {
    return this.decode(z);
  }
}

/** Result of {@linkcode convertGenerativeAutoencoderStateDict}. */
export interface ConvertedAutoencoderStateDict {
  /** The state dict under current MONAI names (sharing the input's tensors, plus `created`). */
  state: Map<string, Tensor>;
  /** Old keys that have no counterpart in the model and were left out (the unused `proj_attn`). */
  dropped: string[];
  /** Tensors made by the conversion (identity `out_proj`); the caller disposes them after loading. */
  created: Tensor[];
}

/**
 * Renames a state dict of MONAI Generative's (GenerativeModels) `AutoencoderKL` to current MONAI names, like
 * MONAI's `load_old_state_dict`: attention `X.to_q|to_k|to_v` → `X.attn.to_q|…`, upsampler `conv.conv` →
 * `postconv.conv`. The old attention built `proj_attn` but never applied it, so `proj_attn` is dropped; a
 * model built with `includeFc: true` gets an identity `out_proj` (what MONAI does), one with `includeFc:
 * false` has none. Either reproduces the old outputs.
 *
 * GenerativeModels' transposed-convolution upsampler (k3, s2, p1) has no counterpart in MONAI core, whose
 * `deconv` is k2 s2: such a state dict is refused.
 */
export function convertGenerativeAutoencoderStateDict(
  old: Map<string, Tensor>,
  model: AutoencoderKL,
): ConvertedAutoencoderStateDict {
  const wanted = model.stateDict();
  const state = new Map<string, Tensor>();
  const dropped: string[] = [];
  const created: Tensor[] = [];
  const rules: Array<(key: string) => string> = [
    (k) => k.replace(/\.(to_q|to_k|to_v)\.(weight|bias)$/, ".attn.$1.$2"),
    (k) =>
      k.replace(/^decoder\.blocks\.(\d+)\.conv\.conv\.(weight|bias)$/, "decoder.blocks.$1.postconv.conv.$2"),
  ];
  for (const [key, t] of old) {
    if (wanted.has(key)) {
      state.set(key, t);
      continue;
    }
    const renamed = rules.map((rule) => rule(key)).find((k) => k !== key && wanted.has(k));
    if (renamed) {
      state.set(renamed, t);
      continue;
    }
    const deconv = key.match(/^decoder\.blocks\.(\d+)\.conv\.conv\.weight$/);
    if (deconv && wanted.has(`decoder.blocks.${deconv[1]}.deconv.weight`)) {
      throw new Error(
        `convertGenerativeAutoencoderStateDict: "${key}" is GenerativeModels' transposed convolution (kernel ` +
          "3, stride 2, padding 1), which MONAI core's AutoencoderKL (deconv: kernel 2, stride 2) cannot hold.",
      );
    }
    dropped.push(key);
  }
  for (const [key, t] of wanted) {
    if (state.has(key) || !/\.attn\.out_proj\.(weight|bias)$/.test(key)) continue;
    const n = t.shape[0];
    const values = new Float32Array(t.size);
    if (key.endsWith("weight")) { for (let i = 0; i < n; i++) values[i * n + i] = 1; }
    const made = tensor(values, t.shape);
    created.push(made);
    state.set(key, made);
  }
  return { state, dropped, created };
}
