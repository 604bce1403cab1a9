/**
 * `matmul` with NumPy semantics: 1-D operands are promoted (and the added dimension removed), leading
 * batch dimensions broadcast. Transposed operands are read through their strides, so `g · Bᵀ` in the
 * backward pass costs no copy.
 *
 * @module
 */

import {
  chunkColumns,
  type ChunkConfig,
  chunkParams,
  MATMUL_CHUNK_LARGE,
  MATMUL_CHUNK_MEDIUM,
  MATMUL_CHUNK_NARROW,
  MATMUL_TILE,
  MATMUL_UNIFORMS,
  matmulChunkKernel,
  matmulKernel,
  matmulSettings,
} from "../../kernels/matmul.ts";
import type { Kernel } from "../../kernels/types.ts";
import { record } from "../autograd.ts";
import { isSoftwareAdapter } from "../device.ts";
import { dispatch } from "../runtime.ts";
import {
  broadcastShapes,
  broadcastStrides,
  coalesce,
  contiguousStrides,
  formatShape,
  sizeOf,
} from "../shape.ts";
import { fromData, Tensor } from "../tensor.ts";
import { contiguous, map, mapInto } from "./map.ts";
import { sumTo } from "./reduce.ts";
import { permuteView, view, viewAs } from "./view.ts";

const kernel = matmulKernel();
const MAX_GRID = 65535;

/** Batched product of the last two dims of `a` `[..., M, K]` and `b` `[..., K, N]` (no autograd). */
function matmulRaw(a: Tensor, b: Tensor): Tensor {
  const M = a.shape[a.rank - 2];
  const K = a.shape[a.rank - 1];
  const N = b.shape[b.rank - 1];
  const batchShape = broadcastShapes("matmul", a.shape.slice(0, -2), b.shape.slice(0, -2));
  const outShape = [...batchShape, M, N];
  if (sizeOf(outShape) === 0) return fromData(null, outShape);
  if (K === 0) return map("fill", "s0", [], [0], outShape);
  let A = a;
  let B = b;
  let batch = coalesceBatch(A, B, batchShape);
  if (!batch) {
    // Batch dims that do not fold into one stride: materialise the broadcast operands.
    A = map("copy", "a", [a], [], [...batchShape, M, K]);
    B = map("copy", "a", [b], [], [...batchShape, K, N]);
    batch = coalesceBatch(A, B, batchShape)!;
  }
  const count = sizeOf(batchShape);
  const cfg = chunkConfigFor(M, N, K, count);
  const out = cfg
    ? chunkMatmul(cfg, A, B, batch, outShape, M, N, K, count)
    : tiledMatmul(A, B, batch, outShape, M, N, K, count);
  if (A !== a) A.dispose();
  if (B !== b) B.dispose();
  return out;
}

/** The general kernel: any strides, one dispatch. */
function tiledMatmul(
  A: Tensor,
  B: Tensor,
  batch: { a: number; b: number },
  outShape: number[],
  M: number,
  N: number,
  K: number,
  count: number,
): Tensor {
  const gridX = Math.ceil(N / MATMUL_TILE);
  const gridY = Math.ceil(M / MATMUL_TILE);
  if (gridX > MAX_GRID || gridY > MAX_GRID || count > MAX_GRID) {
    throw new Error(`matmul: [${count}, ${M}, ${K}] × [${K}, ${N}] exceeds the dispatch grid limits.`);
  }
  const params = MATMUL_UNIFORMS.pack({
    M,
    N,
    K,
    aOffset: A.offset,
    aBatch: batch.a,
    aRow: A.strides[A.rank - 2],
    aCol: A.strides[A.rank - 1],
    bOffset: B.offset,
    bBatch: batch.b,
    bRow: B.strides[B.rank - 2],
    bCol: B.strides[B.rank - 1],
  });
  const out = fromData(null, outShape);
  dispatch(kernel, params, [
    A.storage("matmul").buffer,
    B.storage("matmul").buffer,
    out.storage("matmul").buffer,
  ], [gridX, gridY, count]);
  return out;
}

// --- K-chunk kernel for software adapters --------------------------------------------------------------

const chunkKernels = new Map<ChunkConfig, Kernel>();

/** The chunk-kernel geometry for a product, or null for the general kernel. */
function chunkConfigFor(M: number, N: number, K: number, count: number): ChunkConfig | null {
  const path = matmulSettings.path;
  if (path === "tiled") return null;
  // Few outputs over a long K would mean many dispatches with little work each: the tiled kernel loops instead.
  const small = M * N * K * count < matmulSettings.minChunkFlops || M * N * count < 4096;
  if (path === "auto" && (small || !isSoftwareAdapter())) return null;
  const large = path === "chunk-large" ||
    (path === "auto" && !matmulSettings.noLarge && N >= 768 && M >= 64 && K >= 128);
  const cfg = large ? MATMUL_CHUNK_LARGE : N >= 192 ? MATMUL_CHUNK_MEDIUM : MATMUL_CHUNK_NARROW;
  const fits = Math.ceil(N / chunkColumns(cfg)) <= MAX_GRID && Math.ceil(M / cfg.rows) <= MAX_GRID &&
    count <= MAX_GRID;
  return fits ? cfg : null;
}

/**
 * Row-major layout with vec4-aligned offset and strides `[batch, rows, cols]` for the chunk kernel: `t` itself
 * when it already is one, else a copy with the row stride rounded up to a multiple of 4.
 */
function alignedRows(
  t: Tensor,
  batchStride: number,
  rows: number,
  cols: number,
  count: number,
): { t: Tensor; offset: number; batch: number; row: number } {
  const row = t.strides[t.rank - 2];
  const col = t.strides[t.rank - 1];
  if ((col === 1 || cols === 1) && row % 4 === 0 && t.offset % 4 === 0 && batchStride % 4 === 0) {
    return { t, offset: t.offset, batch: batchStride, row };
  }
  const n = batchStride === 0 ? 1 : count;
  const cols4 = Math.ceil(cols / 4) * 4;
  const dense = fromData(null, [n, rows, cols4]);
  const dst = view(dense, [n, rows, cols], [rows * cols4, cols4, 1], 0);
  const src = view(t, [n, rows, cols], [batchStride, row, col], t.offset);
  mapInto(dst, "copy", "a", [src]);
  dst.dispose();
  src.dispose();
  return { t: dense, offset: 0, batch: n === 1 ? 0 : rows * cols4, row: cols4 };
}

/** The product through the K-chunk kernel: one dispatch per `cfg.depth` values of k. */
function chunkMatmul(
  cfg: ChunkConfig,
  A: Tensor,
  B: Tensor,
  batch: { a: number; b: number },
  outShape: number[],
  M: number,
  N: number,
  K: number,
  count: number,
): Tensor {
  let k = chunkKernels.get(cfg);
  if (!k) {
    k = matmulChunkKernel(cfg);
    chunkKernels.set(cfg, k);
  }
  const a = alignedRows(A, batch.a, M, K, count);
  const b = alignedRows(B, batch.b, K, N, count);
  const cRow = Math.ceil(N / 4) * 4;
  const out = fromData(null, outShape);
  const c = cRow === N ? out : fromData(null, [count, M, cRow]);
  const op = {
    M,
    N,
    K,
    aOffset: a.offset,
    aBatch: a.batch,
    aRow: a.row,
    bOffset: b.offset,
    bBatch: b.batch,
    bRow: b.row,
    cRow,
    cBatch: M * cRow,
  };
  const buffers = [a.t.storage("matmul").buffer, b.t.storage("matmul").buffer, c.storage("matmul").buffer];
  const grid: [number, number, number] = [Math.ceil(N / chunkColumns(cfg)), Math.ceil(M / cfg.rows), count];
  for (let k0 = 0; k0 < K; k0 += cfg.depth) dispatch(k, chunkParams(op, k0), buffers, grid);
  if (a.t !== A) a.t.dispose();
  if (b.t !== B) b.t.dispose();
  if (c !== out) {
    const padded = view(c, [count, M, N], [M * cRow, cRow, 1], 0);
    const dst = viewAs(out, [count, M, N]);
    mapInto(dst, "copy", "a", [padded]);
    padded.dispose();
    dst.dispose();
    c.dispose();
  }
  return out;
}

/** One stride per operand over the flattened batch, or null when the batch dims do not fold. */
function coalesceBatch(a: Tensor, b: Tensor, batchShape: number[]): { a: number; b: number } | null {
  if (batchShape.length === 0) return { a: 0, b: 0 };
  const aStrides = broadcastStrides(a.shape.slice(0, -2), a.strides.slice(0, -2), batchShape);
  const bStrides = broadcastStrides(b.shape.slice(0, -2), b.strides.slice(0, -2), batchShape);
  const outStrides = contiguousStrides(batchShape);
  const c = coalesce(batchShape, [outStrides, aStrides, bStrides]);
  if (c.shape.length > 1) return null;
  return { a: c.strides[1][0], b: c.strides[2][0] };
}

/**
 * Matrix product with NumPy's `matmul` semantics: `[..., M, K] × [..., K, N] → [..., M, N]`, batch
 * dimensions broadcast, 1-D operands promoted to a row (left) or column (right) vector.
 */
export function matmul(a: Tensor, b: Tensor): Tensor {
  for (const [name, t] of [["a", a], ["b", b]] as const) {
    if (!(t instanceof Tensor)) throw new Error(`matmul: ${name} must be a Tensor.`);
    t.storage("matmul");
    if (t.rank === 0) {
      throw new Error(`matmul: ${name} is a scalar (shape []); matmul needs at least 1-D operands.`);
    }
  }
  const a2 = a.rank === 1 ? viewAs1D(a, [1, a.shape[0]]) : a;
  const b2 = b.rank === 1 ? viewAs1D(b, [b.shape[0], 1]) : b;
  const K = a2.shape[a2.rank - 1];
  if (b2.shape[b2.rank - 2] !== K) {
    throw new Error(
      `matmul: shapes ${formatShape(a.shape)} and ${formatShape(b.shape)} are not aligned: ` +
        `a has ${K} columns but b has ${b2.shape[b2.rank - 2]} rows.`,
    );
  }
  const out2 = matmulRaw(a2, b2);
  const outShape = [...out2.shape];
  if (b.rank === 1) outShape.splice(outShape.length - 1, 1);
  if (a.rank === 1) outShape.splice(outShape.length - (b.rank === 1 ? 1 : 2), 1);
  const out = viewAs(out2, outShape);
  out2.dispose();
  if (a2 !== a) a2.dispose();
  if (b2 !== b) b2.dispose();
  const aShape = a.shape;
  const bShape = b.shape;
  const productShape = out2.shape;
  return record("matmul", out, [a, b], (g, [as, bs], needs) => {
    const A = as.rank === 1 ? viewAs1D(as, [1, as.shape[0]]) : as;
    const B = bs.rank === 1 ? viewAs1D(bs, [bs.shape[0], 1]) : bs;
    const gc = contiguous(g);
    const g2 = viewAs(gc, productShape);
    gc.dispose();
    const grads: Array<Tensor | null> = [null, null];
    if (needs[0]) {
      const bt = swapLast(B);
      grads[0] = reduceAndReshape(matmulRaw(g2, bt), A.shape, aShape);
      bt.dispose();
    }
    if (needs[1]) {
      const at = swapLast(A);
      grads[1] = reduceAndReshape(matmulRaw(at, g2), B.shape, bShape);
      at.dispose();
    }
    g2.dispose();
    if (A !== as) A.dispose();
    if (B !== bs) B.dispose();
    return grads;
  }, [a, b]);
}

function viewAs1D(t: Tensor, shape: number[]): Tensor {
  return view(t, shape, shape[0] === 1 ? [0, t.strides[0]] : [t.strides[0], 0], t.offset);
}

function swapLast(t: Tensor): Tensor {
  const perm = [...Array(t.rank).keys()];
  [perm[t.rank - 2], perm[t.rank - 1]] = [perm[t.rank - 1], perm[t.rank - 2]];
  return permuteView(t, perm);
}

function reduceAndReshape(g: Tensor, promoted: readonly number[], original: readonly number[]): Tensor {
  const reduced = sumTo(g, promoted);
  g.dispose();
  const dense = contiguous(reduced);
  reduced.dispose();
  const out = viewAs(dense, original);
  dense.dispose();
  return out;
}
