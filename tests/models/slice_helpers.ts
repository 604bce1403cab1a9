/**
 * Shared pieces of the slice-model tests: random weights for a module, and float64 references of slice
 * attention written out from its formula (explicit loops, not the einsum specs the engine uses).
 *
 * @module
 */

import * as R from "../../engine/reference/mod.ts";
import type { RefTensor } from "../../engine/reference/mod.ts";
import type { Tensor } from "../../mod.ts";
import type { Module } from "../../nn/module.ts";
import type { SlotLayout } from "../../nn/slice_attention.ts";
import { fromRef } from "../helpers/gpu.ts";

/** Parameters as float64 reference tensors (f32-rounded, as loaded). */
export type Params = Map<string, RefTensor>;

/**
 * Loads random values into every parameter of `m` (norm scales in [0.5, 1.5], the rest in ±`range`), also the
 * ones that start at zero, and returns them.
 */
export function loadRandom(m: Module, seed: number, range = 0.5): Params {
  const params: Params = new Map();
  const state = new Map<string, Tensor>();
  m.namedParameters().forEach(([name, t], i) => {
    const norm = /(^|\.)norm\d?\.weight$/.test(name) || /\.0\.weight$/.test(name) && t.rank === 1;
    const [lo, hi] = norm ? [0.5, 1.5] : [-range, range];
    const r = R.roundToF32(R.randomRef(t.shape as number[], seed * 1000 + i, lo, hi));
    params.set(name, r);
    state.set(name, fromRef(r));
  });
  m.loadStateDict(state);
  for (const t of state.values()) t.dispose();
  return params;
}

/** The parameter `name`, or a thrown error naming it. */
export function param(params: Params, name: string): RefTensor {
  const t = params.get(name);
  if (!t) throw new Error(`test: no parameter ${name}`);
  return t;
}

/** x·Wᵀ + b with the parameters at `prefix`. */
export function refLinear(x: RefTensor, params: Params, prefix: string): RefTensor {
  const y = R.matmul(x, R.transpose(param(params, `${prefix}.weight`)));
  return params.has(`${prefix}.bias`) ? R.add(y, param(params, `${prefix}.bias`)) : y;
}

/** Whether query slot t of volume b may attend to key slot s: both real or both padding. */
export function allowed(layout: SlotLayout, b: number, t: number, s: number): boolean {
  return (layout.roles[b][t] === "padding") === (layout.roles[b][s] === "padding");
}

/**
 * The attention core from its formula: q, k, v [B, P, H, T, d], relative terms [B, T, T, H, d] (null: none);
 * s_ts = scale·(q_t·k_s + q_t·Rk_ts + k_s·Rq_st), forbidden pairs excluded, a = softmax_s,
 * o_t = Σ_s a_ts (v_s + Rv_ts).
 */
export function refSliceAttentionCore(
  q: RefTensor,
  k: RefTensor,
  v: RefTensor,
  rq: RefTensor | null,
  rk: RefTensor | null,
  rv: RefTensor | null,
  layout: SlotLayout,
): RefTensor {
  const [B, P, H, T, d] = q.shape;
  const scale = 1 / Math.sqrt(d);
  const at5 = (x: RefTensor, i: number[]) => R.at(x, i);
  const out = new Float64Array(q.data.length);
  for (let b = 0; b < B; b++) {
    for (let p = 0; p < P; p++) {
      for (let h = 0; h < H; h++) {
        for (let t = 0; t < T; t++) {
          const scores: number[] = [];
          for (let s = 0; s < T; s++) {
            if (!allowed(layout, b, t, s)) {
              scores.push(-Infinity);
              continue;
            }
            let acc = 0;
            for (let c = 0; c < d; c++) {
              const qt = at5(q, [b, p, h, t, c]);
              const ks = at5(k, [b, p, h, s, c]);
              acc += qt * ks;
              if (rk) acc += qt * at5(rk, [b, t, s, h, c]);
              if (rq) acc += ks * at5(rq, [b, s, t, h, c]);
            }
            scores.push(scale * acc);
          }
          const m = Math.max(...scores);
          const e = scores.map((x) => Math.exp(x - m));
          const z = e.reduce((a, x) => a + x, 0);
          for (let c = 0; c < d; c++) {
            let o = 0;
            for (let s = 0; s < T; s++) {
              const a = e[s] / z;
              if (a === 0) continue;
              o += a * (at5(v, [b, p, h, s, c]) + (rv ? at5(rv, [b, t, s, h, c]) : 0));
            }
            out[R.ravelIndex([b, p, h, t, c], q.shape)] = o;
          }
        }
      }
    }
  }
  return { shape: [...q.shape], data: out };
}

/** FDM's RPENet at `prefix` for slot embeddings temb [B, T, E] and slice indices → [B, T, T, H, d]. */
export function refRelativeNet(
  params: Params,
  prefix: string,
  temb: RefTensor,
  indices: ReadonlyArray<readonly number[]>,
  heads: number,
): RefTensor {
  const [B, T] = temb.shape;
  const feats: number[] = [];
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      for (let s = 0; s < T; s++) {
        const delta = indices[b][t] - indices[b][s];
        feats.push(Math.log(1 + Math.max(delta, 0)), Math.log(1 + Math.max(-delta, 0)), delta === 0 ? 1 : 0);
      }
    }
  }
  const dist = refLinear(R.ref(feats, [B, T, T, 3]), params, `${prefix}.embed_distances`);
  const time = refLinear(temb, params, `${prefix}.embed_time`);
  const c = time.shape[2];
  const summed = R.add(dist, R.reshape(time, [B, T, 1, c]));
  const r = refLinear(R.silu(summed), params, `${prefix}.out`);
  return R.reshape(r, [B, T, T, heads, c / heads]);
}

/**
 * The whole SliceAttention block at `prefix`: per-slot GroupNorm, qkv, the three relative nets, the core,
 * proj_out, plus the input. x [B·T, C, H, W], temb [B·T, E].
 */
export function refSliceAttention(
  params: Params,
  prefix: string,
  x: RefTensor,
  temb: RefTensor,
  layout: SlotLayout,
  heads: number,
  groups: number,
  eps: number,
): RefTensor {
  const B = layout.roles.length;
  const T = layout.roles[0].length;
  const [, C, Hh, Ww] = x.shape;
  const P = Hh * Ww;
  const d = C / heads;
  const at = (name: string): string => prefix ? `${prefix}.${name}` : name;
  const n = R.groupNorm(
    x,
    groups,
    param(params, at("norm.weight")),
    param(params, at("norm.bias")),
    eps,
  );
  const tokens = R.permute(R.reshape(n, [B, T, C, P]), [0, 3, 1, 2]); // [B, P, T, C]
  const qkv = refLinear(tokens, params, at("qkv")); // [B, P, T, 3C]
  const part = (i: number) =>
    R.permute(R.reshape(R.slice(qkv, [0, 0, 0, i * C], [B, P, T, (i + 1) * C]), [B, P, T, heads, d]), [
      0,
      1,
      3,
      2,
      4,
    ]);
  const e = R.reshape(temb, [B, T, temb.shape[1]]);
  const rel = (name: string) => refRelativeNet(params, at(name), e, layout.indices, heads);
  const o = refSliceAttentionCore(
    part(0),
    part(1),
    part(2),
    rel("rpe_q"),
    rel("rpe_k"),
    rel("rpe_v"),
    layout,
  );
  const merged = R.reshape(R.permute(o, [0, 1, 3, 2, 4]), [B, P, T, C]);
  const proj = refLinear(merged, params, at("proj_out"));
  return R.add(x, R.reshape(R.permute(proj, [0, 2, 3, 1]), x.shape));
}
