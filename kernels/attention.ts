/**
 * Fused ("flash") attention: softmax(q·kᵀ·scale)·v without ever storing the Nq×Nk score matrix.
 *
 * Layout: q `[BH, Nq, d]`, k `[BH, Nk, d]`, v `[BH, Nk, dv]`, contiguous f32 (BH = batch · heads).
 * Each invocation owns `rows` rows (query rows, or key rows in the dK/dV kernel) and keeps them and their
 * accumulators in registers, as vec4s over the head dimension. The workgroup streams blocks of `block`
 * rows of the other operand through workgroup memory; every staged vec4 is read at a constant address and
 * feeds 4 · `rows` FMAs in every invocation.
 *
 * - Forward: online softmax per query row (running max m and sum l; the accumulator is rescaled once per
 *   key block); writes O and the row log-sum-exp L = m + log l, which is all backward needs.
 * - Backward (FlashAttention-2): D = rowsum(dO ⊙ O) ({@linkcode attentionRowDotKernel}); dQ per query
 *   row iterating over key blocks, and dK, dV per key row iterating over query blocks, both recomputing
 *   P = exp(S − L). Two kernels, no atomics.
 *
 * Head dims and tiling are baked into the code (everything unrolls over them); B·H, Nq, Nk live in the
 * uniforms ({@linkcode ATTENTION_UNIFORMS}: element offsets of q, k, v and dO; gOffset is unused by the
 * forward kernel). Matrices whose width is a multiple of 4
 * are bound as `array<vec4<f32>>`, so their offsets must be multiples of 4.
 *
 * Why so many rows per invocation: on lavapipe, a load from workgroup or storage memory inside a loop is
 * emulated lane by lane and costs ~40–70 ns per 8-lane vector, against ~0.3 ns for an 8-lane FMA. The only
 * lever is reuse: each loaded vec4 must feed as many register-resident rows as possible. The limit is
 * compile time, which grows steeply with the live registers of the unrolled code.
 *
 * @module
 */

import { INF, type Kernel, LINEAR_INDEX } from "./types.ts";
import { type UniformLayout, uniforms } from "./uniforms.ts";
import { defineKernel, type KernelSource } from "./program.ts";

const ATTENTION_FIELDS = {
  /** Query and key rows per head, the score multiplier, workgroups per head. */
  Nq: "u32",
  Nk: "u32",
  scale: "f32",
  blocks: "u32",
  /** Element offsets of q, k, v and of the output gradient (0 in the forward). */
  qOffset: "u32",
  kOffset: "u32",
  vOffset: "u32",
  gOffset: "u32",
} as const;

/** Uniform layout of the three main attention kernels. */
export const ATTENTION_UNIFORMS: UniformLayout<typeof ATTENTION_FIELDS> = uniforms(
  "attention",
  ATTENTION_FIELDS,
);

const U = ATTENTION_UNIFORMS;

const ROW_DOT_FIELDS = {
  /** Rows, element offsets of the output gradient and of the output. */
  rows: "u32",
  gOffset: "u32",
  oOffset: "u32",
} as const;

/** Uniform layout of {@linkcode attentionRowDotKernel}. */
export const ROW_DOT_UNIFORMS: UniformLayout<typeof ROW_DOT_FIELDS> = uniforms(
  "attention:rowdot",
  ROW_DOT_FIELDS,
);

/** Largest head dimension the kernels are generated for. */
export const MAX_HEAD_DIM = 256;

/** Head dimensions baked into an attention kernel. */
export interface AttentionDims {
  /** Query/key head dimension. */
  d: number;
  /** Value head dimension. */
  dv: number;
}

/** How an attention kernel splits its work. */
export interface AttentionTiling {
  /** Invocations per workgroup. */
  threads: number;
  /** Rows each invocation owns (a workgroup owns threads · rows rows). */
  rows: number;
  /** Rows of the streamed operand staged in workgroup memory per step. */
  block: number;
}

/** The three main attention kernels: they keep different amounts of state per owned row. */
export type AttentionPass = "forward" | "dq" | "dkv";

const range = (n: number): number[] => [...Array(n).keys()];
const vecs = (n: number): number => Math.ceil(n / 4);

/** f32 values kept in registers per owned row. */
function liveFloats(pass: AttentionPass, { d, dv }: AttentionDims): number {
  if (pass === "forward") return d + dv; // q, o
  if (pass === "dq") return 2 * d + dv; // q, dO, dq
  return 2 * d + 2 * dv; // k, v, dk, dv
}

/** Workgroup memory a tiling may use: WebGPU's guaranteed minimum of maxComputeWorkgroupStorageSize. */
const WORKGROUP_BYTES = 16384;

/** Bytes of the staged tiles (two vec4 tiles, plus L and D in the dK/dV kernel). */
function tileBytes({ d, dv }: AttentionDims, block: number): number {
  return block * ((vecs(d) + vecs(dv)) * 16 + 8);
}

/**
 * The tiling of one pass over `ownedRows` rows per head (Nq, or Nk for "dkv") streaming `streamedRows`
 * rows of the other operand, for `heads` = B·H heads.
 *
 * CPU adapters (lavapipe, SwiftShader) get a workgroup of one SIMD vector (8 lanes, so barriers cost
 * nothing) owning as many rows per lane as a register budget allows. More rows run faster (rows 8 → 16 →
 * 24 for d = 32: each step ~1.3–1.5×) but compile much longer (~4 s → ~12 s → ~40 s cold on a busy
 * 2-core machine; Mesa then caches the shader on disk), so the budget grows with the work to amortise:
 * 512 live floats below 2³¹ multiply-adds, 1024 below 2³⁶, 1536 above. Rows are then lowered until the
 * dispatch has enough workgroups to keep every core busy. GPUs get a conventional 64-invocation workgroup
 * (not tuned: no GPU was available).
 */
export function attentionTiling(
  pass: AttentionPass,
  dims: AttentionDims,
  ownedRows: number,
  streamedRows: number,
  heads: number,
  cpu: boolean,
): AttentionTiling {
  if (!cpu) {
    const block = Math.min(16, Math.floor(WORKGROUP_BYTES / tileBytes(dims, 1)));
    return { threads: 64, rows: 1, block };
  }
  const threads = 8;
  const work = heads * ownedRows * streamedRows * (dims.d + dims.dv);
  const budget = work < 2 ** 31 ? 512 : work < 2 ** 36 ? 1024 : 1536;
  let rows = Math.max(1, Math.min(24, Math.floor(budget / liveFloats(pass, dims))));
  while (rows > 1 && heads * Math.ceil(ownedRows / (threads * rows)) < 16) rows = Math.floor(rows / 2);
  return { threads, rows, block: 4 };
}

function checkConfig(name: string, dims: AttentionDims, tiling: AttentionTiling): void {
  const limits: Array<[string, number, number]> = [
    ["d", dims.d, MAX_HEAD_DIM],
    ["dv", dims.dv, MAX_HEAD_DIM],
    ["threads", tiling.threads, 1024],
    ["rows", tiling.rows, 64],
    ["block", tiling.block, 64],
  ];
  for (const [what, n, max] of limits) {
    if (!Number.isInteger(n) || n < 1 || n > max) {
      throw new Error(`${name}: ${what} = ${n} must be an integer in [1, ${max}].`);
    }
  }
  if (tileBytes(dims, tiling.block) > WORKGROUP_BYTES) {
    throw new Error(
      `${name}: block = ${tiling.block} with d = ${dims.d}, dv = ${dims.dv} needs ` +
        `${
          tileBytes(dims, tiling.block)
        } bytes of workgroup memory; at most ${WORKGROUP_BYTES} are portable.`,
    );
  }
}

// --- WGSL building blocks --------------------------------------------------------------------------------

/**
 * A `[rows, width]` f32 matrix in a storage buffer: bound as vec4s when the width is a multiple of 4 (then
 * every row starts on a vec4), element by element otherwise. `at` arguments are element offsets of a row
 * start; vec4 number k of a row covers elements 4k..4k+3, zero past the row end.
 */
class Matrix {
  readonly packed: boolean;
  constructor(readonly name: string, readonly width: number) {
    this.packed = width % 4 === 0;
  }

  decl(binding: number, access: "read" | "read_write"): string {
    const type = this.packed ? "vec4<f32>" : "f32";
    return `@group(0) @binding(${binding}) var<storage, ${access}> ${this.name}: array<${type}>;`;
  }

  /** vec4 number `k` (a constant) of the row at `at`. */
  vec(at: string, k: number): string {
    if (this.packed) return `${this.name}[${at} / 4u + ${k}u]`;
    const element = (c: number) => (c < this.width ? `${this.name}[${at} + ${c}u]` : "0.0");
    return `vec4<f32>(${range(4).map((e) => element(4 * k + e)).join(", ")})`;
  }

  /** vec4 at column `col` (a multiple of 4, any expression) of the row at `at`. */
  vecAt(at: string, col: string): string {
    if (this.packed) return `${this.name}[(${at} + ${col}) / 4u]`;
    // Padding lanes of a partial vec4 read an element inside the row and are then zeroed.
    const parts = range(4).map((e) => {
      if (e === 0) return `${this.name}[${at} + ${col}]`;
      const index = `${at} + ${col} + min(${e}u, ${this.width - 1}u - ${col})`;
      return `select(0.0, ${this.name}[${index}], ${col} + ${e}u < ${this.width}u)`;
    });
    return `vec4<f32>(${parts.join(", ")})`;
  }

  /** Statements storing the vec4s `value(k)` as the row at `at`. */
  store(at: string, value: (k: number) => string): string[] {
    if (this.packed) {
      return range(this.width / 4).map((k) => `${this.name}[${at} / 4u + ${k}u] = ${value(k)};`);
    }
    return range(this.width).map((c) => `${this.name}[${at} + ${c}u] = (${value(c >> 2)})[${c & 3}];`);
  }
}

const HEADER = /* wgsl */ `
${U.wgsl}
${LINEAR_INDEX}
${INF}`;

const ENTRY =
  /* wgsl */ `fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) li: u32)`;

/** Parameters, this workgroup's head `bh`, and this invocation's first owned row. */
function prologue(threads: number, rows: number): string {
  return /* wgsl */ `
  let Nq = ${U.read("Nq")}; let Nk = ${U.read("Nk")}; let scale = ${U.read("scale")};
  let blocks = ${U.read("blocks")};
  let w = linear_workgroup(wid, nwg);
  let bh = w / blocks;
  let first_row = (w % blocks) * ${threads * rows}u + li;`;
}

/** Owned row r of this invocation is `first_row + r · threads`. */
function ownedRow(r: number, threads: number): string {
  return `first_row + ${r * threads}u`;
}

/**
 * A loop in which the workgroup copies rows [start, start + count) of the matrix `m` (rows from element
 * `base`; rows ≥ `limit` repeat the last row: finite values the caller masks out) into the vec4 tile
 * `tile[count · ⌈width/4⌉]`, each vec4 times `factor`.
 */
function stage(
  tile: string,
  m: Matrix,
  base: string,
  start: string,
  limit: string,
  count: number,
  threads: number,
  factor = "",
): string {
  const w4 = vecs(m.width);
  return /* wgsl */ `
    for (var i = li; i < ${count * w4}u; i += ${threads}u) {
      let at = ${base} + min(${start} + i / ${w4}u, ${limit} - 1u) * ${m.width}u;
      ${tile}[i] = ${m.vecAt("at", `(i % ${w4}u) * 4u`)}${factor};
    }`;
}

/** A loop copying `count` scalars `buf[base + start + i]` (index clamped below `limit`) into `tile`. */
function stageScalars(
  tile: string,
  buf: string,
  base: string,
  start: string,
  limit: string,
  count: number,
  threads: number,
): string {
  return /* wgsl */ `
    for (var i = li; i < ${count}u; i += ${threads}u) {
      ${tile}[i] = ${buf}[${base} + min(${start} + i, ${limit} - 1u)];
    }`;
}

/** Loads the owned rows into vec4s `name{r}_{k}` (rows clamped below `limit`), each times `factor`. */
function loadRows(
  name: string,
  m: Matrix,
  base: string,
  limit: string,
  rows: number,
  threads: number,
  factor = "",
): string[] {
  return range(rows).flatMap((r) => [
    `let ${name}_at${r} = ${base} + min(${ownedRow(r, threads)}, ${limit} - 1u) * ${m.width}u;`,
    ...range(vecs(m.width)).map((k) => `let ${name}${r}_${k} = ${m.vec(`${name}_at${r}`, k)}${factor};`),
  ]);
}

/** Declares zeroed vec4 accumulators `name{r}_{k}` for the owned rows. */
function zeros(name: string, width: number, rows: number): string[] {
  return range(rows).flatMap((r) => range(vecs(width)).map((k) => `var ${name}${r}_${k} = vec4<f32>(0.0);`));
}

/** Stores the accumulators `name{r}_{k}` (times `factor(r)`) of the owned rows below `limit`. */
function storeRows(
  name: string,
  m: Matrix,
  base: string,
  limit: string,
  rows: number,
  threads: number,
  factor?: (r: number) => string,
): string[] {
  return range(rows).flatMap((r) => [
    `if (${ownedRow(r, threads)} < ${limit}) {`,
    `  let at = ${base} + (${ownedRow(r, threads)}) * ${m.width}u;`,
    ...m.store("at", (k) => `${name}${r}_${k}${factor ? ` * ${factor(r)}` : ""}`).map((s) => `  ${s}`),
    `}`,
  ]);
}

/**
 * `out{r}_{j} = a{r} · tile[j]` for every owned row r and staged row j: vec4 partial sums over the head
 * dimension (each staged vec4 is loaded once and used by every row), then one horizontal add.
 */
function dots(out: string, a: string, tile: string, width: number, rows: number, block: number): string[] {
  const w4 = vecs(width);
  const lines = range(rows).flatMap((r) => range(block).map((j) => `var ${out}${r}_${j}: vec4<f32>;`));
  for (const j of range(block)) {
    for (const k of range(w4)) {
      lines.push(`{ let x = ${tile}[${j * w4 + k}];`);
      for (const r of range(rows)) {
        const acc = `${out}${r}_${j}`;
        lines.push(k === 0 ? `  ${acc} = ${a}${r}_0 * x;` : `  ${acc} = fma(${a}${r}_${k}, x, ${acc});`);
      }
      lines.push(`}`);
    }
  }
  for (const r of range(rows)) {
    for (const j of range(block)) lines.push(`let ${out}${r}_${j}s = dot(${out}${r}_${j}, vec4<f32>(1.0));`);
  }
  return lines;
}

/** `acc{r}_{k} += coef{r}_{j} · tile[j]` for every owned row r, staged row j and vec4 k. */
function accumulate(
  acc: string,
  coef: string,
  tile: string,
  width: number,
  rows: number,
  block: number,
): string[] {
  const w4 = vecs(width);
  const lines: string[] = [];
  for (const k of range(w4)) {
    for (const j of range(block)) {
      lines.push(`{ let x = ${tile}[${j * w4 + k}];`);
      for (const r of range(rows)) {
        lines.push(`  ${acc}${r}_${k} = fma(vec4<f32>(${coef}${r}_${j}), x, ${acc}${r}_${k});`);
      }
      lines.push(`}`);
    }
  }
  return lines;
}

/** `let live{j} = first + j < limit;` for each staged row j: whether it exists (only the last block is partial). */
function liveFlags(first: string, limit: string, block: number): string[] {
  return range(block).map((j) => `let live${j} = ${first} + ${j}u < ${limit};`);
}

// --- Kernels ---------------------------------------------------------------------------------------------

/**
 * Forward pass. Bindings: q, k, v (read), out `[BH, Nq, dv]`, lse `[BH, Nq]` (write, contiguous from 0).
 * Row blocks per head = ⌈Nq / (threads · rows)⌉; dispatch B·H·blocks workgroups (1-D, folded).
 */
export const attentionForwardKernel: (dims: AttentionDims, tiling: AttentionTiling) => Kernel = defineKernel(
  "attention:forward",
  (dims: AttentionDims, tiling: AttentionTiling): KernelSource => {
    checkConfig("attentionForwardKernel", dims, tiling);
    const { d, dv } = dims;
    const { threads, rows, block } = tiling;
    const [Q, K, V, O] = [new Matrix("Q", d), new Matrix("K", d), new Matrix("V", dv), new Matrix("O", dv)];
    const R = range(rows);
    const J = range(block);
    const softmax = R.flatMap((r) => [
      // Online softmax: the new running max, the factor rescaling everything summed so far, this block's weights.
      ...J.map((j) => `let s${r}_${j}m = select(f32_neg_inf(), s${r}_${j}s, live${j});`),
      `let m_new${r} = max(m${r}, ${J.map((j) => `s${r}_${j}m`).reduce((a, b) => `max(${a}, ${b})`)});`,
      `let alpha${r} = exp(m${r} - m_new${r});`,
      `m${r} = m_new${r};`,
      ...J.map((j) => `let p${r}_${j} = exp(s${r}_${j}m - m_new${r});`),
      `l${r} = fma(l${r}, alpha${r}, ${J.map((j) => `p${r}_${j}`).join(" + ")});`,
      ...range(vecs(dv)).map((k) => `o${r}_${k} *= alpha${r};`),
    ]);
    const lse = R.map((r) => {
      const row = ownedRow(r, threads);
      return `if (${row} < Nq) { LSE[bh * Nq + ${row}] = m${r} + log(l${r}); }`;
    });
    const code = /* wgsl */ `${HEADER}
  ${Q.decl(1, "read")}
  ${K.decl(2, "read")}
  ${V.decl(3, "read")}
  ${O.decl(4, "read_write")}
  @group(0) @binding(5) var<storage, read_write> LSE: array<f32>;
  var<workgroup> Ks: array<vec4<f32>, ${block * vecs(d)}>;
  var<workgroup> Vs: array<vec4<f32>, ${block * vecs(dv)}>;
  @compute @workgroup_size(${threads})
  ${ENTRY} {${prologue(threads, rows)}
    let k_base = ${U.read("kOffset")} + bh * Nk * ${d}u;
    let v_base = ${U.read("vOffset")} + bh * Nk * ${dv}u;
    // Scores are (scale·q)·k.
    ${
      loadRows("q", Q, `${U.read("qOffset")} + bh * Nq * ${d}u`, "Nq", rows, threads, " * scale").join("\n  ")
    }
    ${R.map((r) => `var m${r} = f32_neg_inf(); var l${r} = 0.0;`).join("\n  ")}
    ${zeros("o", dv, rows).join("\n  ")}
    for (var kb = 0u; kb < Nk; kb += ${block}u) {
      workgroupBarrier(); // everyone is done with the previous block
      ${stage("Ks", K, "k_base", "kb", "Nk", block, threads)}
      ${stage("Vs", V, "v_base", "kb", "Nk", block, threads)}
      workgroupBarrier();
      ${dots("s", "q", "Ks", d, rows, block).join("\n    ")}
      ${liveFlags("kb", "Nk", block).join("\n    ")}
      ${softmax.join("\n    ")}
      ${accumulate("o", "p", "Vs", dv, rows, block).join("\n    ")}
    }
    ${storeRows("o", O, `bh * Nq * ${dv}u`, "Nq", rows, threads, (r) => `(1.0 / l${r})`).join("\n  ")}
    ${lse.join("\n  ")}
  }
  `;
    return {
      code,
      bindings: ["read", "read", "read", "write", "write"],
    };
  },
);

/**
 * Backward, query side: dQ = scale · Σ_j dS_ij k_j with dS = P ⊙ (dO·vᵀ − D) and P = exp(S − L).
 * Bindings: q, k, v, dO, lse `[BH, Nq]`, D `[BH, Nq]` (read), dq `[BH, Nq, d]` (write, contiguous from 0).
 * Row blocks per head = ⌈Nq / (threads · rows)⌉.
 */
export const attentionBackwardQueryKernel: (dims: AttentionDims, tiling: AttentionTiling) => Kernel =
  defineKernel(
    "attention:dq",
    (dims: AttentionDims, tiling: AttentionTiling): KernelSource => {
      checkConfig("attentionBackwardQueryKernel", dims, tiling);
      const { d, dv } = dims;
      const { threads, rows, block } = tiling;
      const [Q, K, V, G, DQ] = [
        new Matrix("Q", d),
        new Matrix("K", d),
        new Matrix("V", dv),
        new Matrix("G", dv),
        new Matrix("DQ", d),
      ];
      const R = range(rows);
      const J = range(block);
      const ds = R.flatMap((r) =>
        J.map((j) =>
          `let ds${r}_${j} = select(0.0, exp(s${r}_${j}s - lse${r}), live${j}) * (dp${r}_${j}s - dsum${r});`
        )
      );
      const code = /* wgsl */ `${HEADER}
  ${Q.decl(1, "read")}
  ${K.decl(2, "read")}
  ${V.decl(3, "read")}
  ${G.decl(4, "read")}
  @group(0) @binding(5) var<storage, read> LSE: array<f32>;
  @group(0) @binding(6) var<storage, read> DSUM: array<f32>;
  ${DQ.decl(7, "read_write")}
  var<workgroup> Ks: array<vec4<f32>, ${block * vecs(d)}>;
  var<workgroup> Vs: array<vec4<f32>, ${block * vecs(dv)}>;
  @compute @workgroup_size(${threads})
  ${ENTRY} {${prologue(threads, rows)}
    let k_base = ${U.read("kOffset")} + bh * Nk * ${d}u;
    let v_base = ${U.read("vOffset")} + bh * Nk * ${dv}u;
    ${
        loadRows("q", Q, `${U.read("qOffset")} + bh * Nq * ${d}u`, "Nq", rows, threads, " * scale").join(
          "\n  ",
        )
      }
    ${loadRows("g", G, `${U.read("gOffset")} + bh * Nq * ${dv}u`, "Nq", rows, threads).join("\n  ")}
    ${R.map((r) => `let row_at${r} = bh * Nq + min(${ownedRow(r, threads)}, Nq - 1u);`).join("\n  ")}
    ${R.map((r) => `let lse${r} = LSE[row_at${r}]; let dsum${r} = DSUM[row_at${r}];`).join("\n  ")}
    ${zeros("dq", d, rows).join("\n  ")}
    for (var kb = 0u; kb < Nk; kb += ${block}u) {
      workgroupBarrier();
      ${stage("Ks", K, "k_base", "kb", "Nk", block, threads)}
      ${stage("Vs", V, "v_base", "kb", "Nk", block, threads)}
      workgroupBarrier();
      ${dots("s", "q", "Ks", d, rows, block).join("\n    ")}
      ${dots("dp", "g", "Vs", dv, rows, block).join("\n    ")}
      ${liveFlags("kb", "Nk", block).join("\n    ")}
      ${ds.join("\n    ")}
      ${accumulate("dq", "ds", "Ks", d, rows, block).join("\n    ")}
    }
    ${storeRows("dq", DQ, `bh * Nq * ${d}u`, "Nq", rows, threads, () => "scale").join("\n  ")}
  }
  `;
      return {
        code,
        bindings: ["read", "read", "read", "read", "read", "read", "write"],
      };
    },
  );

/**
 * Backward, key side: dV = Σ_i P_ij dO_i and dK = scale · Σ_i dS_ij q_i, each invocation owning key rows
 * and streaming blocks of query rows with their L and D. Bindings: q, k, v, dO, lse, D (read), dk
 * `[BH, Nk, d]`, dv `[BH, Nk, dv]` (write, contiguous from 0). Row blocks per head = ⌈Nk / (threads · rows)⌉.
 */
export const attentionBackwardKeyKernel: (dims: AttentionDims, tiling: AttentionTiling) => Kernel =
  defineKernel(
    "attention:dkv",
    (dims: AttentionDims, tiling: AttentionTiling): KernelSource => {
      checkConfig("attentionBackwardKeyKernel", dims, tiling);
      const { d, dv } = dims;
      const { threads, rows, block } = tiling;
      const [Q, K, V, G, DK, DV] = [
        new Matrix("Q", d),
        new Matrix("K", d),
        new Matrix("V", dv),
        new Matrix("G", dv),
        new Matrix("DK", d),
        new Matrix("DV", dv),
      ];
      const R = range(rows);
      const J = range(block);
      const weights = [
        // One workgroup load per staged row, shared by all owned rows.
        ...J.map((j) => `let lse_${j} = Ls[${j}]; let dsum_${j} = Ds[${j}];`),
        ...R.flatMap((r) =>
          J.map((j) => `let p${r}_${j} = select(0.0, exp(s${r}_${j}s - lse_${j}), live${j});`)
        ),
      ];
      const dScores = R.flatMap((r) =>
        J.map((j) => `let ds${r}_${j} = p${r}_${j} * (dp${r}_${j}s - dsum_${j});`)
      );
      const code = /* wgsl */ `${HEADER}
  ${Q.decl(1, "read")}
  ${K.decl(2, "read")}
  ${V.decl(3, "read")}
  ${G.decl(4, "read")}
  @group(0) @binding(5) var<storage, read> LSE: array<f32>;
  @group(0) @binding(6) var<storage, read> DSUM: array<f32>;
  ${DK.decl(7, "read_write")}
  ${DV.decl(8, "read_write")}
  var<workgroup> Qs: array<vec4<f32>, ${block * vecs(d)}>;
  var<workgroup> Gs: array<vec4<f32>, ${block * vecs(dv)}>;
  var<workgroup> Ls: array<f32, ${block}>;
  var<workgroup> Ds: array<f32, ${block}>;
  @compute @workgroup_size(${threads})
  ${ENTRY} {${prologue(threads, rows)}
    let q_base = ${U.read("qOffset")} + bh * Nq * ${d}u;
    let g_base = ${U.read("gOffset")} + bh * Nq * ${dv}u;
    ${loadRows("k", K, `${U.read("kOffset")} + bh * Nk * ${d}u`, "Nk", rows, threads).join("\n  ")}
    ${loadRows("v", V, `${U.read("vOffset")} + bh * Nk * ${dv}u`, "Nk", rows, threads).join("\n  ")}
    ${zeros("dk", d, rows).join("\n  ")}
    ${zeros("dv", dv, rows).join("\n  ")}
    for (var qb = 0u; qb < Nq; qb += ${block}u) {
      workgroupBarrier();
      // Staged queries are pre-scaled: s = k·(scale·q), and dK = Σ dS·(scale·q) needs no final scaling.
      ${stage("Qs", Q, "q_base", "qb", "Nq", block, threads, " * scale")}
      ${stage("Gs", G, "g_base", "qb", "Nq", block, threads)}
      ${stageScalars("Ls", "LSE", "bh * Nq", "qb", "Nq", block, threads)}
      ${stageScalars("Ds", "DSUM", "bh * Nq", "qb", "Nq", block, threads)}
      workgroupBarrier();
      ${dots("s", "k", "Qs", d, rows, block).join("\n    ")}
      ${liveFlags("qb", "Nq", block).join("\n    ")}
      ${weights.join("\n    ")}
      ${accumulate("dv", "p", "Gs", dv, rows, block).join("\n    ")}
      ${dots("dp", "v", "Gs", dv, rows, block).join("\n    ")}
      ${dScores.join("\n    ")}
      ${accumulate("dk", "ds", "Qs", d, rows, block).join("\n    ")}
    }
    ${storeRows("dk", DK, `bh * Nk * ${d}u`, "Nk", rows, threads).join("\n  ")}
    ${storeRows("dv", DV, `bh * Nk * ${dv}u`, "Nk", rows, threads).join("\n  ")}
  }
  `;
      return {
        code,
        bindings: ["read", "read", "read", "read", "read", "read", "write", "write"],
      };
    },
  );

/** Invocations per workgroup of {@linkcode attentionRowDotKernel}. */
export const ROW_DOT_THREADS = 64;

/**
 * D[row] = Σ_c dO[row, c] · O[row, c] over `rows` rows of `dv` values, one invocation per row (the
 * FlashAttention-2 backward preprocessing; linear cost). Parameters: {@linkcode ROW_DOT_UNIFORMS}. Bindings:
 * dO, O (read), D (write, contiguous from 0). Dispatch ⌈rows / 64⌉ workgroups (1-D, folded).
 */
export const attentionRowDotKernel: (dv: number) => Kernel = defineKernel(
  "attention:rowdot",
  (dv: number): KernelSource => {
    if (!Number.isInteger(dv) || dv < 1 || dv > MAX_HEAD_DIM) {
      throw new Error(`attentionRowDotKernel: dv = ${dv} must be an integer in [1, ${MAX_HEAD_DIM}].`);
    }
    const code = /* wgsl */ `
  ${ROW_DOT_UNIFORMS.wgsl}
  ${LINEAR_INDEX}
  @group(0) @binding(1) var<storage, read> G: array<f32>;
  @group(0) @binding(2) var<storage, read> O: array<f32>;
  @group(0) @binding(3) var<storage, read_write> D: array<f32>;
  @compute @workgroup_size(${ROW_DOT_THREADS})
  ${ENTRY} {
    let row = linear_workgroup(wid, nwg) * ${ROW_DOT_THREADS}u + li;
    if (row >= ${ROW_DOT_UNIFORMS.read("rows")}) { return; }
    let g = ${ROW_DOT_UNIFORMS.read("gOffset")} + row * ${dv}u;
    let o = ${ROW_DOT_UNIFORMS.read("oOffset")} + row * ${dv}u;
    var acc = 0.0;
    for (var c = 0u; c < ${dv}u; c++) { acc = fma(G[g + c], O[o + c], acc); }
    D[row] = acc;
  }
  `;
    return { code, bindings: ["read", "read", "write"] };
  },
);
