/**
 * Row reductions: `out[v] = scale · reduce(in[row, start..end])` over a contiguous `[rows, n]` input.
 * Long rows are split into chunks (virtual rows `v = row · chunks + chunk`) so that a reduction of a few
 * long rows still fills the GPU; the engine then reduces the partial results in a second pass.
 * `tpr` threads cooperate on a row and combine through workgroup memory.
 *
 * Parameters: {@linkcode REDUCE_UNIFORMS}.
 *
 * @module
 */

import { INF, type Kernel, LINEAR_INDEX, WG } from "./types.ts";
import { type UniformLayout, uniforms } from "./uniforms.ts";
import { defineKernel, type KernelSource } from "./program.ts";

/** Reduction operators. */
export type ReduceOp = "sum" | "max" | "min";

const IDENTITY: Record<ReduceOp, string> = { sum: "0.0", max: "f32_neg_inf()", min: "f32_inf()" };
const COMBINE: Record<ReduceOp, (a: string, b: string) => string> = {
  sum: (a, b) => `${a} + ${b}`,
  max: (a, b) => `max(${a}, ${b})`,
  min: (a, b) => `min(${a}, ${b})`,
};

const REDUCE_FIELDS = {
  /** Virtual rows (rows × chunks), row length, chunks per row and elements per chunk. */
  rows: "u32",
  n: "u32",
  chunks: "u32",
  chunkLen: "u32",
  /** Element offset of the source, the factor of a sum (1/n for a mean), the element offset of the output. */
  srcOffset: "u32",
  scale: "f32",
  dstOffset: "u32",
} as const;

/** Uniform layout of the row-reduction kernel. */
export const REDUCE_UNIFORMS: UniformLayout<typeof REDUCE_FIELDS> = uniforms("reduce", REDUCE_FIELDS);

const U = REDUCE_UNIFORMS;

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
  ${U.wgsl}
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
    let rows = ${U.read("rows")};
    let n = ${U.read("n")};
    let chunks = ${U.read("chunks")};
    let chunk_len = ${U.read("chunkLen")};
    var acc: f32 = ${IDENTITY[op]};
    if (v < rows) {
      let row = v / chunks;
      let start = (v % chunks) * chunk_len;
      let end = min(n, start + chunk_len);
      let base = ${U.read("srcOffset")} + row * n;
      for (var j = start + lane; j < end; j = j + ${tpr}u) {
        acc = ${combine("acc", "src[base + j]")};
      }
    }${tree}
    if (lane == 0u && v < rows) {
      dst[${U.read("dstOffset")} + v] = ${op === "sum" ? `acc * ${U.read("scale")}` : "acc"};
    }
  }
  `;
    return { code, bindings: ["read", "write"] };
  },
);
