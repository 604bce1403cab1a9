/**
 * `SliceDiffusionUNet`: the slice-conditional 2-D diffusion U-Net of cDPM (Peng et al., "Generating realistic
 * brain MRIs via a conditional diffusion probabilistic model"), after FDM (Harvey et al.), which the cDPM
 * code follows.
 *
 * The input is a batch of B volumes with T slots each, [B, T, C, H, W]. Each slot holds one slice: a
 * condition slot holds its clean slice (the network is told so by an indicator channel), a target slot the
 * noisy slice to denoise, a padding slot a noisy slice of another volume (training only; attention keeps it
 * apart). The slots are folded into the batch for the 2-D convolutions ([B·T, C + 1, H, W]); they meet only
 * in the slice attention ({@linkcode SliceAttention}), which follows each ResnetBlock of the attention
 * levels and of the middle block, before the spatial self-attention within each slice. The time embedding
 * of a volume goes to all its slots; with `absoluteIndexEmbedding` each slot adds an embedding of its slice
 * index relative to the volume depth (relative positions alone cannot tell the first stage of a staged
 * generation where it is in the volume).
 *
 * Parameter names follow MONAI's `DiffusionModelUNet` (`conv_in`, `time_embed`, `down_blocks.N.resnets.M`,
 * `…attentions.M`, `middle_block`, `up_blocks`, `out`), plus `slice_attentions.M` / `slice_attention` and
 * `index_embed`. Since the slice attention and the index embedding start as the identity and zero, a new
 * model computes, per slot, exactly what the 2-D `DiffusionModelUNet` with those weights computes on
 * [slice, indicator].
 *
 * @module
 */

import { scope } from "../engine/memory.ts";
import { tensor } from "../engine/ops/create.ts";
import { add, where } from "../engine/ops/elementwise.ts";
import { concat, expand, reshape } from "../engine/ops/view.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { Downsample, ResnetBlock, Upsample } from "../nn/blocks.ts";
import { SpatialAttentionBlock } from "../nn/attention.ts";
import { Convolution, findChild, type Layer, liveChild, seedStream } from "../nn/conv.ts";
import { timestepEmbedding } from "../nn/embedding.ts";
import { Module, ModuleList } from "../nn/module.ts";
import { checkLayout, SliceAttention, type SlotLayout, zeroLinear } from "../nn/slice_attention.ts";
import { OutputHead, TimeEmbedMlp } from "./unet.ts";
import type { Linear } from "../nn/linear.ts";

export type { SlotLayout, SlotRole } from "../nn/slice_attention.ts";

/** Constructor options of {@linkcode SliceDiffusionUNet}. */
export interface SliceUNetOptions {
  /** Image channels C of a slice (default 1); the network's first convolution sees C + 1 (the indicator). */
  inChannels?: number;
  /** Output channels (default inChannels). */
  outChannels?: number;
  /** Output channels of each level (default [32, 64, 64]). */
  channels?: readonly number[];
  /** ResnetBlocks per encoder level (default 1; the decoder has one more, as MONAI's). */
  numResBlocks?: number;
  /** Levels with slice + spatial attention after each ResnetBlock (default [false, false, true]); the middle block always has both. */
  attentionLevels?: readonly boolean[];
  /** Channels per attention head, slice and spatial (default 16). */
  numHeadChannels?: number;
  /** GroupNorm groups (default 8). */
  normNumGroups?: number;
  /** GroupNorm epsilon (default 1e-6). */
  normEps?: number;
  /** Add an embedding of each slot's slice index / depth to its time embedding (default true). */
  absoluteIndexEmbedding?: boolean;
  /**
   * Attention across the slots (default true). Without it the slots never meet: each slice is denoised
   * alone, knowing only its index (the "2-D independent" baseline of the cDPM study, docs/cdpm.md), and
   * condition slots are refused.
   */
  sliceAttention?: boolean;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/** The options with defaults filled in. */
export type ResolvedSliceUNetOptions = Required<SliceUNetOptions> & {
  channels: number[];
  attentionLevels: boolean[];
};

/** The slots of a batch and the clean slices of its condition slots: what the network is conditioned on. */
export interface SliceInputs extends SlotLayout {
  /** Clean slices [B, T, C, H, W]; their condition slots replace the input's (required with condition slots). */
  clean?: Tensor;
  /**
   * Depth D of the volumes (slice indices are in 0..D−1); required with `absoluteIndexEmbedding`, which
   * embeds index/D — a volume of another depth than the training one is therefore a stretched one.
   */
  depth?: number;
}

/** Extra inputs of {@linkcode SliceDiffusionUNet.forward}. */
export interface SliceForwardOptions {
  /** The slot layout and condition slices (required). */
  slices?: SliceInputs;
}

const fail = (message: string): never => {
  throw new Error(`SliceDiffusionUNet: ${message}`);
};

const positiveInt = (v: unknown): v is number => Number.isInteger(v) && (v as number) > 0;

/** Validates the options and fills in the defaults. */
export function resolveSliceUNetOptions(opts: SliceUNetOptions = {}): ResolvedSliceUNetOptions {
  const inChannels = opts.inChannels ?? 1;
  const outChannels = opts.outChannels ?? inChannels;
  const channels = [...(opts.channels ?? [32, 64, 64])];
  const attentionLevels = [...(opts.attentionLevels ?? channels.map((_, i) => i === channels.length - 1))];
  const numHeadChannels = opts.numHeadChannels ?? 16;
  const normNumGroups = opts.normNumGroups ?? 8;
  const numResBlocks = opts.numResBlocks ?? 1;
  for (
    const [name, v] of Object.entries({
      inChannels,
      outChannels,
      numHeadChannels,
      normNumGroups,
      numResBlocks,
    })
  ) {
    if (!positiveInt(v)) fail(`${name} must be a positive integer, got ${JSON.stringify(v)}.`);
  }
  if (channels.length === 0 || !channels.every(positiveInt)) {
    fail(`channels must be a non-empty list of positive integers, got ${JSON.stringify(opts.channels)}.`);
  }
  if (attentionLevels.length !== channels.length) {
    fail(`attentionLevels ${JSON.stringify(attentionLevels)} must have one entry per level of channels.`);
  }
  channels.forEach((c, i) => {
    if (c % normNumGroups !== 0) {
      fail(`channels[${i}] = ${c} must be a multiple of normNumGroups ${normNumGroups}.`);
    }
    const attended = attentionLevels[i] || i === channels.length - 1;
    if (attended && c % numHeadChannels !== 0) {
      fail(
        `channels[${i}] = ${c} must be divisible by numHeadChannels ${numHeadChannels} (attention heads).`,
      );
    }
  });
  const normEps = opts.normEps ?? 1e-6;
  if (!(normEps > 0)) fail(`normEps must be positive, got ${normEps}.`);
  return {
    inChannels,
    outChannels,
    channels,
    numResBlocks,
    attentionLevels,
    numHeadChannels,
    normNumGroups,
    normEps,
    absoluteIndexEmbedding: opts.absoluteIndexEmbedding ?? true,
    sliceAttention: opts.sliceAttention ?? true,
    seed: opts.seed ?? 0,
  };
}

/** The slice inputs a forward pass needs, checked against x [B, T, C, H, W]. */
function checkSlices(x: Tensor, cfg: ResolvedSliceUNetOptions, slices?: SliceInputs): SliceInputs {
  if (x.rank !== 5 || x.shape[2] !== cfg.inChannels) {
    fail(
      `x ${formatShape(x.shape)} must be [B, T, ${cfg.inChannels}, H, W] (volumes, slots, channels, H, W).`,
    );
  }
  if (!slices) fail("the slot layout (opts.slices: roles, indices, clean, depth) is required.");
  const s = slices!;
  const [b, t] = checkLayout("SliceDiffusionUNet", s);
  if (b !== x.shape[0] || t !== x.shape[1]) {
    fail(`the slot layout is ${b}×${t} (volumes × slots) but x is ${formatShape(x.shape)}.`);
  }
  const conditioned = s.roles.some((row) => row.includes("condition"));
  if (conditioned && !cfg.sliceAttention) {
    fail(
      "condition slots need slice attention; this network denoises every slice alone (sliceAttention false).",
    );
  }
  if (conditioned && (!s.clean || s.clean.shape.join() !== x.shape.join())) {
    fail(
      `condition slots need the clean slices (slices.clean) with x's shape ${formatShape(x.shape)}, got ${
        s.clean ? formatShape(s.clean.shape) : "none"
      }.`,
    );
  }
  if (!s.roles.some((row) => row.includes("target"))) {
    fail("no slot is a target: there is nothing to denoise.");
  }
  if (cfg.absoluteIndexEmbedding) {
    if (!positiveInt(s.depth)) fail(`slices.depth (the volume depth) is required, got ${s.depth}.`);
    if (s.indices.some((row) => row.some((i) => i < 0 || i >= s.depth!))) {
      fail(`slice indices must be in 0..${s.depth! - 1} (depth ${s.depth}).`);
    }
  }
  return s;
}

/** Slice attention (when the network has it), then spatial attention, as one step after a ResnetBlock. */
function attend(
  slice: SliceAttention | undefined,
  spatial: SpatialAttentionBlock | undefined,
  h: Tensor,
  emb: Tensor,
  layout: SlotLayout,
): Tensor {
  if (!spatial) return h;
  return scope(() => spatial.forward(slice ? slice.forward(h, emb, layout) : h));
}

/** One encoder or decoder level: ResnetBlocks, each followed by slice and spatial attention when enabled. */
class SliceLevel extends Module {
  constructor(
    readonly resnets: ResnetBlock[],
    attention:
      | { channels: number; tembChannels: number; cfg: ResolvedSliceUNetOptions; seed: () => number }
      | null,
    sampler: Downsample | Upsample | null,
  ) {
    super();
    this.child("resnets", new ModuleList(resnets));
    if (attention) {
      const { channels, tembChannels, cfg, seed } = attention;
      const norm = { normNumGroups: cfg.normNumGroups, normEps: cfg.normEps };
      if (cfg.sliceAttention) {
        this.child(
          "slice_attentions",
          new ModuleList(
            resnets.map(() =>
              new SliceAttention(channels, tembChannels, {
                ...norm,
                numHeadChannels: cfg.numHeadChannels,
                seed: seed(),
              })
            ),
          ),
        );
      }
      this.child(
        "attentions",
        new ModuleList(
          resnets.map(() =>
            new SpatialAttentionBlock(2, channels, {
              ...norm,
              numHeadChannels: cfg.numHeadChannels,
              seed: seed(),
            })
          ),
        ),
      );
    }
    if (sampler) this.child(sampler instanceof Downsample ? "downsampler" : "upsampler", sampler);
  }

  /** ResnetBlock i followed by its attention. */
  block(i: number, h: Tensor, emb: Tensor, layout: SlotLayout): Tensor {
    return scope(() => {
      const r = this.resnets[i].forward(h, emb);
      const slices = findChild<ModuleList<SliceAttention>>(this, "slice_attentions")?.items[i];
      const spatial = findChild<ModuleList<SpatialAttentionBlock>>(this, "attentions")?.items[i];
      return attend(slices, spatial, r, emb, layout);
    });
  }

  /** The level's down- or upsampler, or the identity. */
  sample(h: Tensor): Tensor {
    const s = findChild<Downsample | Upsample>(this, "downsampler") ?? findChild<Upsample>(this, "upsampler");
    return s ? s.forward(h) : h;
  }
}

/** The middle block: ResnetBlock, slice attention, spatial attention, ResnetBlock. */
class SliceMidBlock extends Module {
  constructor(channels: number, tembChannels: number, cfg: ResolvedSliceUNetOptions, seed: () => number) {
    super();
    const norm = { normNumGroups: cfg.normNumGroups, normEps: cfg.normEps };
    this.child("resnet_1", new ResnetBlock(2, channels, tembChannels, { ...norm, seed: seed() }));
    if (cfg.sliceAttention) {
      this.child(
        "slice_attention",
        new SliceAttention(channels, tembChannels, {
          ...norm,
          numHeadChannels: cfg.numHeadChannels,
          seed: seed(),
        }),
      );
    }
    this.child(
      "attention",
      new SpatialAttentionBlock(2, channels, { ...norm, numHeadChannels: cfg.numHeadChannels, seed: seed() }),
    );
    this.child("resnet_2", new ResnetBlock(2, channels, tembChannels, { ...norm, seed: seed() }));
  }

  forward(h: Tensor, emb: Tensor, layout: SlotLayout): Tensor {
    return scope(() => {
      const r = liveChild<ResnetBlock>(this, "resnet_1").forward(h, emb);
      const a = attend(
        findChild<SliceAttention>(this, "slice_attention"),
        liveChild<SpatialAttentionBlock>(this, "attention"),
        r,
        emb,
        layout,
      );
      return liveChild<ResnetBlock>(this, "resnet_2").forward(a, emb);
    });
  }
}

/**
 * The slice-conditional diffusion U-Net of cDPM (see the module documentation).
 *
 * @example
 * ```ts
 * const net = new SliceDiffusionUNet({ channels: [16, 32], attentionLevels: [false, true] });
 * // 1 volume, 3 slots: slice 4 given, slices 5 and 6 to denoise, in a volume of depth 32.
 * const eps = net.forward(x, [500], {
 *   slices: { roles: [["condition", "target", "target"]], indices: [[4, 5, 6]], clean, depth: 32 },
 * });
 * ```
 */
export class SliceDiffusionUNet extends Module {
  /** The options with defaults filled in. */
  readonly config: ResolvedSliceUNetOptions;

  /** Builds the network (see {@linkcode resolveSliceUNetOptions} for the checks). */
  constructor(options: SliceUNetOptions = {}) {
    super();
    const cfg = resolveSliceUNetOptions(options);
    this.config = cfg;
    const seed = seedStream(cfg.seed);
    const { channels } = cfg;
    const norm = { normNumGroups: cfg.normNumGroups, normEps: cfg.normEps };
    const temb = channels[0] * 4;
    const last = channels.length - 1;
    this.child("conv_in", new Convolution(2, cfg.inChannels + 1, channels[0], { padding: 1, seed: seed() }));
    this.child("time_embed", new TimeEmbedMlp(channels[0], temb, seed));
    if (cfg.absoluteIndexEmbedding) {
      const index = this.child("index_embed", new TimeEmbedMlp(channels[0], temb, seed));
      zeroLinear(index.getChild<Linear>("2"));
    }
    const attention = (i: number, on: boolean) =>
      on ? { channels: channels[i], tembChannels: temb, cfg, seed } : null;
    const down = new ModuleList<SliceLevel>();
    channels.forEach((c, i) => {
      const resnets = Array.from(
        { length: cfg.numResBlocks },
        (_, j) =>
          new ResnetBlock(2, j === 0 ? channels[Math.max(i - 1, 0)] : c, temb, {
            ...norm,
            outChannels: c,
            seed: seed(),
          }),
      );
      const sampler = i < last ? new Downsample(2, c, true, { seed: seed() }) : null;
      down.push(new SliceLevel(resnets, attention(i, cfg.attentionLevels[i]), sampler));
    });
    this.child("down_blocks", down);
    this.child("middle_block", new SliceMidBlock(channels[last], temb, cfg, seed));
    const up = new ModuleList<SliceLevel>();
    let prev = channels[last];
    for (let i = last; i >= 0; i--) {
      const out = channels[i];
      const blocks = cfg.numResBlocks + 1;
      const resnets = Array.from({ length: blocks }, (_, j) => {
        const skip = j === blocks - 1 ? channels[Math.max(i - 1, 0)] : out;
        const cin = (j === 0 ? prev : out) + skip;
        return new ResnetBlock(2, cin, temb, { ...norm, outChannels: out, seed: seed() });
      });
      const sampler = i > 0 ? new Upsample(2, out, { seed: seed() }) : null;
      up.push(new SliceLevel(resnets, attention(i, cfg.attentionLevels[i]), sampler));
      prev = out;
    }
    this.child("up_blocks", up);
    this.child(
      "out",
      new OutputHead(2, channels[0], cfg.outChannels, cfg.normNumGroups, cfg.normEps, seed()),
    );
  }

  /** Per-slot embeddings [B·T, 4·channels[0]]: the volume's time embedding (plus the slice-index embedding). */
  #embedding(timesteps: number | readonly number[], s: SliceInputs): Tensor {
    const [b, t] = [s.roles.length, s.roles[0].length];
    const ts = typeof timesteps === "number" ? [timesteps] : [...timesteps];
    if (ts.length !== 1 && ts.length !== b) {
      fail(`timesteps must be one number or one per volume (${b}), got ${ts.length}.`);
    }
    const perSlot = Array.from({ length: b * t }, (_, i) => ts.length === 1 ? ts[0] : ts[Math.floor(i / t)]);
    const c0 = this.config.channels[0];
    return scope(() => {
      const emb = liveChild<TimeEmbedMlp>(this, "time_embed").forward(timestepEmbedding(perSlot, c0));
      if (!this.config.absoluteIndexEmbedding) return emb;
      // Positions as fractions of the depth, on the scale of the timesteps (0..1000).
      const positions = s.indices.flat().map((i) => (1000 * i) / s.depth!);
      return add(emb, liveChild<TimeEmbedMlp>(this, "index_embed").forward(timestepEmbedding(positions, c0)));
    });
  }

  /**
   * Predicts the model output (ε, v or x0, as trained) for every slot of x [B, T, C, H, W] at `timesteps`
   * (one per volume, or one for all). Condition slots are read from `slices.clean`, whatever x holds there;
   * only the target slots' outputs are meaningful. Returns [B, T, outChannels, H, W].
   */
  forward(x: Tensor, timesteps: number | readonly number[], opts: SliceForwardOptions = {}): Tensor {
    const cfg = this.config;
    const s = checkSlices(x, cfg, opts.slices);
    const [b, t, c, hh, ww] = x.shape;
    const factor = 2 ** (cfg.channels.length - 1);
    if (hh % factor !== 0 || ww % factor !== 0) {
      fail(
        `the slice size ${hh}×${ww} must be divisible by ${factor} (${
          cfg.channels.length - 1
        } downsamplings).`,
      );
    }
    return scope(() => {
      const obs = tensor(s.roles.flat().map((r) => (r === "condition" ? 1 : 0)), [b, t, 1, 1, 1]);
      const input = s.clean ? where(obs, s.clean, x) : x;
      const indicator = expand(obs, [b, t, 1, hh, ww]);
      const emb = this.#embedding(timesteps, s);
      let h = liveChild<Layer>(this, "conv_in").forward(
        reshape(concat([input, indicator], 2), [b * t, c + 1, hh, ww]),
      );
      const skips: Tensor[] = [h];
      for (const level of liveChild<ModuleList<SliceLevel>>(this, "down_blocks").items) {
        level.resnets.forEach((_, i) => {
          h = level.block(i, h, emb, s);
          skips.push(h);
        });
        const next = level.sample(h);
        if (next !== h) skips.push(next);
        h = next;
      }
      h = liveChild<SliceMidBlock>(this, "middle_block").forward(h, emb, s);
      for (const level of liveChild<ModuleList<SliceLevel>>(this, "up_blocks").items) {
        const used = skips.splice(skips.length - level.resnets.length);
        level.resnets.forEach((_, i) => {
          h = level.block(i, concat([h, used[used.length - 1 - i]], 1), emb, s);
        });
        h = level.sample(h);
      }
      const out = liveChild<OutputHead>(this, "out").forward(h);
      return reshape(out, [b, t, cfg.outChannels, hh, ww]);
    });
  }
}
