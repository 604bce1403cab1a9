/**
 * `VCM`: the Volumetric Conditioning Module of Ahn et al. (WACV 2025), which steers a frozen
 * diffusion model with spatial conditions by modulating the noise it predicts:
 *
 *   (γ, β) = φ(z_t, ε_t, y₁…yₙ, t),   ε' = ε_t ⊙ (1 + γ) + β.
 *
 * φ is an "asymmetric U-Net": one condition encoder per condition (a time-free diffusion-style encoder that
 * brings the condition from its grid down to the model's, as many halvings as the condition grid is finer),
 * a time-conditioned {@linkcode DiffusionModelUNet} on [z_t, ε_t, encoded conditions], and a head: a shared
 * 3×3 convolution with LeakyReLU, then one 3×3 convolution for γ and one for β.
 *
 * Differences from the released code (github.com/Ahn-Ssu/VCM @ dc7a941), by default, each with an option:
 * the γ/β convolutions start at zero, so ε' = ε exactly at initialisation (`zeroHead: false` keeps PyTorch's
 * initialisation), and they carry no normalisation (`headNorm: "instance"` reproduces the release's MONAI
 * `Convolution` default, an InstanceNorm without affine parameters). Parameter names follow the release
 * (`modality_encoder.*`, `time_unet.*`, `mlp_shared`, `mlp_gamma`, `mlp_beta`); with several conditions the
 * encoders are `modality_encoders.N`.
 *
 * @module
 */

import { scope } from "../engine/memory.ts";
import { noGrad } from "../engine/autograd.ts";
import { add, div, maximum, mul, sub } from "../engine/ops/elementwise.ts";
import { map } from "../engine/ops/map.ts";
import { groupNorm } from "../engine/ops/norm.ts";
import { tensor, zeros } from "../engine/ops/create.ts";
import { interpolate } from "../engine/ops/resample.ts";
import { concat } from "../engine/ops/view.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { ResnetBlock } from "../nn/blocks.ts";
import { Convolution, liveChild, seedStream, type SpatialDims } from "../nn/conv.ts";
import type { Timesteps } from "../nn/embedding.ts";
import { Module, ModuleList } from "../nn/module.ts";
import { DiffusionModelUNet, type DiffusionModelUNetOptions } from "./unet.ts";

/** Options of the time-conditioned U-Net inside a VCM (the release's values are the defaults). */
export type VCMUNetOptions = Pick<
  DiffusionModelUNetOptions,
  | "channels"
  | "numResBlocks"
  | "attentionLevels"
  | "numHeadChannels"
  | "normNumGroups"
  | "normEps"
  | "resblockUpdown"
  | "includeFc"
>;

/** Constructor options of {@linkcode VCM}. */
export interface VCMOptions {
  /** 2 or 3 (default 3). */
  spatialDims?: SpatialDims;
  /** Channels of the frozen model's input and output (z_t and ε): latent channels, or 1 in pixel space. */
  modelChannels: number;
  /** Channels of each condition, one encoder each (e.g. [1] for one mask, [3] for one-hot tissue classes). */
  conditionChannels: readonly number[];
  /**
   * How many times each encoder halves its condition's grid: log2(condition grid / model grid), 0 in pixel
   * space, 3 for BrainLDM's ×8 autoencoder (see {@linkcode encoderDownsamplings}).
   */
  downsamplings: number;
  /**
   * How conditions reach the model grid: "asymmetric" (default), the condition encoders; or "resize", the
   * paper's Table 3 ablation — the condition resized (trilinear) to the model grid, no encoder.
   */
  encoder?: "asymmetric" | "resize";
  /** Channels of the encoder's levels (default [16, 32, 48]); at least `downsamplings` levels. */
  encoderChannels?: readonly number[];
  /** Time-free ResnetBlocks per encoder level (default 2), one number or one per level. */
  encoderResBlocks?: number | readonly number[];
  /** GroupNorm groups of the encoders (default 16). */
  encoderGroups?: number;
  /** The time U-Net's options (defaults: channels [64, 128, 256], 2 res blocks, attention at the last level
   * with 256 channels per head, 32 groups, ResnetBlock up/down, output projection of attention on). */
  unet?: VCMUNetOptions;
  /** Output channels of the time U-Net, the head's input (default 64). */
  hiddenChannels?: number;
  /** Width of the head's shared convolution (default 128, as hard-coded in the release). */
  headChannels?: number;
  /** Normalisation after the γ and β convolutions: "none" (default) or the release's "instance". */
  headNorm?: "none" | "instance";
  /** Start γ and β at zero, so that ε' = ε (default true; the release does not). */
  zeroHead?: boolean;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/** The options with every default filled in. */
export interface ResolvedVCMOptions {
  /** See {@linkcode VCMOptions}. */
  spatialDims: SpatialDims;
  /** Channels of z_t and ε. */
  modelChannels: number;
  /** Channels per condition. */
  conditionChannels: number[];
  /** Halvings of each encoder. */
  downsamplings: number;
  /** Encoders, or the resize ablation. */
  encoder: "asymmetric" | "resize";
  /** Encoder channels per level. */
  encoderChannels: number[];
  /** Encoder ResnetBlocks per level. */
  encoderResBlocks: number[];
  /** Encoder GroupNorm groups. */
  encoderGroups: number;
  /** The time U-Net's options. */
  unet: Required<VCMUNetOptions>;
  /** Time U-Net output channels. */
  hiddenChannels: number;
  /** Head width. */
  headChannels: number;
  /** Head normalisation. */
  headNorm: "none" | "instance";
  /** Zero-initialised γ and β. */
  zeroHead: boolean;
  /** Seed. */
  seed: number;
}

const fail = (message: string): never => {
  throw new Error(`VCM: ${message}`);
};

const positiveInt = (v: unknown): v is number => Number.isInteger(v) && (v as number) > 0;

/** Validates the options and fills in the release's defaults. */
export function resolveVCMOptions(opts: VCMOptions): ResolvedVCMOptions {
  const spatialDims = opts.spatialDims ?? 3;
  if (spatialDims !== 2 && spatialDims !== 3) fail(`spatialDims must be 2 or 3, got ${spatialDims}.`);
  if (!positiveInt(opts.modelChannels)) {
    fail(`modelChannels must be a positive integer, got ${opts.modelChannels}.`);
  }
  const conditionChannels = [...(opts.conditionChannels ?? [])];
  if (conditionChannels.length === 0 || !conditionChannels.every(positiveInt)) {
    fail(
      `conditionChannels must list each condition's channel count (positive integers), got ${
        JSON.stringify(opts.conditionChannels)
      }.`,
    );
  }
  const encoderChannels = [...(opts.encoderChannels ?? [16, 32, 48])];
  const encoderGroups = opts.encoderGroups ?? 16;
  if (encoderChannels.length === 0 || !encoderChannels.every(positiveInt)) {
    fail(
      `encoderChannels must be a non-empty list of positive integers, got ${
        JSON.stringify(encoderChannels)
      }.`,
    );
  }
  if (encoderChannels.some((c) => c % encoderGroups !== 0)) {
    fail(
      `every encoderChannels entry ${
        JSON.stringify(encoderChannels)
      } must be a multiple of encoderGroups ${encoderGroups}.`,
    );
  }
  const down = opts.downsamplings;
  const encoder = opts.encoder ?? "asymmetric";
  if (encoder !== "asymmetric" && encoder !== "resize") {
    fail(`encoder must be "asymmetric" or "resize", got ${JSON.stringify(encoder)}.`);
  }
  if (!Number.isInteger(down) || down < 0 || (encoder === "asymmetric" && down > encoderChannels.length)) {
    fail(
      `downsamplings must be an integer in 0..${encoderChannels.length} (one per encoder level at most), got ${down}.`,
    );
  }
  const res = opts.encoderResBlocks ?? 2;
  const encoderResBlocks = typeof res === "number" ? encoderChannels.map(() => res) : [...res];
  if (encoderResBlocks.length !== encoderChannels.length || !encoderResBlocks.every(positiveInt)) {
    fail(`encoderResBlocks must be a positive integer or one per encoder level, got ${JSON.stringify(res)}.`);
  }
  const u = opts.unet ?? {};
  const unet: Required<VCMUNetOptions> = {
    channels: u.channels ?? [64, 128, 256],
    numResBlocks: u.numResBlocks ?? 2,
    attentionLevels: u.attentionLevels ?? [false, false, true],
    // One head per attended level, as the release ([0, 0, 256]: levels without attention ignore theirs).
    numHeadChannels: u.numHeadChannels ?? u.channels ?? [64, 128, 256],
    normNumGroups: u.normNumGroups ?? 32,
    normEps: u.normEps ?? 1e-6,
    resblockUpdown: u.resblockUpdown ?? true,
    includeFc: u.includeFc ?? true,
  };
  const headNorm = opts.headNorm ?? "none";
  if (headNorm !== "none" && headNorm !== "instance") {
    fail(`headNorm must be "none" or "instance", got ${headNorm}.`);
  }
  const hiddenChannels = opts.hiddenChannels ?? 64;
  const headChannels = opts.headChannels ?? 128;
  if (!positiveInt(hiddenChannels) || !positiveInt(headChannels)) {
    fail(
      `hiddenChannels and headChannels must be positive integers, got ${hiddenChannels}, ${headChannels}.`,
    );
  }
  return {
    spatialDims,
    modelChannels: opts.modelChannels,
    conditionChannels,
    downsamplings: down,
    encoder,
    encoderChannels,
    encoderResBlocks,
    encoderGroups,
    unet,
    hiddenChannels,
    headChannels,
    headNorm,
    zeroHead: opts.zeroHead ?? true,
    seed: opts.seed ?? 0,
  };
}

/**
 * How many halvings bring a condition grid to the model's grid: log2 of the ratio, which must be the same
 * power of two along every axis (0 when the grids are equal, as in pixel space).
 */
export function encoderDownsamplings(conditionGrid: readonly number[], modelGrid: readonly number[]): number {
  if (conditionGrid.length !== modelGrid.length) {
    fail(
      `the condition grid ${formatShape(conditionGrid)} and the model grid ${
        formatShape(modelGrid)
      } differ in rank.`,
    );
  }
  const ratios = conditionGrid.map((n, i) => n / modelGrid[i]);
  const r = ratios[0];
  const levels = Math.log2(r);
  if (!ratios.every((q) => q === r) || !Number.isInteger(levels) || levels < 0) {
    fail(
      `the condition grid ${formatShape(conditionGrid)} must be the model grid ${
        formatShape(modelGrid)
      } times the same power of two along every axis (1, 2, 4, …).`,
    );
  }
  return levels;
}

/**
 * The release's `DiffusionLikeEncoder`: conv_in, then per level time-free ResnetBlocks and, on the first
 * `downsamplings` levels, a ResnetBlock that halves the grid (average pooling inside).
 */
export class VCMConditionEncoder extends Module {
  /** Output channels (the last level's). */
  readonly outChannels: number;

  /** An encoder for a condition of `inChannels` channels. */
  constructor(
    readonly spatialDims: SpatialDims,
    readonly inChannels: number,
    cfg: ResolvedVCMOptions,
    seed: number,
  ) {
    super();
    const seeds = seedStream(seed);
    const ch = cfg.encoderChannels;
    const norm = { normNumGroups: cfg.encoderGroups, normEps: cfg.unet.normEps };
    this.child("conv_in", new Convolution(spatialDims, inChannels, ch[0], { padding: 1, seed: seeds() }));
    const levels = new ModuleList<Module>();
    ch.forEach((c, i) => {
      const level = new EncoderLevel();
      const resnets = new ModuleList<ResnetBlock>();
      for (let r = 0; r < cfg.encoderResBlocks[i]; r++) {
        const cin = r === 0 ? (i === 0 ? ch[0] : ch[i - 1]) : c;
        resnets.push(new ResnetBlock(spatialDims, cin, 0, { ...norm, outChannels: c, seed: seeds() }));
      }
      level.add("resnets", resnets);
      if (i < cfg.downsamplings) {
        level.add("downsampler", new ResnetBlock(spatialDims, c, 0, { ...norm, down: true, seed: seeds() }));
      }
      levels.push(level);
    });
    this.child("down_blocks", levels);
    this.outChannels = ch[ch.length - 1];
  }

  /** The condition [B, inChannels, …grid] → [B, outChannels, …grid / 2^downsamplings]. */
  forward(y: Tensor): Tensor {
    return scope(() => {
      let h = liveChild<Convolution>(this, "conv_in").forward(y);
      for (const level of liveChild<ModuleList<EncoderLevel>>(this, "down_blocks").items) {
        h = level.forward(h);
      }
      return h;
    });
  }
}

/** One encoder level: `resnets.N` and an optional `downsampler`. */
class EncoderLevel extends Module {
  add(name: string, m: Module): void {
    this.child(name, m);
  }

  forward(h: Tensor): Tensor {
    for (const r of liveChild<ModuleList<ResnetBlock>>(this, "resnets").items) h = r.forward(h);
    const down = this.children().find(([n]) => n === "downsampler")?.[1] as ResnetBlock | undefined;
    return down ? down.forward(h) : h;
  }
}

/** γ and β of a {@linkcode VCM}, each shaped like ε. */
export interface Modulation {
  /** Scale: ε' = ε ⊙ (1 + γ) + β. */
  gamma: Tensor;
  /** Shift. */
  beta: Tensor;
}

/** Options of {@linkcode VCM.forward}. */
export interface VCMForwardOptions {
  /**
   * Modality latent dropout: one [B] list of 0/1 per condition; a 0 zeroes that condition's encoded latent
   * for that sample (the paper's regulariser; a missing condition at inference is the same as a dropped one).
   */
  keep?: ReadonlyArray<readonly number[]>;
}

/** The Volumetric Conditioning Module. */
export class VCM extends Module {
  /** The options with defaults filled in. */
  readonly config: ResolvedVCMOptions;
  /** The condition encoders, one per condition (none for the resize ablation). */
  readonly encoders: VCMConditionEncoder[];

  /** Builds the module (seeded initialisation; γ and β at zero unless `zeroHead: false`). */
  constructor(options: VCMOptions) {
    super();
    const cfg = resolveVCMOptions(options);
    this.config = cfg;
    const seed = seedStream(cfg.seed);
    const sd = cfg.spatialDims;
    const resize = cfg.encoder === "resize";
    this.encoders = resize
      ? []
      : cfg.conditionChannels.map((c) => new VCMConditionEncoder(sd, c, cfg, seed()));
    if (this.encoders.length === 1) this.child("modality_encoder", this.encoders[0]);
    else if (this.encoders.length > 1) this.child("modality_encoders", new ModuleList(this.encoders));
    const encoded = resize
      ? cfg.conditionChannels.reduce((a, b) => a + b, 0)
      : this.encoders.reduce((n, e) => n + e.outChannels, 0);
    this.child(
      "time_unet",
      new DiffusionModelUNet({
        spatialDims: sd,
        inChannels: 2 * cfg.modelChannels + encoded,
        outChannels: cfg.hiddenChannels,
        ...cfg.unet,
        seed: seed(),
      }),
    );
    this.child(
      "mlp_shared",
      new Convolution(sd, cfg.hiddenChannels, cfg.headChannels, { padding: 1, seed: seed() }),
    );
    const head = { padding: 1, zeroInit: cfg.zeroHead };
    this.child(
      "mlp_gamma",
      new Convolution(sd, cfg.headChannels, cfg.modelChannels, { ...head, seed: seed() }),
    );
    this.child(
      "mlp_beta",
      new Convolution(sd, cfg.headChannels, cfg.modelChannels, { ...head, seed: seed() }),
    );
  }

  /**
   * γ and β for noisy input `zt` [B, modelChannels, …grid], the frozen model's noise prediction `eps` (same
   * shape), the conditions (each [B, conditionChannels[i], …grid × 2^downsamplings], or null when absent)
   * and the timesteps.
   */
  forward(
    zt: Tensor,
    eps: Tensor,
    conditions: ReadonlyArray<Tensor | null>,
    timesteps: Timesteps,
    opts: VCMForwardOptions = {},
  ): Modulation {
    const cfg = this.config;
    const [batch, channels, ...grid] = zt.shape;
    if (zt.rank !== cfg.spatialDims + 2 || channels !== cfg.modelChannels) {
      fail(
        `z_t ${formatShape(zt.shape)} must be [B, ${cfg.modelChannels}, …${cfg.spatialDims} spatial axes].`,
      );
    }
    if (eps.shape.join() !== zt.shape.join()) {
      fail(`ε ${formatShape(eps.shape)} must have z_t's shape ${formatShape(zt.shape)}.`);
    }
    checkConditions(cfg, conditions, batch, grid);
    if (opts.keep && (opts.keep.length !== conditions.length || opts.keep.some((k) => k.length !== batch))) {
      fail(`keep must hold one list of ${batch} values per condition (${conditions.length}).`);
    }
    const ones = new Array<number>(cfg.spatialDims).fill(1);
    return scope(() => {
      const encoded = cfg.conditionChannels.map((c, i) => {
        const y = conditions[i];
        const encoder = this.encoders[i];
        if (!y) return zeros([batch, encoder?.outChannels ?? c, ...grid]);
        const h = encoder ? encoder.forward(y) : resized(y, grid, cfg.spatialDims);
        const keep = opts.keep?.[i];
        if (!keep || keep.every((k) => k === 1)) return h;
        return mul(h, tensor(keep.map(Number), [batch, 1, ...ones]));
      });
      const input = concat([zt, eps, ...encoded], 1);
      const h = liveChild<DiffusionModelUNet>(this, "time_unet").forward(input, timesteps);
      const shared = liveChild<Convolution>(this, "mlp_shared").forward(h);
      const act = maximum(shared, mul(shared, 0.01)); // LeakyReLU(0.01), MONAI's default slope
      const out = (name: string) => {
        const y = liveChild<Convolution>(this, name).forward(act);
        return cfg.headNorm === "instance" ? groupNorm(y, cfg.modelChannels, undefined, undefined, 1e-5) : y;
      };
      return { gamma: out("mlp_gamma"), beta: out("mlp_beta") };
    });
  }
}

/** The resize ablation: the condition brought to the model grid by (tri/bi)linear interpolation. */
function resized(y: Tensor, grid: readonly number[], spatialDims: SpatialDims): Tensor {
  if (y.shape.slice(2).join() === grid.join()) return y;
  return interpolate(y, { size: [...grid], mode: spatialDims === 3 ? "trilinear" : "bilinear" });
}

function checkConditions(
  cfg: ResolvedVCMOptions,
  conditions: ReadonlyArray<Tensor | null>,
  batch: number,
  grid: readonly number[],
): void {
  if (conditions.length !== cfg.conditionChannels.length) {
    fail(
      `${conditions.length} condition(s) given; the module has ${cfg.conditionChannels.length} encoder(s) ` +
        "(pass null for an absent one).",
    );
  }
  const factor = 2 ** cfg.downsamplings;
  conditions.forEach((y, i) => {
    if (!y) return;
    const want = [batch, cfg.conditionChannels[i], ...grid.map((n) => n * factor)];
    if (y.shape.join() !== want.join()) {
      fail(
        `condition ${i} ${formatShape(y.shape)} must be ${formatShape(want)}: ${cfg.conditionChannels[i]} ` +
          `channel(s) on the model grid ${formatShape(grid)}${factor > 1 ? ` × ${factor}` : ""}.`,
      );
    }
  });
}

/** ε' = ε ⊙ (1 + γ) + β (differentiable; exactly ε when γ = β = 0). */
export function modulate(eps: Tensor, m: Modulation): Tensor {
  return scope(() => add(mul(eps, add(m.gamma, 1)), m.beta));
}

/** What a frozen model predicts (as the schedulers name it). */
export type Prediction = "epsilon" | "v_prediction" | "sample";

/**
 * ε from a model output at noisy x with cumulative ᾱ per sample (`alphaBar`: one value, or one per batch
 * element): ε itself; ε = √ᾱ·v + √(1−ᾱ)·x for v; ε = (x − √ᾱ·x̂₀)/√(1−ᾱ) for a sample prediction.
 * Not differentiable (the frozen model's output needs no gradient).
 */
export function epsFromPrediction(
  prediction: Prediction,
  output: Tensor,
  x: Tensor,
  alphaBar: readonly number[],
): Tensor {
  return convert(prediction, "to-eps", output, x, alphaBar);
}

/** The inverse of {@linkcode epsFromPrediction}: the model's kind of output from ε at x. */
export function predictionFromEps(
  prediction: Prediction,
  eps: Tensor,
  x: Tensor,
  alphaBar: readonly number[],
): Tensor {
  return convert(prediction, "from-eps", eps, x, alphaBar);
}

function convert(
  prediction: Prediction,
  way: "to-eps" | "from-eps",
  a: Tensor,
  x: Tensor,
  alphaBar: readonly number[],
): Tensor {
  if (alphaBar.length !== 1 && alphaBar.length !== x.shape[0]) {
    fail(`alphaBar needs one value or one per sample (${x.shape[0]}), got ${alphaBar.length}.`);
  }
  if (prediction === "epsilon") return map("copy", "a", [a]);
  return noGrad(() =>
    scope(() => {
      const shape = [alphaBar.length, ...x.shape.slice(1).map(() => 1)];
      const sa = tensor(alphaBar.map((v) => Math.sqrt(v)), shape);
      const sb = tensor(alphaBar.map((v) => Math.sqrt(1 - v)), shape);
      if (prediction === "v_prediction") {
        // ε = √ᾱ·v + √(1−ᾱ)·x;  v = (ε − √(1−ᾱ)·x)/√ᾱ
        return way === "to-eps" ? add(mul(a, sa), mul(x, sb)) : div(sub(a, mul(x, sb)), sa);
      }
      // ε = (x − √ᾱ·x̂₀)/√(1−ᾱ);  x̂₀ = (x − √(1−ᾱ)·ε)/√ᾱ
      return way === "to-eps" ? div(sub(x, mul(a, sa)), sb) : div(sub(x, mul(a, sb)), sa);
    })
  );
}
