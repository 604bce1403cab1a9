/**
 * The planning half of `einsum`, with no GPU code: parsing and validating a spec against operand shapes,
 * the per-operand preparation (diagonals, size-1 broadcast axes, indices summed before any contraction),
 * and the search for a pairwise contraction order.
 *
 * The order search follows opt_einsum: an optimal dynamic programme over subsets of operands for up to
 * {@linkcode OPTIMAL_MAX_OPERANDS} operands (3ⁿ splits: 59 049 for the 10 TenVOO cores), greedy beyond.
 * Costs are opt_einsum's FLOP counts; intermediates are capped at the size of the largest operand or the
 * output, a cap dropped only when no order fits under it. Plans are cached per (spec, shapes).
 *
 * @module
 */

import { formatShape, sizeOf } from "../shape.ts";

/** One pairwise contraction of a {@linkcode ContractionPlan}. */
export interface ContractionStep {
  /**
   * Positions of the left and right operand in the current operand list; both are removed and the result
   * is appended at the end (opt_einsum's convention).
   */
  operands: [number, number];
  /** This step as an einsum of two operands, e.g. `"ij,jk->ik"`. */
  spec: string;
  /** opt_einsum's cost: the product of all index sizes involved, doubled when an index is summed. */
  flops: number;
}

/** The contraction order chosen for an einsum, for inspection and tests. */
export interface ContractionPlan {
  /** Pairwise steps, in execution order (n − 1 steps for n operands). */
  steps: ContractionStep[];
  /** Σ step FLOPs, plus one per input element of sums done before any contraction. */
  totalFlops: number;
  /** opt_einsum's cost of one loop over every index combination: Π sizes × (n − 1 + [any index summed]). */
  naiveFlops: number;
}

/** A pairwise step with the index groups the executor needs. */
export interface PairStep extends ContractionStep {
  /** Index letters of the left operand, in axis order. */
  a: string;
  /** Index letters of the right operand, in axis order. */
  b: string;
  /** In both operands and kept (later operands or the output use them): matmul batch. */
  batch: string;
  /** In both operands and needed nowhere else: summed by the matmul. */
  contract: string;
  /** Only in the left operand: rows of the matmul. */
  left: string;
  /** Only in the right operand: columns of the matmul. */
  right: string;
  /** Index letters of the result, `batch + left + right`. */
  result: string;
}

/** How one operand is prepared before any pairwise step. */
export interface OperandPrep {
  /**
   * Axes of the operand walked together by each axis of a strided view (several for a repeated index: a
   * diagonal), or null when no view is needed. Axes in no group have size 1 and broadcast: they are dropped.
   */
  groups: number[][] | null;
  /** Index letters after the view. */
  viewLetters: string;
  /** Axes of the view summed right away: their index appears in no other operand and not in the output. */
  sumAxes: number[];
  /** Index letters after the sum. */
  letters: string;
}

/** Everything `einsum` needs to evaluate a spec for given shapes. */
export interface EinsumPlan extends ContractionPlan {
  /** Pairwise steps with their index groups. */
  steps: PairStep[];
  /** The spec as given (for error messages). */
  spec: string;
  /** Output letters in order (implicit mode: indices appearing once, in ASCII order). */
  output: string;
  /** Size of every index. */
  sizes: Map<string, number>;
  /** Per-operand preparation. */
  prep: OperandPrep[];
  /** Letters of the last remaining operand, before the final permutation to `output`. */
  finalLetters: string;
}

/** Up to this many operands the contraction order is optimal (dynamic programming); greedy beyond. */
export const OPTIMAL_MAX_OPERANDS = 12;

// --- Parsing and validation ----------------------------------------------------------------------------

/** The subscripts of each operand and of the output. */
export interface ParsedSpec {
  /** Subscripts of each operand. */
  inputs: string[];
  /** Subscripts of the output. */
  output: string;
}

/**
 * Parses an einsum spec (whitespace ignored). Without `->` the output is implicit, as in NumPy: the
 * indices that appear exactly once, in ASCII order (upper case before lower case).
 */
export function parseSpec(spec: string): ParsedSpec {
  if (typeof spec !== "string") {
    throw new Error(`einsum: spec must be a string such as "ij,jk->ik", got ${typeof spec}.`);
  }
  const fail = (msg: string): never => {
    throw new Error(`einsum '${spec}': ${msg}`);
  };
  const s = spec.replace(/\s+/g, "");
  if (s.includes(".")) fail("ellipsis '...' is not supported; name every index with a letter");
  const parts = s.split("->");
  if (parts.length > 2) fail("has more than one '->'");
  const inputs = parts[0].split(",");
  inputs.forEach((term, i) => {
    const bad = term.match(/[^a-zA-Z]/);
    if (bad) fail(`operand ${i} subscripts '${term}' contain '${bad[0]}'; only letters a-z, A-Z are allowed`);
  });
  if (parts.length === 1) {
    const counts = new Map<string, number>();
    for (const c of inputs.join("")) counts.set(c, (counts.get(c) ?? 0) + 1);
    const once = [...counts].filter(([, n]) => n === 1).map(([c]) => c).sort();
    return { inputs, output: once.join("") };
  }
  const output = parts[1];
  const bad = output.match(/[^a-zA-Z]/);
  if (bad) fail(`output subscripts '${output}' contain '${bad[0]}'; only letters a-z, A-Z are allowed`);
  const seen = new Set<string>();
  for (const c of output) {
    if (seen.has(c)) fail(`output index '${c}' appears more than once`);
    seen.add(c);
    if (!inputs.some((t) => t.includes(c))) fail(`output index '${c}' does not appear in any operand`);
  }
  return { inputs, output };
}

/**
 * The size of every index, after checking each operand's rank against its subscripts, equal sizes for an
 * index repeated within one operand, and sizes across operands that are equal or 1 (1 broadcasts).
 */
export function indexSizes(
  spec: string,
  inputs: readonly string[],
  shapes: ReadonlyArray<readonly number[]>,
): Map<string, number> {
  const fail = (msg: string): never => {
    throw new Error(`einsum '${spec}': ${msg}`);
  };
  if (shapes.length !== inputs.length) {
    fail(`has ${inputs.length} operand subscripts but ${shapes.length} operands were given`);
  }
  const sizes = new Map<string, { size: number; operand: number }>();
  inputs.forEach((term, i) => {
    const shape = shapes[i];
    if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 0)) {
      fail(`operand ${i} has an invalid shape ${JSON.stringify(shape)}`);
    }
    if (shape.length !== term.length) {
      fail(
        `operand ${i} has shape ${formatShape(shape)} (${shape.length} dims) but subscripts '${term}' ` +
          `name ${term.length}`,
      );
    }
    const local = new Map<string, number>();
    [...term].forEach((c, k) => {
      const prev = local.get(c);
      if (prev !== undefined && prev !== shape[k]) {
        fail(
          `index '${c}' is repeated in operand ${i} ('${term}', shape ${formatShape(shape)}) with ` +
            `different sizes ${prev} and ${shape[k]}`,
        );
      }
      local.set(c, shape[k]);
    });
    for (const [c, d] of local) {
      const seen = sizes.get(c);
      if (seen === undefined || seen.size === 1) sizes.set(c, { size: d, operand: i });
      else if (d !== seen.size && d !== 1) {
        fail(
          `index '${c}' has size ${seen.size} in operand ${seen.operand} but size ${d} in operand ${i} ` +
            "(sizes must match or be 1)",
        );
      }
    }
  });
  return new Map([...sizes].map(([c, v]) => [c, v.size]));
}

// --- Per-operand preparation ---------------------------------------------------------------------------

function prepareOperands(
  inputs: readonly string[],
  shapes: ReadonlyArray<readonly number[]>,
  output: string,
  sizes: Map<string, number>,
): OperandPrep[] {
  // A size-1 axis of an index that is larger elsewhere broadcasts: the operand does not vary along it.
  const views = inputs.map((term, k) => {
    const groups = new Map<string, number[]>();
    [...term].forEach((c, axis) => {
      if (shapes[k][axis] === 1 && sizes.get(c) !== 1) return;
      const g = groups.get(c);
      if (g) g.push(axis);
      else groups.set(c, [axis]);
    });
    return groups;
  });
  return views.map((groups, k) => {
    const viewLetters = [...groups.keys()].join("");
    const needsView = viewLetters !== inputs[k];
    const elsewhere = (c: string) => output.includes(c) || views.some((v, j) => j !== k && v.has(c));
    const sumAxes = [...viewLetters].flatMap((c, axis) => (elsewhere(c) ? [] : [axis]));
    return {
      groups: needsView ? [...groups.values()] : null,
      viewLetters,
      sumAxes,
      letters: [...viewLetters].filter((c) => elsewhere(c)).join(""),
    };
  });
}

// --- Index sets as bit masks ---------------------------------------------------------------------------

// Up to 52 distinct indices: two 26-bit words keep JavaScript's 32-bit bitwise operators exact.
const WORD = 26;

class IndexSets {
  readonly ids = new Map<string, number>();
  readonly sizeOfId: number[] = [];

  constructor(sizes: Map<string, number>) {
    for (const [c, n] of sizes) {
      this.ids.set(c, this.sizeOfId.length);
      this.sizeOfId.push(n);
    }
  }

  mask(letters: string): [number, number] {
    let lo = 0;
    let hi = 0;
    for (const c of letters) {
      const id = this.ids.get(c)!;
      if (id < WORD) lo |= 1 << id;
      else hi |= 1 << (id - WORD);
    }
    return [lo, hi];
  }

  /** Product of the sizes of the indices in the set. */
  size(lo: number, hi: number): number {
    let n = 1;
    for (let m = lo; m !== 0; m &= m - 1) n *= this.sizeOfId[31 - Math.clz32(m & -m)];
    for (let m = hi; m !== 0; m &= m - 1) n *= this.sizeOfId[WORD + 31 - Math.clz32(m & -m)];
    return n;
  }
}

// --- Order search --------------------------------------------------------------------------------------

/** A contraction order: pairs of positions in the shrinking operand list (result appended). */
type Order = Array<[number, number]>;

/**
 * The FLOP-optimal order by dynamic programming over subsets. For a subset S of operands, the indices of
 * its contracted result are those of S still needed outside S (by the output or another operand); the best
 * cost of S is the minimum over splits S = A ∪ B of cost(A) + cost(B) + flops(A, B). Subsets whose result
 * exceeds `cap` elements are not formed. Returns null when no order fits under the cap.
 */
function optimalOrder(
  sets: IndexSets,
  operands: ReadonlyArray<[number, number]>,
  out: [number, number],
  cap: number,
): Order | null {
  const n = operands.length;
  const full = (1 << n) - 1;
  const count = full + 1;
  const unionLo = new Int32Array(count);
  const unionHi = new Int32Array(count);
  for (let s = 1; s < count; s++) {
    const low = 31 - Math.clz32(s & -s);
    unionLo[s] = unionLo[s & (s - 1)] | operands[low][0];
    unionHi[s] = unionHi[s & (s - 1)] | operands[low][1];
  }
  const idxLo = new Int32Array(count);
  const idxHi = new Int32Array(count);
  const size = new Float64Array(count);
  for (let s = 1; s < count; s++) {
    idxLo[s] = unionLo[s] & (out[0] | unionLo[full ^ s]);
    idxHi[s] = unionHi[s] & (out[1] | unionHi[full ^ s]);
    size[s] = sets.size(idxLo[s], idxHi[s]);
  }
  const cost = new Float64Array(count).fill(Infinity);
  const split = new Int32Array(count);
  for (let k = 0; k < n; k++) cost[1 << k] = 0;
  for (let s = 1; s < count; s++) {
    if ((s & (s - 1)) === 0 || (s !== full && size[s] > cap)) continue;
    let best = Infinity;
    let bestA = 0;
    // Each unordered split {a, b} once: a is the part holding the lowest operand of s.
    const lowest = s & -s;
    for (let a = (s - 1) & s; a > 0; a = (a - 1) & s) {
      if ((a & lowest) === 0) continue;
      const b = s ^ a;
      const partial = cost[a] + cost[b];
      if (partial >= best) continue;
      const sharedLo = idxLo[a] & idxLo[b];
      const sharedHi = idxHi[a] & idxHi[b];
      const sharedSize = sets.size(sharedLo, sharedHi);
      const all = sharedSize === 0 ? 0 : (size[a] * size[b]) / sharedSize;
      const summed = (sharedLo & ~idxLo[s]) !== 0 || (sharedHi & ~idxHi[s]) !== 0;
      const total = partial + all * (summed ? 2 : 1);
      if (total < best) {
        best = total;
        bestA = a;
      }
    }
    cost[s] = best;
    split[s] = bestA;
  }
  if (cost[full] === Infinity) return null;
  // Replay the tree bottom-up (left subtree, right subtree, then the merge) against the operand list.
  const list = [...Array(n).keys()].map((k) => 1 << k);
  const order: Order = [];
  const emit = (s: number): void => {
    if ((s & (s - 1)) === 0) return;
    const a = split[s];
    const b = s ^ a;
    emit(a);
    emit(b);
    const ia = list.indexOf(a);
    const ib = list.indexOf(b);
    order.push([ia, ib]);
    list.splice(Math.max(ia, ib), 1);
    list.splice(Math.min(ia, ib), 1);
    list.push(s);
  };
  emit(full);
  return order;
}

/**
 * opt_einsum's greedy order: repeatedly contract the pair (sharing an index, if any pair does) whose result
 * grows memory the least, `size(result) − size(a) − size(b)`, ties broken by FLOPs.
 */
function greedyOrder(
  sets: IndexSets,
  operands: ReadonlyArray<[number, number]>,
  out: [number, number],
): Order {
  const list = operands.map((m) => [...m] as [number, number]);
  const order: Order = [];
  while (list.length > 1) {
    const keptBeyond = (i: number, j: number): [number, number] => {
      let lo = out[0];
      let hi = out[1];
      list.forEach((m, k) => {
        if (k !== i && k !== j) {
          lo |= m[0];
          hi |= m[1];
        }
      });
      return [lo, hi];
    };
    let best: { i: number; j: number; score: number; flops: number; shares: boolean } | null = null;
    for (let i = 0; i < list.length; i++) {
      for (let j = i + 1; j < list.length; j++) {
        const [keepLo, keepHi] = keptBeyond(i, j);
        const [a, b] = [list[i], list[j]];
        const sharedLo = a[0] & b[0];
        const sharedHi = a[1] & b[1];
        const shares = sharedLo !== 0 || sharedHi !== 0;
        if (best && best.shares && !shares) continue;
        const resultSize = sets.size((a[0] | b[0]) & keepLo, (a[1] | b[1]) & keepHi);
        const score = resultSize - sets.size(a[0], a[1]) - sets.size(b[0], b[1]);
        const summed = (sharedLo & ~keepLo) !== 0 || (sharedHi & ~keepHi) !== 0;
        const flops = sets.size(a[0] | b[0], a[1] | b[1]) * (summed ? 2 : 1);
        const better = !best || (shares && !best.shares) || score < best.score ||
          (score === best.score && flops < best.flops);
        if (better) best = { i, j, score, flops, shares };
      }
    }
    const { i, j } = best!;
    const merged: [number, number] = [list[i][0] | list[j][0], list[i][1] | list[j][1]];
    const [keepLo, keepHi] = keptBeyond(i, j);
    order.push([i, j]);
    list.splice(j, 1);
    list.splice(i, 1);
    list.push([merged[0] & keepLo, merged[1] & keepHi]);
  }
  return order;
}

// --- Steps ---------------------------------------------------------------------------------------------

const only = (letters: string, keep: (c: string) => boolean): string => [...letters].filter(keep).join("");

/**
 * Whether an operand with index letters `letters` is its non-empty `groups` concatenated in some order:
 * then it can be seen as one axis per group without a copy (reshape, then a permuting view).
 */
export function isGrouping(letters: string, groups: readonly string[]): boolean {
  const present = groups.filter((g) => g !== "");
  present.sort((x, y) => letters.indexOf(x) - letters.indexOf(y));
  return present.join("") === letters;
}

/**
 * Index groups and FLOPs of contracting `a` with `b` when `keep` lists the indices still needed; on the
 * last step (`output` given) the groups are ordered to produce the output directly when possible.
 */
function describeStep(
  operands: [number, number],
  a: string,
  b: string,
  keep: Set<string>,
  sizes: Map<string, number>,
  finalOutput: string,
  output: string | null,
): PairStep {
  const size = (letters: string) => sizeOf([...letters].map((c) => sizes.get(c)!));
  const shared = (c: string) => a.includes(c) && b.includes(c);
  let left = only(a, (c) => !b.includes(c));
  let right = only(b, (c) => !a.includes(c));
  // Batch and summed indices must be ordered alike in both operands: follow the layout of one of them,
  // whichever leaves fewer elements to copy (an operand is used as is when its letters are its groups in
  // some order), the larger operand on ties.
  const [larger, smaller] = size(a) >= size(b) ? [a, b] : [b, a];
  const choices = [larger, smaller].map((source) => {
    const batch = only(source, (c) => shared(c) && keep.has(c));
    const contract = only(source, (c) => shared(c) && !keep.has(c));
    const copyA = !isGrouping(a, [batch, left, contract]);
    const copyB = !isGrouping(b, [batch, contract, right]);
    return { batch, contract, copyA, copyB, copied: (copyA ? size(a) : 0) + (copyB ? size(b) : 0) };
  });
  const chosen = choices[1].copied < choices[0].copied ? choices[1] : choices[0];
  let batch = chosen.batch;
  const contract = chosen.contract;
  // An operand copied anyway can take its free indices in any order: take the output's, so that later
  // intermediates (and the result) tend to be laid out like the output.
  const outputFirst = (s: string) =>
    [...s].sort((x, y) => rank(x) - rank(y) || s.indexOf(x) - s.indexOf(y)).join("");
  const rank = (c: string) => (finalOutput.includes(c) ? finalOutput.indexOf(c) : finalOutput.length);
  if (chosen.copyA) left = outputFirst(left);
  if (chosen.copyB) right = outputFirst(right);
  if (output !== null) {
    // Last step: when the output is batch + left + right in some order of each group, produce it directly
    // (contiguous) rather than permuting at the end.
    const byOutput = (s: string) => [...s].sort((x, y) => output.indexOf(x) - output.indexOf(y)).join("");
    const [ob, ol, or] = [byOutput(batch), byOutput(left), byOutput(right)];
    if (ob + ol + or === output) [batch, left, right] = [ob, ol, or];
    else if (ob + or + ol === output) {
      return describeStep([operands[1], operands[0]], b, a, keep, sizes, finalOutput, output);
    }
  }
  const result = batch + left + right;
  const flops = size(a + right) * (contract.length > 0 ? 2 : 1);
  return { operands, spec: `${a},${b}->${result}`, flops, a, b, batch, contract, left, right, result };
}

/** Turns an order into steps with index groups, following the letters of each intermediate. */
function describeOrder(
  order: Order,
  letters: readonly string[],
  output: string,
  sizes: Map<string, number>,
): { steps: PairStep[]; finalLetters: string } {
  const list = [...letters];
  const steps: PairStep[] = [];
  order.forEach(([i, j], k) => {
    const keep = new Set(output);
    list.forEach((l, m) => {
      if (m !== i && m !== j) { for (const c of l) keep.add(c); }
    });
    const last = k === order.length - 1;
    const step = describeStep([i, j], list[i], list[j], keep, sizes, output, last ? output : null);
    steps.push(step);
    list.splice(Math.max(i, j), 1);
    list.splice(Math.min(i, j), 1);
    list.push(step.result);
  });
  return { steps, finalLetters: list[0] };
}

// --- Plans ---------------------------------------------------------------------------------------------

const planCache = new Map<string, EinsumPlan>();
const PLAN_CACHE_SIZE = 256;

/** The plan for `spec` with operands of `shapes` (validated; cached). */
export function planEinsum(spec: string, shapes: ReadonlyArray<readonly number[]>): EinsumPlan {
  const key = `${spec}|${shapes.map((s) => (Array.isArray(s) ? s.join("x") : String(s))).join(",")}`;
  const cached = planCache.get(key);
  if (cached) {
    // Refresh its place in the least-recently-used order.
    planCache.delete(key);
    planCache.set(key, cached);
    return cached;
  }
  const plan = buildPlan(spec, shapes);
  planCache.set(key, plan);
  if (planCache.size > PLAN_CACHE_SIZE) planCache.delete(planCache.keys().next().value!);
  return plan;
}

/** Internal (benchmarks): forgets every cached plan. */
export function clearPlanCache(): void {
  planCache.clear();
}

function buildPlan(spec: string, shapes: ReadonlyArray<readonly number[]>): EinsumPlan {
  const { inputs, output } = parseSpec(spec);
  const sizes = indexSizes(spec, inputs, shapes);
  const prep = prepareOperands(inputs, shapes, output, sizes);
  const letters = prep.map((p) => p.letters);

  let order: Order = [];
  if (letters.length > 1) {
    const sets = new IndexSets(sizes);
    const masks = letters.map((l) => sets.mask(l));
    const out = sets.mask(output);
    const cap = Math.max(sets.size(out[0], out[1]), ...masks.map(([lo, hi]) => sets.size(lo, hi)));
    order = letters.length <= OPTIMAL_MAX_OPERANDS
      ? optimalOrder(sets, masks, out, cap) ?? optimalOrder(sets, masks, out, Infinity)!
      : greedyOrder(sets, masks, out);
  }
  const { steps, finalLetters } = describeOrder(order, letters, output, sizes);

  const all = [...sizes.values()];
  const summedAnywhere = [...sizes.keys()].some((c) => !output.includes(c));
  const naiveFlops = sizeOf(all) * (Math.max(1, inputs.length - 1) + (summedAnywhere ? 1 : 0));
  const prepFlops = prep.reduce(
    (n, p) => n + (p.sumAxes.length > 0 ? sizeOf([...p.viewLetters].map((c) => sizes.get(c)!)) : 0),
    0,
  );
  const totalFlops = steps.reduce((n, s) => n + s.flops, prepFlops);
  return { spec, output, sizes, prep, steps, finalLetters, totalFlops, naiveFlops };
}

/**
 * The contraction order `einsum` would use for operands of these shapes, without computing anything:
 * the pairwise steps (positions in the shrinking operand list, the step as an einsum, its FLOPs), their
 * total and the cost of the naive loop over all indices.
 *
 * @example
 * ```ts
 * const plan = einsumPath("ij,jk,kl->il", [20, 30], [30, 40], [40, 5]);
 * // plan.steps[0].spec === "jk,kl->jl": contracting the last two first is cheaper.
 * ```
 */
export function einsumPath(spec: string, ...shapes: number[][]): ContractionPlan {
  const plan = planEinsum(spec, shapes);
  return {
    steps: plan.steps.map((s) => ({
      operands: [s.operands[0], s.operands[1]],
      spec: s.spec,
      flops: s.flops,
    })),
    totalFlops: plan.totalFlops,
    naiveFlops: plan.naiveFlops,
  };
}
