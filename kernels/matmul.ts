/**
 * Batched matrix multiply `out[b] = A[b] · B[b]`, two kernel families:
 *
 * - {@linkcode matmulKernel}: the general tiled kernel. Arbitrary strides for rows and columns of A and B
 *   (transposed operands need no copy), any sizes. Shared-memory tiles of 64×64 outputs per workgroup, 16
 *   k-values per stage; each of the 256 threads accumulates a 4×4 block in registers.
 * - {@linkcode matmulChunkKernel}: the kernel for software adapters (Mesa lavapipe/llvmpipe). One dispatch
 *   computes the contribution of one K-chunk of `depth` k-values and adds it into C, so a product takes
 *   `ceil(K / depth)` dispatches. The kernel body has no loops at all: on llvmpipe a shared-memory load at a
 *   constant address outside any loop or branch compiles to one scalar load broadcast to the 8 SIMD lanes,
 *   while every other load (any load inside a loop, any lane-dependent address) becomes a per-lane loop of
 *   scalar loads with bounds checks, ~100 instructions per 8 lanes. So the A tile is staged in workgroup
 *   memory and read by fully unrolled code at constant addresses (free broadcasts); each thread loads its own
 *   4 columns of B once per chunk (vec4) and reuses them for all `rows` rows of the tile. See
 *   `bench/README.md` for the measurements behind this design.
 *
 * Parameters: {@linkcode MATMUL_UNIFORMS} (tiled kernel) and {@linkcode chunkParams} (chunk kernel).
 *
 * @module
 */

import type { Kernel } from "./types.ts";
import { type UniformLayout, uniforms } from "./uniforms.ts";
import { defineKernel, type KernelSource } from "./program.ts";

const MATMUL_FIELDS = {
  /** Output rows and columns, the contracted extent. */
  M: "u32",
  N: "u32",
  K: "u32",
  /** A: element offset, batch stride (0 to broadcast), row and column strides; then the same for B. */
  aOffset: "u32",
  aBatch: "u32",
  aRow: "u32",
  aCol: "u32",
  bOffset: "u32",
  bBatch: "u32",
  bRow: "u32",
  bCol: "u32",
} as const;

/** Uniform layout of the tiled matmul kernel. */
export const MATMUL_UNIFORMS: UniformLayout<typeof MATMUL_FIELDS> = uniforms("matmul:tiled64", MATMUL_FIELDS);

const U = MATMUL_UNIFORMS;

/** Output tile edge of the tiled matmul kernel (rows and columns per workgroup). */
export const MATMUL_TILE = 64;

/** The batched strided matmul kernel (general path). */
export const matmulKernel: () => Kernel = defineKernel(
  "matmul:tiled64",
  (): KernelSource => {
    const code = /* wgsl */ `
  ${U.wgsl}
  @group(0) @binding(1) var<storage, read> A: array<f32>;
  @group(0) @binding(2) var<storage, read> B: array<f32>;
  @group(0) @binding(3) var<storage, read_write> C: array<f32>;
  const TK: u32 = 16u;
  var<workgroup> As: array<vec4<f32>, 256>; // [k][m/4], 16 × 16 vec4
  var<workgroup> Bs: array<vec4<f32>, 256>; // [k][n/4]
  @compute @workgroup_size(16, 16)
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
          @builtin(local_invocation_index) li: u32) {
    let M = ${U.read("M")}; let N = ${U.read("N")}; let K = ${U.read("K")};
    let a_base = ${U.read("aOffset")} + wid.z * ${U.read("aBatch")}; let a_row = ${U.read("aRow")};
    let a_col = ${U.read("aCol")};
    let b_base = ${U.read("bOffset")} + wid.z * ${U.read("bBatch")}; let b_row = ${U.read("bRow")};
    let b_col = ${U.read("bCol")};
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
    return { code, bindings: ["read", "read", "write"] };
  },
);

// --- Chunk kernel (llvmpipe) -----------------------------------------------------------------------------

/** Geometry of a {@linkcode matmulChunkKernel}. */
export interface ChunkConfig {
  /** Threads per workgroup (a multiple of 8); each thread owns 4 adjacent output columns. */
  readonly threads: number;
  /** Output rows per workgroup (all threads share them). */
  readonly rows: number;
  /** k-values per dispatch (a multiple of 4). */
  readonly depth: number;
  /** Rows accumulated in registers at a time (4 gives 16 vec4 accumulators + 4 B registers). */
  readonly rowBlock: number;
}

/**
 * Large tiles: 64 rows × 1024 columns × 128 k per dispatch (8192 unrolled vec4 FMAs per thread). 30–39% of the
 * FMA peak at 1024³ and 2048³ on lavapipe (see `bench/README.md`); the pipeline takes tens of seconds to compile
 * the first time (Mesa caches it on disk afterwards).
 */
export const MATMUL_CHUNK_LARGE: ChunkConfig = { threads: 256, rows: 64, depth: 128, rowBlock: 4 };

/** Medium tiles: 32 rows × 256 columns × 64 k (2048 vec4 FMAs per thread), ~28%; compiles in a few seconds. */
export const MATMUL_CHUNK_MEDIUM: ChunkConfig = { threads: 64, rows: 32, depth: 64, rowBlock: 4 };

/** Narrow tiles for N < 192: 32 rows × 64 columns × 64 k (wider tiles would mostly compute padding). */
export const MATMUL_CHUNK_NARROW: ChunkConfig = { threads: 16, rows: 32, depth: 64, rowBlock: 4 };

/** Kernel selection knobs, for tests and benchmarks (the engine reads them on every product). */
export const matmulSettings: {
  /**
   * `auto`: on software adapters a chunk kernel for products of at least `minChunkFlops` multiply-adds and 4096
   * outputs (narrow, medium or large tiles by shape), else the tiled kernel. `tiled`: always the tiled kernel. `chunk`: always a chunk
   * kernel, narrow or medium by shape. `chunk-large`: always {@linkcode MATMUL_CHUNK_LARGE}.
   */
  path: "auto" | "tiled" | "chunk" | "chunk-large";
  /** Never pick {@linkcode MATMUL_CHUNK_LARGE} automatically (it takes long to compile the first time). */
  noLarge: boolean;
  /** Smallest M·N·K·batch for which `auto` uses a chunk kernel. */
  minChunkFlops: number;
} = { path: "auto", noLarge: false, minChunkFlops: 2 ** 18 };

/** Output columns per workgroup of a chunk kernel. */
export function chunkColumns(cfg: ChunkConfig): number {
  return cfg.threads * 4;
}

/** Layout of the operands of one chunk dispatch (element units; vec4-aligned as noted). */
export interface ChunkOperands {
  M: number;
  N: number;
  K: number;
  /** Offset of A (multiple of 4), batch stride (multiple of 4, 0 to broadcast), row stride (multiple of 4). */
  aOffset: number;
  aBatch: number;
  aRow: number;
  /** Same for B. */
  bOffset: number;
  bBatch: number;
  bRow: number;
  /** Row stride of C (≥ N, multiple of 4) and batch stride of C (multiple of 4). */
  cRow: number;
  cBatch: number;
}

const CHUNK_FIELDS = {
  /** {@linkcode ChunkOperands}. */
  M: "u32",
  N: "u32",
  K: "u32",
  aOffset: "u32",
  aBatch: "u32",
  aRow: "u32",
  bOffset: "u32",
  bBatch: "u32",
  bRow: "u32",
  cRow: "u32",
  cBatch: "u32",
  /** First k of this chunk; 1 to add into C (every chunk but the first). */
  k0: "u32",
  accumulate: "u32",
  /** A runtime f32 zero and a never-set guard word: values the compiler cannot see through (see the kernel). */
  zero: "f32",
  guard: "u32",
} as const;

/** Uniform layout of the chunk kernel. */
export const CHUNK_UNIFORMS: UniformLayout<typeof CHUNK_FIELDS> = uniforms("matmul:chunk", CHUNK_FIELDS);

/** The parameters of the dispatch for the K-chunk starting at `k0`. */
export function chunkParams(op: ChunkOperands, k0: number): Uint32Array {
  const { M, N, K, aOffset, aBatch, aRow, bOffset, bBatch, bRow, cRow, cBatch } = op;
  return CHUNK_UNIFORMS.pack({
    M,
    N,
    K,
    aOffset,
    aBatch,
    aRow,
    bOffset,
    bBatch,
    bRow,
    cRow,
    cBatch,
    k0,
    accumulate: k0 > 0 ? 1 : 0,
    zero: 0,
    guard: 0,
  });
}

/**
 * The K-chunk kernel for row-major, vec4-aligned operands: A `[batch][M][aRow]`, B `[batch][K][bRow]`, C
 * `[batch][M][cRow]` with every offset and stride a multiple of 4 (the engine copies other layouts first).
 * Any M, N, K: rows past M are never stored, columns past N and k past K read as zero (so C's padding columns
 * up to `cRow` receive zeros). The first chunk stores, later chunks add into C.
 *
 * Grid: `[ceil(N / chunkColumns), ceil(M / rows), batch]`, one dispatch per K-chunk.
 */
export const matmulChunkKernel: (cfg: ChunkConfig) => Kernel = defineKernel(
  "matmul:chunk",
  (cfg: ChunkConfig): KernelSource => {
    const { threads: W, rows: TM, depth: KC, rowBlock: R } = cfg;
    if (W % 8 !== 0 || KC % 4 !== 0 || TM < 1 || R < 1) throw new Error(`matmulChunkKernel: bad config`);
    const q = KC / 4; // vec4s per staged A row
    const staged = TM * q; // vec4s in the A tile
    const L: string[] = [];
    const C = CHUNK_UNIFORMS;
    L.push(`let M = ${C.read("M")}; let N = ${C.read("N")}; let K = ${C.read("K")};`);
    L.push(`let a_base = ${C.read("aOffset")} + wid.z * ${C.read("aBatch")}; let a_row = ${C.read("aRow")};`);
    L.push(`let b_base = ${C.read("bOffset")} + wid.z * ${C.read("bBatch")}; let b_row = ${C.read("bRow")};`);
    L.push(
      `let c_row = ${C.read("cRow")}; let c_base = wid.z * ${C.read("cBatch")}; let k0 = ${C.read("k0")};`,
    );
    L.push(`let accumulate = ${C.read("accumulate")} != 0u;`);
    // A runtime zero: accumulators start from a value with many uses, which keeps LLVM from scalarising the
    // whole FMA chain into the per-lane store loops (InstCombine does that to single-use chains).
    L.push(`let zero = vec4<f32>(${C.read("zero")});`);
    L.push(`let row0 = wid.y * ${TM}u; let col0 = wid.x * ${W * 4}u;`);
    L.push(`let lane4 = vec4<u32>(0u, 1u, 2u, 3u);`);
    // Stage the A tile [TM][KC] as vec4s along k: element e = j·W + li → row e / q, k-quad e % q.
    for (let j = 0; j * W < staged; j++) {
      const e = `${j * W}u + li`;
      const guard = (j + 1) * W > staged ? `if (${e} < ${staged}u) ` : "";
      L.push(
        `${guard}{ let e = ${e}; let r = row0 + e / ${q}u; let k = k0 + (e % ${q}u) * 4u;` +
          ` let ok = (vec4<u32>(k) + lane4 < vec4<u32>(K)) & vec4<bool>(r < M);` +
          ` let v = A4[select(0u, (a_base + r * a_row + k) / 4u, r < M && k < K)];` +
          ` As[e] = select(zero, v, ok); }`,
      );
    }
    L.push(`workgroupBarrier();`);
    // This thread's 4 columns of B for every k of the chunk (vec4 loads, zero past N and K).
    L.push(`let n = col0 + li * 4u; let nmask = vec4<u32>(n) + lane4 < vec4<u32>(N); let nb = b_base + n;`);
    for (let kk = 0; kk < KC; kk++) {
      L.push(
        `let b${kk} = select(zero, B4[select(0u, (nb + (k0 + ${kk}u) * b_row) / 4u, n < N && k0 + ${kk}u < K)],` +
          ` nmask & vec4<bool>(k0 + ${kk}u < K));`,
      );
    }
    L.push(`var guard = zero;`);
    for (let m0 = 0; m0 < TM; m0 += R) {
      const rows = Math.min(R, TM - m0);
      for (let r = 0; r < rows; r++) L.push(`var c${m0 + r} = zero;`);
      for (let kk = 0; kk < KC; kk++) {
        for (let r = 0; r < rows; r++) {
          const m = m0 + r;
          L.push(`c${m} = fma(vec4<f32>(As[${m * q + (kk >> 2)}u][${kk & 3}]), b${kk}, c${m});`);
        }
      }
      for (let r = 0; r < rows; r++) {
        const m = m0 + r;
        L.push(
          `if (row0 + ${m}u < M && n < c_row) { let i = (c_base + (row0 + ${m}u) * c_row + n) / 4u;` +
            ` C4[i] = select(zero, C4[i], accumulate) + c${m}; }`,
          `guard = guard + c${m};`,
        );
      }
    }
    // Never true (the engine passes 0); gives every accumulator a second use, see `zero` above.
    L.push(`if (${C.read("guard")} == 1u) { C4[li] = guard; }`);
    const code = /* wgsl */ `
  ${C.wgsl}
  @group(0) @binding(1) var<storage, read> A4: array<vec4<f32>>;
  @group(0) @binding(2) var<storage, read> B4: array<vec4<f32>>;
  @group(0) @binding(3) var<storage, read_write> C4: array<vec4<f32>>;
  var<workgroup> As: array<vec4<f32>, ${staged}>;
  @compute @workgroup_size(${W})
  fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    ${L.join("\n  ")}
  }
  `;
    return { code, bindings: ["read", "read", "write"] };
  },
);
