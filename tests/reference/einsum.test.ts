import assert from "node:assert/strict";
import { einsum, einsumIndexSizes, parseEinsum } from "../../engine/reference/einsum.ts";
import { matmul } from "../../engine/reference/matmul.ts";
import { mul } from "../../engine/reference/elementwise.ts";
import { sum } from "../../engine/reference/reduce.ts";
import { broadcastTo, permute, reshape, transpose } from "../../engine/reference/shape.ts";
import { randnRef, randomRef } from "../../engine/reference/random.ts";
import { at, ref, type RefTensor } from "../../engine/reference/tensor.ts";
import { assertClose } from "../helpers/check.ts";

const TOL = { rtol: 1e-12, atol: 1e-13 };

Deno.test("einsum reproduces matmul, batched matmul, transpose, trace, outer, diagonal and sums", () => {
  const a = randomRef([3, 4], 1);
  const b = randomRef([4, 5], 2);
  assertClose(einsum("ij,jk->ik", a, b), matmul(a, b), TOL);
  assertClose(einsum("ij , jk -> ki", a, b), transpose(matmul(a, b)), TOL);
  const ba = randomRef([2, 3, 4], 3);
  const bb = randomRef([2, 4, 5], 4);
  assertClose(einsum("bij,bjk->bik", ba, bb), matmul(ba, bb), TOL);
  assertClose(einsum("ij->ji", a), transpose(a), { rtol: 0, atol: 0 });
  assertClose(einsum("abc->cab", ba), permute(ba, [2, 0, 1]), { rtol: 0, atol: 0 });
  const sq = randomRef([4, 4], 5);
  const tr = einsum("ii->", sq);
  assert.deepEqual(tr.shape, []);
  assertClose(tr.data, [at(sq, [0, 0]) + at(sq, [1, 1]) + at(sq, [2, 2]) + at(sq, [3, 3])], TOL);
  assert.deepEqual([...einsum("ii->i", sq).data], [0, 1, 2, 3].map((i) => at(sq, [i, i])));
  const u = ref([1, 2, 3]);
  const v = ref([10, 20]);
  assert.deepEqual([...einsum("i,j->ij", u, v).data], [10, 20, 20, 40, 30, 60]);
  assert.deepEqual(einsum("i,i->", u, u).data[0], 14);
  assertClose(einsum("ijk->j", ba), sum(ba, [0, 2]), TOL);
  assertClose(einsum("ijk->", ba), sum(ba), TOL);
  // a diagonal inside a contraction: Σ_i A_ii B_ij
  const a4 = randomRef([4, 5], 8);
  assertClose(einsum("ii,ij->j", sq, a4), matmul(einsum("ii->i", sq), a4), TOL);
  // a three-way repeated index: Σ_i T_iii
  const cube = randomRef([3, 3, 3], 6);
  assertClose(
    einsum("iii->", cube).data,
    [at(cube, [0, 0, 0]) + at(cube, [1, 1, 1]) + at(cube, [2, 2, 2])],
    TOL,
  );
  // Hadamard product of three operands
  const c = randomRef([3, 4], 7);
  assertClose(einsum("ij,ij,ij->ij", a, c, a), mul(mul(a, c), a), TOL);
  // scalar operands
  assert.deepEqual([...einsum(",i->i", ref([2], []), u).data], [2, 4, 6]);
});

Deno.test("einsum broadcasts size-1 indices across operands", () => {
  const a = randomRef([1, 4], 1); // i has size 1 here...
  const b = randomRef([3, 4], 2); // ...and 3 here
  const r = einsum("ij,ij->ij", a, b);
  assert.deepEqual(r.shape, [3, 4]);
  assertClose(r, mul(broadcastTo(a, [3, 4]), b), TOL);
  const s = einsum("ij,jk->ik", randomRef([2, 1], 3), randomRef([5, 3], 4)); // j: 1 vs 5
  assertClose(s, matmul(broadcastTo(randomRef([2, 1], 3), [2, 5]), randomRef([5, 3], 4)), TOL);
  assert.deepEqual(einsumIndexSizes("ij,jk->ik", [[2, 1], [5, 3]]), new Map([["i", 2], ["j", 5], ["k", 3]]));
});

Deno.test("einsum validates the spec and shapes with clear errors", () => {
  const a = randomRef([2, 3], 1);
  assert.throws(() => einsum("ij,jk", a, a), /einsum 'ij,jk': needs exactly one '->'/);
  assert.throws(() => einsum("ij->ii", a), /output index 'i' appears more than once/);
  assert.throws(() => einsum("ij->k", a), /output index 'k' does not appear/);
  assert.throws(() => einsum("...ij->ij", a), /ellipsis/);
  assert.throws(() => einsum("i1->i", a), /contain '1'/);
  assert.throws(() => einsum("ij,jk->ik", a), /2 operand subscripts but 1 operands/);
  assert.throws(
    () => einsum("ijk->i", a),
    /operand 0 has shape \[2, 3\] \(2 dims\) but subscripts 'ijk' name 3/,
  );
  assert.throws(
    () => einsum("ii->i", a),
    /index 'i' is repeated in operand 0 \('ii', shape \[2, 3\]\) with different sizes 2 and 3/,
  );
  assert.throws(
    () => einsum("ij,jk->ik", a, randomRef([4, 2], 2)),
    /einsum 'ij,jk->ik': index 'j' has size 3 in operand 0 but size 4 in operand 1/,
  );
  assert.deepEqual(parseEinsum("ab, bc -> ac"), { inputs: ["ab", "bc"], output: "ac" });
});

/**
 * An independent evaluation of an einsum without repeated indices: contract the operands pairwise, left
 * to right, each pair by permute + reshape + matmul (batch, free, summed axes), summing early any index
 * that no later operand or the output needs.
 */
function pairwiseEinsum(spec: string, ops: RefTensor[]): RefTensor {
  const [lhs, outLabels] = spec.split("->");
  const terms = lhs.split(",");
  const sumOut = (t: RefTensor, labels: string, keep: Set<string>): [RefTensor, string] => {
    const drop = [...labels].flatMap((c, k) => (keep.has(c) ? [] : [k]));
    return drop.length ? [sum(t, drop), [...labels].filter((c) => keep.has(c)).join("")] : [t, labels];
  };
  const later = (i: number) => new Set([...outLabels, ...terms.slice(i + 1).join("")]);
  let [acc, la] = sumOut(ops[0], terms[0], new Set([...later(0), ...terms[1]]));
  for (let i = 1; i < ops.length; i++) {
    const keep = later(i);
    let [b, lb] = sumOut(ops[i], terms[i], new Set([...keep, ...la]));
    [acc, la] = sumOut(acc, la, new Set([...keep, ...lb]));
    const batch = [...la].filter((c) => lb.includes(c) && keep.has(c));
    const contracted = [...la].filter((c) => lb.includes(c) && !keep.has(c));
    const freeA = [...la].filter((c) => !lb.includes(c));
    const freeB = [...lb].filter((c) => !la.includes(c));
    const size = (c: string) => (la.includes(c) ? acc.shape[la.indexOf(c)] : b.shape[lb.indexOf(c)]);
    const prod = (cs: string[]) => cs.reduce((p, c) => p * size(c), 1);
    const A = reshape(permute(acc, [...batch, ...freeA, ...contracted].map((c) => la.indexOf(c))), [
      prod(batch),
      prod(freeA),
      prod(contracted),
    ]);
    const B = reshape(permute(b, [...batch, ...contracted, ...freeB].map((c) => lb.indexOf(c))), [
      prod(batch),
      prod(contracted),
      prod(freeB),
    ]);
    const labels = [...batch, ...freeA, ...freeB];
    acc = reshape(matmul(A, B), labels.map(size));
    la = labels.join("");
    b = acc; // (silences "never reassigned" lint for b)
    lb = la;
  }
  return permute(acc, [...outLabels].map((c) => la.indexOf(c)));
}

function shapesFor(spec: string, size: (c: string) => number): number[][] {
  return spec.split("->")[0].split(",").map((t) => [...t].map(size));
}

const TENVOO = [
  "bade,cefg,xghi,yijk,zklm,Cmno,BopA,fdqh,lrpn,jqr->abcxyzABC",
  "bade,cefg,xghi,yijk,zjlm,Cmop,BpqA,oqrs,dftr,hlst->abcxyzABC",
];

Deno.test("TenVOO contractions (r = 2, factor sizes 2): shape and agreement with pairwise evaluation", () => {
  TENVOO.forEach((spec, s) => {
    const shapes = shapesFor(spec, () => 2);
    const ops = shapes.map((sh, i) => randnRef(sh, 100 * s + i));
    const out = einsum(spec, ...ops);
    assert.deepEqual(out.shape, [2, 2, 2, 2, 2, 2, 2, 2, 2]);
    assertClose(out, pairwiseEinsum(spec, ops), { rtol: 1e-10, atol: 1e-10, name: spec });
  });
});

Deno.test("pairwise cross-check with unequal index sizes (catches axis mix-ups)", () => {
  const spec = "bade,cefg,fdh->abcgh";
  const sizes: Record<string, number> = { a: 2, b: 3, c: 1, d: 4, e: 2, f: 3, g: 2, h: 5 };
  const ops = shapesFor(spec, (c) => sizes[c]).map((sh, i) => randnRef(sh, 7 + i));
  const out = einsum(spec, ...ops);
  assert.deepEqual(out.shape, [2, 3, 1, 2, 5]);
  assertClose(out, pairwiseEinsum(spec, ops), { rtol: 1e-12, atol: 1e-12 });
});
