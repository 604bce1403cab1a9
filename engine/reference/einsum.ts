/**
 * `einsum` by brute force: for every output element, a loop over every combination of the summed indices'
 * values, multiplying one element of each operand and adding the products. Slow (the cost is the product of all index sizes)
 * but with no contraction-order logic to get wrong, which makes it the ground truth for the GPU einsum
 * and for the TenVOO tensor-network contractions.
 *
 * Supported: an explicit `->` output (required), any number of operands, letters a-z and A-Z as indices,
 * whitespace ignored, repeated indices within an operand (a diagonal: those axes must have equal sizes),
 * indices absent from the output are summed, and size-1 broadcasting of an index across operands (size 1 in
 * one operand and n in another acts as n, as in PyTorch). Not supported: `...` ellipsis, implicit output.
 *
 * @module
 */

import { checkTensor, formatShape, type RefTensor, sizeOf, strideOffsets, stridesOf } from "./tensor.ts";

/** A parsed einsum specification. */
export interface EinsumSpec {
  /** Index letters of each operand, in axis order. */
  inputs: string[];
  /** Index letters of the output, in axis order. */
  output: string;
}

/** Parses and validates the syntax of an einsum spec such as `"ij,jk->ik"` (whitespace ignored). */
export function parseEinsum(spec: string): EinsumSpec {
  const s = spec.replace(/\s+/g, "");
  const fail = (msg: string): never => {
    throw new Error(`einsum '${spec}': ${msg}`);
  };
  if (s.includes(".")) fail("ellipsis '...' is not supported");
  const parts = s.split("->");
  if (parts.length !== 2) {
    fail("needs exactly one '->' followed by the output indices (implicit output is not supported)");
  }
  const [lhs, output] = parts;
  const inputs = lhs.split(",");
  inputs.forEach((term, i) => {
    const bad = term.match(/[^a-zA-Z]/);
    if (bad) fail(`operand ${i} subscripts '${term}' contain '${bad[0]}'; only letters a-z, A-Z are allowed`);
  });
  const badOut = output.match(/[^a-zA-Z]/);
  if (badOut) fail(`output subscripts '${output}' contain '${badOut[0]}'; only letters a-z, A-Z are allowed`);
  const seen = new Set<string>();
  for (const c of output) {
    if (seen.has(c)) fail(`output index '${c}' appears more than once`);
    seen.add(c);
    if (!inputs.some((t) => t.includes(c))) fail(`output index '${c}' does not appear in any operand`);
  }
  return { inputs, output };
}

/**
 * Sizes of every index of `spec` for these operand shapes, after validation: rank of each operand vs its
 * subscripts, equal sizes for a repeated index within one operand, and sizes across operands equal or 1.
 */
export function einsumIndexSizes(
  spec: string,
  shapes: ReadonlyArray<readonly number[]>,
): Map<string, number> {
  const { inputs } = parseEinsum(spec);
  const fail = (msg: string): never => {
    throw new Error(`einsum '${spec}': ${msg}`);
  };
  if (shapes.length !== inputs.length) {
    fail(`has ${inputs.length} operand subscripts but ${shapes.length} operands were given`);
  }
  const sizes = new Map<string, { size: number; where: number }>();
  inputs.forEach((term, i) => {
    const shape = shapes[i];
    if (shape.length !== term.length) {
      fail(
        `operand ${i} has shape ${
          formatShape(shape)
        } (${shape.length} dims) but subscripts '${term}' name ${term.length}`,
      );
    }
    const local = new Map<string, number>();
    [...term].forEach((c, k) => {
      const d = shape[k];
      const prev = local.get(c);
      if (prev !== undefined && prev !== d) {
        fail(
          `index '${c}' is repeated in operand ${i} ('${term}', shape ${
            formatShape(shape)
          }) with different sizes ${prev} and ${d}`,
        );
      }
      local.set(c, d);
    });
    for (const [c, d] of local) {
      const g = sizes.get(c);
      if (g === undefined || g.size === 1) sizes.set(c, { size: d, where: i });
      else if (d !== g.size && d !== 1) {
        fail(
          `index '${c}' has size ${g.size} in operand ${g.where} but size ${d} in operand ${i} (sizes must match or be 1)`,
        );
      }
    }
  });
  return new Map([...sizes].map(([c, v]) => [c, v.size]));
}

/**
 * Evaluates an einsum by looping over all index values (cost: the product of all index sizes times the
 * number of operands; the TenVOO contractions with 24 indices of size 2 take about half a second). `spec` must have an explicit output, e.g.
 * `einsum("bij,bjk->bik", a, b)`; see the module documentation for what is supported.
 */
export function einsum(spec: string, ...operands: RefTensor[]): RefTensor {
  operands.forEach((t, i) => checkTensor(t, `einsum '${spec}': operand ${i}`));
  const { inputs, output } = parseEinsum(spec);
  const sizes = einsumIndexSizes(spec, operands.map((t) => t.shape));
  // Output indices first, then the summed ones (in order of first appearance).
  const letters = [...output, ...[...sizes.keys()].filter((c) => !output.includes(c))];
  const L = letters.length;
  const size = letters.map((c) => sizes.get(c)!);
  const outShape = [...output].map((c) => sizes.get(c)!);
  const nOps = operands.length;
  const datas = operands.map((t) => t.data);
  // For each operand, its offset is Σ over indices of (index value × stride), where a repeated index adds
  // the strides of all its axes (diagonal) and a size-1 axis of a broadcast index contributes 0. Split the
  // sum into the output indices' part and the summed indices' part, each tabulated by strideOffsets.
  const nOut = output.length;
  const outSizes = size.slice(0, nOut);
  const sumSizes = size.slice(nOut);
  const outPart: Int32Array[] = [];
  const sumPart: Int32Array[] = [];
  operands.forEach((t, op) => {
    const st = stridesOf(t.shape);
    const stride = new Array<number>(L).fill(0);
    [...inputs[op]].forEach((c, k) => {
      if (t.shape[k] !== 1) stride[letters.indexOf(c)] += st[k];
    });
    outPart.push(strideOffsets(outSizes, stride.slice(0, nOut)));
    sumPart.push(strideOffsets(sumSizes, stride.slice(nOut)));
  });
  const out = new Float64Array(sizeOf(outShape));
  const nSum = sizeOf(sumSizes);
  const base = new Int32Array(nOps);
  for (let o = 0; o < out.length; o++) {
    for (let op = 0; op < nOps; op++) base[op] = outPart[op][o];
    let acc = 0;
    for (let s = 0; s < nSum; s++) {
      let p = 1;
      for (let op = 0; op < nOps; op++) p *= datas[op][base[op] + sumPart[op][s]];
      acc += p;
    }
    out[o] = acc;
  }
  return { shape: outShape, data: out };
}

/**
 * The same contraction evaluated one operand at a time in `order`, keeping only the indices still needed:
 * exact like {@linkcode einsum}, but its cost is that of the pairwise steps, so it reaches sizes (TenVOO at
 * r = 4) where the single loop over all indices would take hours.
 */
export function einsumInOrder(spec: string, xs: RefTensor[], order: number[]): RefTensor {
  const { inputs, output } = parseEinsum(spec);
  let letters = inputs[order[0]];
  let acc = xs[order[0]];
  for (let s = 1; s < order.length; s++) {
    const k = order[s];
    const later = order.slice(s + 1).map((j) => inputs[j]).join("") + output;
    const kept = [...new Set(letters + inputs[k])].filter((c) => later.includes(c)).join("");
    acc = einsum(`${letters},${inputs[k]}->${kept}`, acc, xs[k]);
    letters = kept;
  }
  return einsum(`${letters}->${output}`, acc);
}
