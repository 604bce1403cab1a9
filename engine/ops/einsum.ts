/**
 * `einsum`: Einstein summation over any number of operands, evaluated as a sequence of pairwise batched
 * matmuls in an order searched like opt_einsum's (see `einsum_path.ts`). Built from differentiable ops
 * (strided views, `sum`, `mul`, `permute`, `reshape`, `matmul`), so gradients flow to every operand.
 *
 * Each operand is first prepared: a repeated index becomes a strided view of the diagonal, a size-1 axis of
 * an index that is larger in another operand is dropped (it broadcasts), and an index that appears in no
 * other operand and not in the output is summed. Each pairwise step then classifies indices as batch (in
 * both operands and still needed), contracted (in both, needed nowhere else), left-only and right-only, and
 * runs one `[batch, M, K] × [batch, K, N]` matmul — or a broadcast `mul` when nothing is contracted, or
 * `mul` + `sum` when the matrices are too small for the matmul's 64×64 tiles (see `preferMatmul`).
 *
 * @module
 */

import { MATMUL_TILE } from "../../kernels/matmul.ts";
import { record } from "../autograd.ts";
import { sizeOf } from "../shape.ts";
import { Tensor } from "../tensor.ts";
import { zeros } from "./create.ts";
import { mul } from "./elementwise.ts";
import { copyInto } from "./map.ts";
import { matmul } from "./matmul.ts";
import { sum } from "./reduce.ts";
import { concat, permute, reshape, slice, view } from "./view.ts";
import { type OperandPrep, type PairStep, planEinsum } from "./einsum_path.ts";

export { type ContractionPlan, type ContractionStep, einsumPath } from "./einsum_path.ts";

/** Largest workgroup count per grid dimension (WebGPU's default limit). */
const MAX_GRID = 65535;

/**
 * Internal (tests, benchmarks): force contractions onto the matmul or the broadcast-product path (the
 * product's 2^24-element cap still applies).
 */
export const einsumStrategy: { force: "matmul" | "product" | null } = { force: null };

/**
 * Einstein summation: `einsum("ij,jk->ik", a, b)` is a matrix product. Indices are letters a–z, A–Z; an
 * index absent from the output is summed; an index repeated within one operand takes its diagonal
 * (`"ii->i"`); an index of size 1 in one operand and n in another broadcasts. Without `->` the output is
 * the indices appearing exactly once, in ASCII order (NumPy's implicit mode). Any number of operands:
 * the pairwise contraction order is searched (optimal up to 12 operands) and cached per spec and shapes;
 * {@linkcode einsumPath} shows it. Differentiable with respect to every operand.
 *
 * The result may be a view (a permutation or diagonal of an operand, or a permuted intermediate).
 *
 * @example
 * ```ts
 * const c = einsum("bij,bjk->bik", a, b); // batched matmul
 * const t = einsum("ii->", m); // trace
 * ```
 */
export function einsum(spec: string, ...tensors: Tensor[]): Tensor {
  tensors.forEach((t, i) => {
    if (!(t instanceof Tensor)) {
      throw new Error(
        `einsum '${spec}': operand ${i} is not a Tensor (got ${t === null ? "null" : typeof t}).`,
      );
    }
    t.storage(`einsum '${spec}' operand ${i}`);
    if (t.dtype !== "float32") {
      throw new Error(`einsum '${spec}': operand ${i} has dtype ${t.dtype}; einsum accepts float32 tensors.`);
    }
  });
  const plan = planEinsum(spec, tensors.map((t) => t.shape));
  const inputs = new Set(tensors);
  const release = (t: Tensor) => {
    if (!inputs.has(t)) t.dispose();
  };
  const list: Tensor[] = [];
  try {
    tensors.forEach((t, k) => list.push(prepare(t, plan.prep[k])));
    for (const step of plan.steps) {
      const [i, j] = step.operands;
      const [a, b] = [list[i], list[j]];
      const result = contractPair(a, b, step, plan.sizes);
      list.splice(Math.max(i, j), 1);
      list.splice(Math.min(i, j), 1);
      list.push(result);
      release(a);
      release(b);
    }
    const last = list.pop()!;
    const perm = [...plan.output].map((c) => plan.finalLetters.indexOf(c));
    if (perm.every((p, i) => p === i) && !inputs.has(last)) return last;
    list.push(last);
    return permute(last, perm);
  } finally {
    list.forEach(release);
  }
}

/** Diagonal view, dropped broadcast axes and early sums of one operand. */
function prepare(t: Tensor, prep: OperandPrep): Tensor {
  let x = prep.groups ? walkView(t, prep.groups) : t;
  if (prep.sumAxes.length > 0) {
    // keepDims + reshape: reshape hands sum's backward a contiguous gradient, which it needs (it views
    // the incoming gradient with `viewAs`, and a later permute would give it a strided one).
    const summed = sum(x, prep.sumAxes, true);
    if (x !== t) x.dispose();
    x = reshape(summed, summed.shape.filter((_, axis) => !prep.sumAxes.includes(axis)));
    summed.dispose();
  }
  return x;
}

/**
 * A view whose axis u walks the axes `groups[u]` of `x` together (stride = the sum of their strides): the
 * diagonal of a repeated index. Axes in no group must have size 1; they are dropped. The backward pass
 * scatters the gradient into zeros through the same view (diagonal positions are distinct, so a copy does).
 */
function walkView(x: Tensor, groups: number[][]): Tensor {
  const shape = groups.map((g) => x.shape[g[0]]);
  const strides = (t: Tensor) => groups.map((g) => g.reduce((s, axis) => s + t.strides[axis], 0));
  const out = view(x, shape, strides(x), x.offset);
  const inShape = x.shape;
  return record("einsum diagonal", out, [x], (g) => {
    const gx = zeros(inShape);
    const target = view(gx, shape, strides(gx), gx.offset);
    copyInto(target, g);
    target.dispose();
    return [gx];
  });
}

/**
 * Whether a `[B, M, K] × [B, K, N]` product should run as a matmul rather than as a broadcast product
 * `[B, M, 1, K] ⊙ [B, 1, N, K]` summed over K. The matmul kernel computes whole 64×64×16 tiles: on
 * lavapipe ~0.1–0.2 ms per tile forward, ~3× that with backward, whatever the matrix sizes. The product
 * costs ~60 ns per element of its B·M·N·K temporary forward, ~6× that with backward (bench/einsum.ts
 * profiles). So only tiny matrices in large batches take the product: 4000 products of 2×3 by 3×2 run in
 * 13 ms instead of 590 ms. The temporary is capped at 2^24 elements (64 MiB).
 */
function preferMatmul(B: number, M: number, K: number, N: number): boolean {
  const terms = B * M * N * K;
  if (terms > 2 ** 24) return true;
  if (einsumStrategy.force) return einsumStrategy.force === "matmul";
  const tiles = B * Math.ceil(M / MATMUL_TILE) * Math.ceil(N / MATMUL_TILE) * Math.ceil(K / 16);
  return terms >= 1024 * tiles;
}

/** One pairwise step: `a` and `b` (index letters `step.a`, `step.b`) into a tensor with `step.result`. */
function contractPair(a: Tensor, b: Tensor, step: PairStep, sizes: Map<string, number>): Tensor {
  const dim = (letters: string) => sizeOf([...letters].map((c) => sizes.get(c)!));
  const { batch, contract, left, right } = step;
  const [B, M, K, N] = [batch, left, contract, right].map(dim);
  let x: Tensor;
  let y: Tensor;
  let product: Tensor;
  if (contract === "") {
    // Outer product within each batch: [B, M, 1] ⊙ [B, 1, N].
    x = asGroups(a, step.a, [batch, left, ""], dim);
    y = asGroups(b, step.b, [batch, "", right], dim);
    product = mul(x, y);
  } else if (preferMatmul(B, M, K, N)) {
    x = asGroups(a, step.a, [batch, left, contract], dim);
    y = asGroups(b, step.b, [batch, contract, right], dim);
    product = batchedMatmul(x, y);
  } else {
    x = asGroups(a, step.a, [batch, left, "", contract], dim);
    y = asGroups(b, step.b, [batch, "", right, contract], dim);
    const terms = mul(x, y);
    product = sum(terms, 3);
    terms.dispose();
  }
  x.dispose();
  y.dispose();
  const out = reshape(product, [...step.result].map((c) => sizes.get(c)!));
  product.dispose();
  return out;
}

/**
 * `t` (index letters `letters`) with one axis per group of letters (an empty group gives a size-1 axis).
 * A view when `t` is contiguous and its letters are the groups in some order — e.g. `[B, K, M]` asked as
 * `[B, M, K]` is a transposed view, which matmul reads through its strides; otherwise one copy.
 */
function asGroups(t: Tensor, letters: string, groups: string[], dim: (letters: string) => number): Tensor {
  const shape = groups.map(dim);
  const present = groups.flatMap((g, i) => (g === "" ? [] : [i]));
  const stored = present.sort((i, j) => letters.indexOf(groups[i]) - letters.indexOf(groups[j]));
  if (stored.map((i) => groups[i]).join("") === letters) {
    const source = [...stored, ...groups.flatMap((g, i) => (g === "" ? [i] : []))];
    const grouped = reshape(t, source.map((i) => shape[i]));
    if (source.every((s, i) => s === i)) return grouped;
    const out = permute(grouped, groups.map((_, i) => source.indexOf(i)));
    grouped.dispose();
    return out;
  }
  const permuted = permute(t, [...groups.join("")].map((c) => letters.indexOf(c)));
  const out = reshape(permuted, shape);
  permuted.dispose();
  return out;
}

/**
 * Internal: `matmul` of `[B, M, K] × [B, K, N]`, split into pieces along B, M or N when the grid would exceed
 * `maxGrid` workgroups in a dimension (WebGPU's limit; smaller in tests).
 */
export function batchedMatmul(a: Tensor, b: Tensor, maxGrid = MAX_GRID): Tensor {
  const [B, M, K] = a.shape;
  const N = b.shape[2];
  const rows = maxGrid * MATMUL_TILE;
  const axis = B > maxGrid ? 0 : M > rows ? 1 : N > rows ? 2 : -1;
  if (axis < 0) return matmul(a, b);
  const extent = [B, M, N][axis];
  const chunk = axis === 0 ? maxGrid : rows;
  const parts: Tensor[] = [];
  for (let s = 0; s < extent; s += chunk) {
    const e = Math.min(extent, s + chunk);
    const as = axis === 2 ? a : axis === 0 ? slice(a, [s], [e]) : slice(a, [0, s], [B, e]);
    const bs = axis === 1 ? b : axis === 0 ? slice(b, [s], [e]) : slice(b, [0, 0, s], [B, K, e]);
    parts.push(batchedMatmul(as, bs, maxGrid));
    if (as !== a) as.dispose();
    if (bs !== b) bs.dispose();
  }
  const out = concat(parts, axis);
  parts.forEach((p) => p.dispose());
  return out;
}
