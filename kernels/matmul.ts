/**
 * Batched matrix multiply `out[b] = A[b] · B[b]` with arbitrary strides for rows and columns of A and B
 * (so transposed operands need no copy). Output is contiguous `[batch, M, N]`.
 *
 * Shared-memory tiles of 64×64 outputs per workgroup, 16 k-values per stage; each of the 256 threads
 * accumulates a 4×4 block in registers.
 *
 * Parameter block: `[M, N, K, aOff, aBatch, aRow, aCol, bOff, bBatch, bRow, bCol]`.
 *
 * @module
 */

import { type Kernel, paramsBlock } from "./types.ts";

/** Output tile edge of the matmul kernel (rows and columns per workgroup). */
export const MATMUL_TILE = 64;

/** The batched strided matmul kernel. */
export function matmulKernel(): Kernel {
  const code = /* wgsl */ `
${paramsBlock(11)}
@group(0) @binding(1) var<storage, read> A: array<f32>;
@group(0) @binding(2) var<storage, read> B: array<f32>;
@group(0) @binding(3) var<storage, read_write> C: array<f32>;
const TK: u32 = 16u;
var<workgroup> As: array<vec4<f32>, 256>; // [k][m/4], 16 × 16 vec4
var<workgroup> Bs: array<vec4<f32>, 256>; // [k][n/4]
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
  let M = pu(0u); let N = pu(1u); let K = pu(2u);
  let a_base = pu(3u) + wid.z * pu(4u); let a_row = pu(5u); let a_col = pu(6u);
  let b_base = pu(7u) + wid.z * pu(8u); let b_row = pu(9u); let b_col = pu(10u);
  let row0 = wid.y * 64u;
  let col0 = wid.x * 64u;
  var acc0 = vec4<f32>(0.0); var acc1 = vec4<f32>(0.0); var acc2 = vec4<f32>(0.0); var acc3 = vec4<f32>(0.0);
  // Loader mapping: thread li loads one vec4 of A (4 rows at one k) and one of B (4 cols at one k).
  let lk = li / 16u;
  let lq = li % 16u;
  for (var k0 = 0u; k0 < K; k0 = k0 + TK) {
    let k = k0 + lk;
    var av = vec4<f32>(0.0);
    var bv = vec4<f32>(0.0);
    if (k < K) {
      for (var j = 0u; j < 4u; j = j + 1u) {
        let m = row0 + lq * 4u + j;
        if (m < M) { av[j] = A[a_base + m * a_row + k * a_col]; }
        let n = col0 + lq * 4u + j;
        if (n < N) { bv[j] = B[b_base + k * b_row + n * b_col]; }
      }
    }
    As[lk * 16u + lq] = av;
    Bs[lk * 16u + lq] = bv;
    workgroupBarrier();
    for (var kk = 0u; kk < TK; kk = kk + 1u) {
      let a = As[kk * 16u + lid.y];
      let b = Bs[kk * 16u + lid.x];
      acc0 = fma(vec4<f32>(a.x), b, acc0);
      acc1 = fma(vec4<f32>(a.y), b, acc1);
      acc2 = fma(vec4<f32>(a.z), b, acc2);
      acc3 = fma(vec4<f32>(a.w), b, acc3);
    }
    workgroupBarrier();
  }
  let c_base = wid.z * M * N;
  let r = row0 + lid.y * 4u;
  let c = col0 + lid.x * 4u;
  var rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
  for (var i = 0u; i < 4u; i = i + 1u) {
    if (r + i < M) {
      for (var j = 0u; j < 4u; j = j + 1u) {
        if (c + j < N) { C[c_base + (r + i) * N + c + j] = rows[i][j]; }
      }
    }
  }
}
`;
  return { key: "matmul:tiled64", code, bindings: ["read", "read", "write"] };
}
