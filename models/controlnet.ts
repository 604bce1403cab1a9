/**
 * `ControlNet`: MONAI's ControlNet (Zhang & Agrawala, "Adding Conditional Control to Text-to-Image Diffusion
 * Models") with the same constructor options (camelCase), parameter names, shapes and forward pass. It is a
 * trainable copy of a {@linkcode DiffusionModelUNet}'s encoder and middle block, fed the noisy input plus an
 * embedding of a spatial condition; every skip tensor and the middle block's output leave through a 1×1
 * convolution that starts at zero, scaled by `conditioningScale`. The results go into the frozen U-Net's
 * `downBlockAdditionalResiduals` / `midBlockAdditionalResidual`, so at initialisation the pair computes exactly
 * what the U-Net alone does.
 *
 * @module
 */

import { scope } from "../engine/memory.ts";
import { add, mul, silu } from "../engine/ops/elementwise.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { DownBlock, MidBlock } from "../nn/blocks.ts";
import { ConvNd, Convolution, type Layer, liveChild, seedStream, type SpatialDims } from "../nn/conv.ts";
import { Embedding, type Timesteps } from "../nn/embedding.ts";
import { Module, ModuleList } from "../nn/module.ts";
import {
  checkUNetInputs,
  type DiffusionModelUNet,
  type DiffusionModelUNetOptions,
  type ResolvedUNetOptions,
  resolveUNetOptions,
  TimeEmbedMlp,
  unetOptionsFromMonai,
  unetTimeEmbedding,
} from "./unet.ts";

/** Constructor options of {@linkcode ControlNet}: MONAI's arguments in camelCase, same defaults. */
export interface ControlNetOptions extends Omit<DiffusionModelUNetOptions, "outChannels" | "dropoutCattn"> {
  /** Channels of the condition volume (default 1). */
  conditioningEmbeddingInChannels?: number;
  /**
   * Channels of the condition embedding's stages (default [16, 32, 96, 256]); each stage after the first
   * halves the grid, so the condition is 2^(length − 1) times finer than the model input.
   */
  conditioningEmbeddingNumChannels?: readonly number[];
}

/** The residuals a {@linkcode ControlNet} adds to a U-Net: spread them into its forward options. */
export interface ControlNetResiduals {
  /** One per skip tensor of the U-Net's encoder, in order. */
  downBlockAdditionalResiduals: Tensor[];
  /** Added to the middle block's output. */
  midBlockAdditionalResidual: Tensor;
}

/** Forward options of {@linkcode ControlNet.forward}. */
export interface ControlNetForwardOptions {
  /** Multiplies every residual (MONAI's `conditioning_scale`, default 1). */
  conditioningScale?: number;
  /** Cross-attention context [B, tokens, crossAttentionDim]. */
  context?: Tensor;
  /** Class labels [B]. */
  classLabels?: Tensor | readonly number[];
}

/**
 * MONAI's `ControlNetConditioningEmbedding`: conv 3×3 + SiLU to channels[0], then per stage a conv 3×3 + SiLU
 * and a stride-2 conv 3×3 + SiLU to the next stage's width, and a zero-initialised conv 3×3 out.
 */
export class ControlNetConditioningEmbedding extends Module {
  /** Downsampling factor of the embedding: 2^(stages − 1). */
  readonly factor: number;

  /** The embedding from `inChannels` to `outChannels` through `channels` stages. */
  constructor(
    readonly spatialDims: SpatialDims,
    readonly inChannels: number,
    readonly outChannels: number,
    channels: readonly number[],
    seed: number,
  ) {
    super();
    if (channels.length === 0 || !channels.every((c) => Number.isInteger(c) && c > 0)) {
      throw new Error(
        `ControlNet: conditioningEmbeddingNumChannels must be a non-empty list of positive integers, got ${
          JSON.stringify(channels)
        }.`,
      );
    }
    const seeds = seedStream(seed);
    this.factor = 2 ** (channels.length - 1);
    this.child(
      "conv_in",
      new Convolution(spatialDims, inChannels, channels[0], { padding: 1, seed: seeds() }),
    );
    const blocks = new ModuleList<Convolution>();
    for (let i = 0; i < channels.length - 1; i++) {
      blocks.push(new Convolution(spatialDims, channels[i], channels[i], { padding: 1, seed: seeds() }));
      blocks.push(
        new Convolution(spatialDims, channels[i], channels[i + 1], { padding: 1, stride: 2, seed: seeds() }),
      );
    }
    this.child("blocks", blocks);
    this.child(
      "conv_out",
      new Convolution(spatialDims, channels[channels.length - 1], outChannels, {
        padding: 1,
        seed: seeds(),
        zeroInit: true,
      }),
    );
  }

  /** The condition [B, inChannels, …spatial] → [B, outChannels, …spatial / factor]. */
  forward(cond: Tensor): Tensor {
    return scope(() => {
      let h = silu(liveChild<Convolution>(this, "conv_in").forward(cond));
      for (const block of liveChild<ModuleList<Convolution>>(this, "blocks").items) {
        h = silu(block.forward(h));
      }
      return liveChild<Convolution>(this, "conv_out").forward(h);
    });
  }
}

/** The resolved ControlNet options: the U-Net's, plus the condition embedding's. */
export interface ResolvedControlNetOptions extends ResolvedUNetOptions {
  /** Channels of the condition. */
  conditioningEmbeddingInChannels: number;
  /** Stages of the condition embedding. */
  conditioningEmbeddingNumChannels: number[];
}

/**
 * MONAI's `ControlNet`. Build it with the frozen U-Net's options (or {@linkcode ControlNet.fromUNet}, which
 * also copies the U-Net's encoder and middle-block weights, MONAI's `load_state_dict(unet.state_dict(),
 * strict=False)`), then pass its residuals to the U-Net:
 *
 * @example
 * ```ts
 * const controlnet = ControlNet.fromUNet(unet, { conditioningEmbeddingNumChannels: [16] });
 * const residuals = controlnet.forward(xt, t, mask, { conditioningScale: 1 });
 * const eps = unet.forward(xt, t, residuals);
 * ```
 */
export class ControlNet extends Module {
  /** The options with defaults filled in. */
  readonly config: ResolvedControlNetOptions;

  /** Builds the network with seeded PyTorch-style weights and zero-initialised output convolutions. */
  constructor(options: ControlNetOptions) {
    super();
    const { conditioningEmbeddingInChannels, conditioningEmbeddingNumChannels, ...unetOptions } = options;
    const cfg: ResolvedControlNetOptions = {
      ...resolveUNetOptions({ ...unetOptions, outChannels: 1 }),
      conditioningEmbeddingInChannels: conditioningEmbeddingInChannels ?? 1,
      conditioningEmbeddingNumChannels: [...(conditioningEmbeddingNumChannels ?? [16, 32, 96, 256])],
    };
    const condIn = cfg.conditioningEmbeddingInChannels;
    if (!Number.isInteger(condIn) || condIn < 1) {
      throw new Error(
        `ControlNet: conditioningEmbeddingInChannels must be a positive integer, got ${
          JSON.stringify(condIn)
        }.`,
      );
    }
    this.config = cfg;
    const seed = seedStream(cfg.seed);
    const { spatialDims: sd, channels } = cfg;
    const norm = { normNumGroups: cfg.normNumGroups, normEps: cfg.normEps };
    const tembDim = channels[0] * 4;
    const attention = (i: number, on: boolean) => ({
      kind: on ? (cfg.withConditioning ? "cross" as const : "self" as const) : "none" as const,
      numHeadChannels: cfg.numHeadChannels[i],
      transformerNumLayers: cfg.transformerNumLayers,
      crossAttentionDim: cfg.crossAttentionDim ?? undefined,
      includeFc: cfg.includeFc,
      useCombinedLinear: cfg.useCombinedLinear,
    });
    const zeroConv = (c: number) => new Convolution(sd, c, c, { kernelSize: 1, zeroInit: true });

    this.child("conv_in", new Convolution(sd, cfg.inChannels, channels[0], { padding: 1, seed: seed() }));
    this.child("time_embed", new TimeEmbedMlp(channels[0], tembDim, seed));
    if (cfg.numClassEmbeds !== null) {
      this.child("class_embedding", new Embedding(cfg.numClassEmbeds, tembDim, { seed: seed() }));
    }
    this.child(
      "controlnet_cond_embedding",
      new ControlNetConditioningEmbedding(
        sd,
        condIn,
        channels[0],
        cfg.conditioningEmbeddingNumChannels,
        seed(),
      ),
    );
    const down = new ModuleList<DownBlock>();
    // MONAI's first residual convolution is a bare Conv (keys `.weight`), the others `Convolution`s (`.conv.`).
    const residualConvs = new ModuleList<Module>([
      new ConvNd(sd, channels[0], channels[0], { kernelSize: 1, zeroInit: true }),
    ]);
    channels.forEach((c, i) => {
      const last = i === channels.length - 1;
      down.push(
        new DownBlock(sd, i === 0 ? channels[0] : channels[i - 1], c, tembDim, {
          ...norm,
          numResBlocks: cfg.numResBlocks[i],
          addDownsample: !last,
          resblockUpdown: cfg.resblockUpdown,
          attention: attention(i, cfg.attentionLevels[i]),
          seed: seed(),
        }),
      );
      for (let r = 0; r < cfg.numResBlocks[i] + (last ? 0 : 1); r++) residualConvs.push(zeroConv(c));
    });
    this.child("down_blocks", down);
    this.child("controlnet_down_blocks", residualConvs);
    const top = channels.length - 1;
    this.child(
      "middle_block",
      new MidBlock(sd, channels[top], tembDim, { ...norm, attention: attention(top, true), seed: seed() }),
    );
    this.child("controlnet_mid_block", zeroConv(channels[top]));
  }

  /**
   * A ControlNet for `unet`, with its options and its encoder, middle block, time (and class) embedding and
   * input convolution copied; the condition embedding and the zero convolutions start fresh.
   */
  static fromUNet(
    unet: DiffusionModelUNet,
    opts: Pick<
      ControlNetOptions,
      "conditioningEmbeddingInChannels" | "conditioningEmbeddingNumChannels" | "seed"
    > = {},
  ): ControlNet {
    const { outChannels: _out, dropoutCattn: _drop, seed: _seed, ...shared } = unet.config;
    const net = new ControlNet({
      ...shared,
      crossAttentionDim: shared.crossAttentionDim ?? undefined,
      numClassEmbeds: shared.numClassEmbeds ?? undefined,
      ...opts,
    });
    const own = net.stateDict();
    const copied = new Map([...unet.stateDict()].filter(([k]) => own.has(k)));
    net.loadStateDict(copied, { strict: false });
    return net;
  }

  /** Downsampling factor from the condition's grid to the model input's grid. */
  get conditionFactor(): number {
    return liveChild<ControlNetConditioningEmbedding>(this, "controlnet_cond_embedding").factor;
  }

  /**
   * The residuals for the U-Net's skips and middle block, from the noisy input x [B, inChannels, …], the
   * timesteps and the condition [B, conditioningEmbeddingInChannels, …spatial × conditionFactor].
   */
  forward(
    x: Tensor,
    timesteps: Timesteps,
    cond: Tensor,
    opts: ControlNetForwardOptions = {},
  ): ControlNetResiduals {
    const cfg = this.config;
    const batch = checkUNetInputs("ControlNet", cfg, x, timesteps, opts);
    const factor = this.conditionFactor;
    const want = [batch, cfg.conditioningEmbeddingInChannels, ...x.shape.slice(2).map((d) => d * factor)];
    if (cond.shape.join() !== want.join()) {
      throw new Error(
        `ControlNet: the condition ${formatShape(cond.shape)} must be ${formatShape(want)} (the input ${
          formatShape(x.shape)
        } with ${cfg.conditioningEmbeddingInChannels} channel(s), ${factor}× finer).`,
      );
    }
    const scale = opts.conditioningScale ?? 1;
    const { context } = opts;
    return scope(() => {
      const emb = unetTimeEmbedding(this, cfg.channels[0], batch, timesteps, opts.classLabels);
      const embedded = liveChild<ControlNetConditioningEmbedding>(this, "controlnet_cond_embedding")
        .forward(cond);
      let h = add(liveChild<Layer>(this, "conv_in").forward(x), embedded);
      const skips: Tensor[] = [h];
      for (const block of liveChild<ModuleList<DownBlock>>(this, "down_blocks").items) {
        const out = block.forward(h, emb, context);
        h = out.h;
        skips.push(...out.states);
      }
      h = liveChild<MidBlock>(this, "middle_block").forward(h, emb, context);
      const convs = liveChild<ModuleList<Layer>>(this, "controlnet_down_blocks").items;
      const scaled = (t: Tensor) => scale === 1 ? t : mul(t, scale);
      return {
        downBlockAdditionalResiduals: skips.map((s, i) => scaled(convs[i].forward(s))),
        midBlockAdditionalResidual: scaled(liveChild<Layer>(this, "controlnet_mid_block").forward(h)),
      };
    });
  }
}

/**
 * ControlNet options from a MONAI constructor config with snake_case keys (`conditioning_embedding_*` plus
 * the U-Net's, see {@linkcode unetOptionsFromMonai}).
 */
export function controlNetOptionsFromMonai(config: Record<string, unknown>): ControlNetOptions {
  const {
    conditioning_embedding_in_channels: condIn,
    conditioning_embedding_num_channels: condChannels,
    ...rest
  } = config;
  const { outChannels: _out, ...unet } = unetOptionsFromMonai({ out_channels: 1, ...rest });
  return {
    ...unet,
    ...(condIn == null ? {} : { conditioningEmbeddingInChannels: condIn as number }),
    ...(condChannels == null ? {} : { conditioningEmbeddingNumChannels: condChannels as number[] }),
  };
}
