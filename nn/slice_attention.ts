/**
 * Attention across the slices of a volume (cDPM, Peng et al.; after FDM's `RPEAttention`, Harvey et al.):
 * every pixel position attends over the slots (slices) of its volume, with relative-position terms computed
 * from the slices' indices by small zero-initialised networks, and a mask that keeps real slots (condition
 * and target) apart from padding slots.
 *
 * Slots are few (≤ ~20), so the T×T scores are formed explicitly with `einsum` and a masked `softmax`; every
 * step is an existing differentiable op, so no kernel of its own is needed.
 *
 * - {@linkcode relativeSliceAttention}: the attention itself on q, k, v and the relative terms;
 * - {@linkcode RelativePositionNet}: FDM's `RPENet` (parameters `embed_distances`, `embed_time`, `out`);
 * - {@linkcode SliceAttention}: GroupNorm, `qkv`, three relative-position nets, attention, `proj_out`, plus
 *   the input.
 *
 * @module
 */

import { einsum } from "../engine/ops/einsum.ts";
import { add, mul, silu } from "../engine/ops/elementwise.ts";
import { tensor } from "../engine/ops/create.ts";
import { copyInto } from "../engine/ops/map.ts";
import { softmax } from "../engine/ops/softmax.ts";
import { permute, reshape, slice } from "../engine/ops/view.ts";
import { noGrad } from "../engine/autograd.ts";
import { scope } from "../engine/memory.ts";
import { formatShape } from "../engine/shape.ts";
import type { Tensor } from "../engine/tensor.ts";
import { liveChild, seedStream } from "./conv.ts";
import { Linear } from "./linear.ts";
import { Module } from "./module.ts";
import { GroupNorm } from "./norm.ts";

/** What each slot of a slice batch holds. */
export type SlotRole = "condition" | "target" | "padding";

/**
 * The slots of a batch of B volumes: per volume and slot its role and the index of the slice it holds
 * (padding slots hold slices of another volume; their index is that slice's).
 */
export interface SlotLayout {
  /** Role per volume and slot, [B][T]. */
  roles: ReadonlyArray<readonly SlotRole[]>;
  /** Slice index per volume and slot, [B][T]. */
  indices: ReadonlyArray<readonly number[]>;
}

/** Score added where attention is forbidden: exp underflows to exactly 0 after the row maximum is taken. */
const FORBIDDEN = -1e9;

/** Throws unless `layout` has B rows of T consistent entries; returns [B, T]. */
export function checkLayout(where: string, layout: SlotLayout): [number, number] {
  const b = layout.roles.length;
  const t = layout.roles[0]?.length ?? 0;
  if (b === 0 || t === 0) throw new Error(`${where}: the slot layout is empty (roles must be [B][T]).`);
  if (layout.indices.length !== b) {
    throw new Error(`${where}: indices has ${layout.indices.length} rows, roles ${b}; both must be [B][T].`);
  }
  for (let i = 0; i < b; i++) {
    if (layout.roles[i].length !== t || layout.indices[i].length !== t) {
      throw new Error(`${where}: volume ${i} does not have ${t} roles and ${t} indices.`);
    }
    for (const r of layout.roles[i]) {
      if (r !== "condition" && r !== "target" && r !== "padding") {
        throw new Error(`${where}: slot role "${r}" is not one of condition, target, padding.`);
      }
    }
    if (layout.indices[i].some((v) => !Number.isInteger(v))) {
      throw new Error(`${where}: slice indices must be integers, got ${JSON.stringify(layout.indices[i])}.`);
    }
  }
  return [b, t];
}

/**
 * The additive attention mask [B, 1, 1, T, T]: 0 where query slot t may attend to key slot s (both real —
 * condition or target — or both padding), −1e9 elsewhere. Every slot may attend to itself, so no row is
 * empty.
 */
export function slotMask(layout: SlotLayout): Tensor {
  const [b, t] = checkLayout("slotMask", layout);
  const data = new Float32Array(b * t * t);
  for (let i = 0; i < b; i++) {
    const real = layout.roles[i].map((r) => r !== "padding");
    for (let q = 0; q < t; q++) {
      for (let k = 0; k < t; k++) data[(i * t + q) * t + k] = real[q] === real[k] ? 0 : FORBIDDEN;
    }
  }
  return tensor(data, [b, 1, 1, t, t]);
}

/**
 * FDM's distance features [B, T, T, 3] of Δ = index_t − index_s: log(1 + max(Δ, 0)), log(1 + max(−Δ, 0)),
 * and 1 where Δ = 0.
 */
export function distanceFeatures(indices: ReadonlyArray<readonly number[]>): Tensor {
  const b = indices.length;
  const t = indices[0].length;
  const data = new Float32Array(b * t * t * 3);
  for (let i = 0; i < b; i++) {
    for (let q = 0; q < t; q++) {
      for (let k = 0; k < t; k++) {
        const d = indices[i][q] - indices[i][k];
        const o = ((i * t + q) * t + k) * 3;
        data[o] = Math.log1p(Math.max(d, 0));
        data[o + 1] = Math.log1p(Math.max(-d, 0));
        data[o + 2] = d === 0 ? 1 : 0;
      }
    }
  }
  return tensor(data, [b, t, t, 3]);
}

/** Relative-position terms of {@linkcode relativeSliceAttention}, each [B, T, T, heads, d]. */
export interface RelativeTerms {
  /** R^q_ts (on the queries: enters the scores as k_s · R^q_st). */
  q?: Tensor;
  /** R^k_ts (on the keys: enters as q_t · R^k_ts). */
  k?: Tensor;
  /** R^v_ts (on the values: o_t gains Σ_s a_ts R^v_ts). */
  v?: Tensor;
}

/**
 * Attention over slots with relative-position terms (Shaw et al.; FDM's `RPEAttention` core). q, k, v are
 * [B, P, heads, T, d] (P positions per slot that attend independently); the relative terms are
 * [B, T, T, heads, d], shared by all positions; `mask` [B, 1, 1, T, T] is added to the scores. With
 * `scale` = 1/√d:
 *
 *   s_ts = scale · (q_t·k_s + q_t·R^k_ts + k_s·R^q_st) + mask_ts,  a = softmax_s(s),
 *   o_t = Σ_s a_ts (v_s + R^v_ts).
 *
 * Returns [B, P, heads, T, d]. Differentiable with respect to every input but the mask.
 */
export function relativeSliceAttention(
  q: Tensor,
  k: Tensor,
  v: Tensor,
  rel: RelativeTerms = {},
  mask?: Tensor,
  scale = q.shape[4] ** -0.5,
): Tensor {
  if (q.rank !== 5 || k.shape.join() !== q.shape.join() || v.shape.join() !== q.shape.join()) {
    throw new Error(
      `relativeSliceAttention: q, k, v must be [B, P, heads, T, d] of one shape, got ${
        formatShape(q.shape)
      }, ` +
        `${formatShape(k.shape)}, ${formatShape(v.shape)}.`,
    );
  }
  const [b, , h, t, d] = q.shape;
  for (const [name, r] of Object.entries(rel)) {
    if (r && r.shape.join() !== [b, t, t, h, d].join()) {
      throw new Error(
        `relativeSliceAttention: rel.${name} ${formatShape(r.shape)} must be ${
          formatShape([b, t, t, h, d])
        }.`,
      );
    }
  }
  if (mask && mask.shape.join() !== [b, 1, 1, t, t].join()) {
    throw new Error(
      `relativeSliceAttention: mask ${formatShape(mask.shape)} must be ${formatShape([b, 1, 1, t, t])}.`,
    );
  }
  return scope(() => {
    let scores = einsum("bphtd,bphsd->bphts", q, k);
    if (rel.k) scores = add(scores, einsum("bphtd,btshd->bphts", q, rel.k));
    if (rel.q) scores = add(scores, einsum("bphsd,bsthd->bphts", k, rel.q));
    scores = mul(scores, scale);
    if (mask) scores = add(scores, mask);
    const weights = softmax(scores, -1);
    let out = einsum("bphts,bphsd->bphtd", weights, v);
    if (rel.v) out = add(out, einsum("bphts,btshd->bphtd", weights, rel.v));
    return out;
  });
}

/** Sets a layer's weight and bias to zero (layers whose output must start at zero). */
export function zeroLinear(layer: Linear): Linear {
  noGrad(() => {
    for (const p of [layer.weight, layer.bias]) {
      if (!p) continue;
      const z = tensor(new Float32Array(p.size), p.shape);
      copyInto(p, z);
      z.dispose();
    }
  });
  return layer;
}

/**
 * FDM's `RPENet`: R_ts = out(SiLU(embed_distances(features(index_t − index_s)) + embed_time(temb_t))),
 * viewed as [heads, channels/heads]; `out` starts at zero, so the relative terms start at zero.
 */
export class RelativePositionNet extends Module {
  /** A net producing `channels` = heads · d values per slot pair, conditioned on a `tembChannels` embedding. */
  constructor(readonly channels: number, readonly numHeads: number, tembChannels: number, seed = 0) {
    super();
    const seeds = seedStream(seed);
    this.child("embed_distances", new Linear(3, channels, { seed: seeds() }));
    this.child("embed_time", new Linear(tembChannels, channels, { seed: seeds() }));
    this.child("out", zeroLinear(new Linear(channels, channels, { seed: seeds() })));
  }

  /** temb [B, T, tembChannels] (per slot), features [B, T, T, 3] → R [B, T, T, heads, channels/heads]. */
  forward(temb: Tensor, features: Tensor): Tensor {
    return scope(() => {
      const [b, t] = temb.shape;
      const time = reshape(liveChild(this, "embed_time").forward(temb), [b, t, 1, this.channels]);
      const dist = liveChild(this, "embed_distances").forward(features);
      const r = liveChild(this, "out").forward(silu(add(dist, time)));
      return reshape(r, [b, t, t, this.numHeads, this.channels / this.numHeads]);
    });
  }
}

/** Options of {@linkcode SliceAttention}. */
export interface SliceAttentionOptions {
  /** Channels per head (default: one head over all channels). */
  numHeadChannels?: number;
  /** GroupNorm groups (default 32). */
  normNumGroups?: number;
  /** GroupNorm epsilon (default 1e-6). */
  normEps?: number;
  /** Seed of the initial weights (default 0). */
  seed?: number;
}

/**
 * Slice attention of a feature map [B·T, C, H, W] whose batch holds B volumes of T slots each:
 * x + proj_out(relativeSliceAttention(qkv(GroupNorm(x)))), tokens = slots, one attention per pixel.
 *
 * Differences from FDM's `RPEAttention`, both deliberate: the GroupNorm normalises each slot over its
 * channels and pixels (FDM's normalises each pixel over channels and slots, which lets padding slots shift
 * the statistics of real ones), and the residual adds the block's input (FDM adds the normalised input).
 * `proj_out` and the relative-position nets' last layers start at zero, so the block starts as the
 * identity.
 */
export class SliceAttention extends Module {
  /** Number of heads. */
  readonly numHeads: number;

  /** Slice attention over `channels`-channel feature maps, with `tembChannels`-wide slot embeddings. */
  constructor(readonly channels: number, readonly tembChannels: number, opts: SliceAttentionOptions = {}) {
    super();
    const headChannels = opts.numHeadChannels ?? channels;
    if (!Number.isInteger(headChannels) || headChannels < 1 || channels % headChannels !== 0) {
      throw new Error(
        `SliceAttention: channels ${channels} must be divisible by numHeadChannels ${headChannels}.`,
      );
    }
    this.numHeads = channels / headChannels;
    const seed = seedStream(opts.seed ?? 0);
    this.child("norm", new GroupNorm(opts.normNumGroups ?? 32, channels, { eps: opts.normEps ?? 1e-6 }));
    this.child("qkv", new Linear(channels, 3 * channels, { seed: seed() }));
    for (const name of ["rpe_q", "rpe_k", "rpe_v"]) {
      this.child(name, new RelativePositionNet(channels, this.numHeads, tembChannels, seed()));
    }
    this.child("proj_out", zeroLinear(new Linear(channels, channels, { seed: seed() })));
  }

  /**
   * x [B·T, C, H, W] (volume-major: the T slots of volume 0 first), temb [B·T, tembChannels] (per slot),
   * `layout` the B×T roles and slice indices → [B·T, C, H, W].
   */
  forward(x: Tensor, temb: Tensor, layout: SlotLayout): Tensor {
    const [b, t] = checkLayout("SliceAttention", layout);
    if (x.rank !== 4 || x.shape[0] !== b * t || x.shape[1] !== this.channels) {
      throw new Error(
        `SliceAttention: input ${formatShape(x.shape)} must be [${b}·${t}, ${this.channels}, H, W] ` +
          `(${b} volumes of ${t} slots).`,
      );
    }
    if (temb.rank !== 2 || temb.shape[0] !== b * t || temb.shape[1] !== this.tembChannels) {
      throw new Error(
        `SliceAttention: temb ${formatShape(temb.shape)} must be [${b * t}, ${this.tembChannels}].`,
      );
    }
    return scope(() => {
      const c = this.channels;
      const heads = this.numHeads;
      const d = c / heads;
      const [, , hh, ww] = x.shape;
      const p = hh * ww;
      const h = liveChild<GroupNorm>(this, "norm").forward(x);
      // [B·T, C, H, W] → tokens [B, P, T, C]
      const tokens = permute(reshape(h, [b, t, c, p]), [0, 3, 1, 2]);
      const qkv = liveChild(this, "qkv").forward(tokens); // [B, P, T, 3C]
      const parts = permute(reshape(qkv, [b, p, t, 3, heads, d]), [3, 0, 1, 4, 2, 5]); // [3, B, P, h, T, d]
      const [q, k, v] = [0, 1, 2].map((i) => reshape(slice(parts, [i], [i + 1]), [b, p, heads, t, d]));
      const slotEmb = reshape(temb, [b, t, this.tembChannels]);
      const features = distanceFeatures(layout.indices);
      const rel = (name: string) => liveChild<RelativePositionNet>(this, name).forward(slotEmb, features);
      const out = relativeSliceAttention(
        q,
        k,
        v,
        { q: rel("rpe_q"), k: rel("rpe_k"), v: rel("rpe_v") },
        slotMask(layout),
      );
      const merged = reshape(permute(out, [0, 1, 3, 2, 4]), [b, p, t, c]); // [B, P, T, C]
      const projected = liveChild(this, "proj_out").forward(merged);
      const back = reshape(permute(projected, [0, 2, 3, 1]), x.shape); // [B, T, C, P] → [B·T, C, H, W]
      return add(x, back);
    });
  }
}
