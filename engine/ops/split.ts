/**
 * Splitting work over tensors larger than one storage binding (`maxStorageBufferBindingSize`, 128 MiB on
 * lavapipe). A strided index space is cut along its outermost dimensions until every operand's element range
 * fits a binding; each piece is then dispatched with its operands bound as windows (`bindRange`).
 *
 * @module
 */

import { type Binding, bindRange, windowElements } from "../runtime.ts";

/** One piece of a strided index space: its shape and each operand's element offset. */
export interface StridedPiece {
  /** Extents of the piece (same rank as the whole). */
  shape: number[];
  /** Element offset of each operand's first element. */
  offsets: number[];
  /**
   * Row-major index of the piece's first element in the whole index space. Pieces are cut along the outermost
   * dimension longer than one, so each covers the consecutive indices [first, first + size).
   */
  first: number;
}

/** [lowest, highest] element index operand `k` touches over `shape`. */
function range(shape: readonly number[], strides: readonly number[], offset: number): [number, number] {
  let lo = offset;
  let hi = offset;
  shape.forEach((n, d) => {
    const step = (n - 1) * strides[d];
    if (step < 0) lo += step;
    else hi += step;
  });
  return [lo, hi];
}

/**
 * Cuts the index space `shape` (operand `k` at `offsets[k]` with `strides[k]`) into pieces in which every
 * operand spans at most `maxElements` elements, splitting the outermost dimension that is still longer than
 * one. The whole space comes back as one piece when it fits. Operands that span more than `maxElements`
 * even for a single index have no solution and throw.
 */
export function splitStrided(
  shape: readonly number[],
  strides: ReadonlyArray<readonly number[]>,
  offsets: readonly number[],
  maxElements = windowElements(),
): StridedPiece[] {
  const pieces: StridedPiece[] = [];
  // Row-major strides of the index space itself, for each piece's first index.
  const inner = shape.map((_, d) => shape.slice(d + 1).reduce((p, n) => p * n, 1));
  const visit = (sub: number[], offs: number[], first: number) => {
    const spans = offs.map((o, k) => {
      const [lo, hi] = range(sub, strides[k], o);
      return hi - lo + 1;
    });
    const worst = Math.max(...spans);
    if (worst <= maxElements) {
      pieces.push({ shape: sub, offsets: offs, first });
      return;
    }
    const d = sub.findIndex((n) => n > 1);
    if (d < 0) throw new Error(`splitStrided: one element spans ${worst} elements (> ${maxElements}).`);
    // Parts along d: enough for the span to fit, if the span scales with d's extent.
    const parts = Math.min(sub[d], Math.max(2, Math.ceil(worst / maxElements)));
    const len = Math.ceil(sub[d] / parts);
    for (let start = 0; start < sub[d]; start += len) {
      const part = [...sub];
      part[d] = Math.min(len, sub[d] - start);
      visit(part, offs.map((o, k) => o + start * strides[k][d]), first + start * inner[d]);
    }
  };
  visit([...shape], [...offsets], 0);
  return pieces;
}

/**
 * Binds operand buffers for one piece: each operand's window covering its range over `shape`, and its
 * element offset relative to that window.
 */
export function bindPiece(
  buffers: readonly GPUBuffer[],
  shape: readonly number[],
  strides: ReadonlyArray<readonly number[]>,
  offsets: readonly number[],
): { bindings: Binding[]; offsets: number[] } {
  const bindings: Binding[] = [];
  const relative: number[] = [];
  buffers.forEach((buffer, k) => {
    const [lo, hi] = range(shape, strides[k], offsets[k]);
    const { binding, shift } = bindRange(buffer, lo, hi + 1);
    bindings.push(binding);
    relative.push(offsets[k] - shift);
  });
  return { bindings, offsets: relative };
}
