/**
 * Row reductions: `out[v] = scale · reduce(in[row, start..end])` over a contiguous `[rows, n]` input.
 * Long rows are split into chunks (virtual rows `v = row · chunks + chunk`) so that a reduction of a few
 * long rows still fills the GPU; the engine then reduces the partial results in a second pass.
 * `tpr` threads cooperate on a row and combine through workgroup memory.
 *
 * Parameter block: `[virtualRows, n, chunks, chunkLen, inOffset, scale (f32 bits), outOffset]`.
 *
 * @module
 */

import { INF, type Kernel, LINEAR_INDEX, paramsBlock, WG } from "./types.ts";
import { defineKernel, type KernelSource } from "./program.ts";

/** Reduction operators. */
export type ReduceOp = "sum" | "max" | "min";

const IDENTITY: Record<ReduceOp, string> = { sum: "0.0", max: "f32_neg_inf()", min: "f32_inf()" };
const COMBINE: Record<ReduceOp, (a: string, b: string) => string> = {
  sum: (a, b) => `${a} + ${b}`,
  max: (a, b) => `max(${a}, ${b})`,
  min: (a, b) => `min(${a}, ${b})`,
};

/** Threads per row for rows of `len` elements: enough to give each thread a few elements. */
export function threadsPerRow(len: number): number {
  let tpr = 1;
  while (tpr < WG && tpr * 4 < len) tpr *= 2;
  return tpr;
}

/** The row-reduction kernel for `op` with `tpr` threads per row (a power of two up to 256). */
export const reduceKernel: (op: ReduceOp, tpr: number) => Kernel = defineKernel(
  (op) => `reduce:${op}`,
  (op: ReduceOp, tpr: number): KernelSource => {
    const rowsPerWg = WG / tpr;
    const combine = COMBINE[op];
    const tree = tpr > 1
      ? /* wgsl */ `
    sh[li] = acc;
    workgroupBarrier();
    for (var s = ${tpr / 2}u; s > 0u; s = s >> 1u) {
      if (lane < s) { sh[li] = ${combine("sh[li]", "sh[li + s]")}; }
      workgroupBarrier();
    }
    acc = sh[li];`
      : "";
    const code = /* wgsl */ `
  ${paramsBlock(7)}
  ${LINEAR_INDEX}
  ${INF}
  @group(0) @binding(1) var<storage, read> src: array<f32>;
  @group(0) @binding(2) var<storage, read_write> dst: array<f32>;
  var<workgroup> sh: array<f32, ${WG}>;
  @compute @workgroup_size(${WG})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let lane = li % ${tpr}u;
    let v = linear_workgroup(wid, nwg) * ${rowsPerWg}u + li / ${tpr}u;
    let rows = pu(0u);
    let n = pu(1u);
    let chunks = pu(2u);
    let chunk_len = pu(3u);
    var acc: f32 = ${IDENTITY[op]};
    if (v < rows) {
      let row = v / chunks;
      let start = (v % chunks) * chunk_len;
      let end = min(n, start + chunk_len);
      let base = pu(4u) + row * n;
      for (var j = start + lane; j < end; j = j + ${tpr}u) {
        acc = ${combine("acc", "src[base + j]")};
      }
    }${tree}
    if (lane == 0u && v < rows) {
      dst[pu(6u) + v] = ${op === "sum" ? "acc * pf(5u)" : "acc"};
    }
  }
  `;
    return { code, bindings: ["read", "write"] };
  },
);
