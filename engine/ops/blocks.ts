/**
 * Running ops over blocks of rows when their tensors exceed one storage binding: a block of rows is copied
 * out (the copy binds windows of the large buffer, see `split.ts`), processed as a small tensor, and its
 * result copied back into place.
 *
 * @module
 */

import { maxBindingBytes, windowElements } from "../runtime.ts";
import { contiguousStrides } from "../shape.ts";
import { fromData, type Tensor } from "../tensor.ts";
import { copyInto, map } from "./map.ts";
import { view } from "./view.ts";

/** A contiguous copy of rows [first, first + rows) of the contiguous `t` seen as rows of `rowLen`. */
export function rowsOf(t: Tensor, first: number, rows: number, rowLen: number): Tensor {
  const v = view(t, [rows * rowLen], [1], t.offset + first * rowLen);
  const c = map("copy", "a", [v]);
  v.dispose();
  return c;
}

/** Copies the contiguous `src` into rows [first, …) of the contiguous `dst` seen as rows of `rowLen`. */
export function intoRows(dst: Tensor, src: Tensor, first: number, rowLen: number): void {
  const v = view(dst, [src.size], [1], dst.offset + first * rowLen);
  const flat = view(src, [src.size], [1], src.offset);
  copyInto(v, flat);
  flat.dispose();
  v.dispose();
}

/**
 * `run(src, rows)` on the contiguous `src` of `rows` rows of `inRow` elements, giving a contiguous result of
 * `rows` rows of `outRow` elements with shape `outShape`. When `src` or the result exceed one storage
 * binding, `run` sees copied blocks of rows and the result is assembled from theirs.
 */
export function byRows(
  src: Tensor,
  rows: number,
  inRow: number,
  outRow: number,
  outShape: readonly number[],
  run: (src: Tensor, rows: number) => Tensor,
): Tensor {
  const max = maxBindingBytes();
  if (src.storage("byRows").buffer.size <= max && rows * outRow * 4 <= max) {
    const whole = run(src, rows);
    const shaped = view(whole, outShape, contiguousStrides(outShape), whole.offset);
    whole.dispose();
    return shaped;
  }
  const perBlock = Math.floor(windowElements() / Math.max(inRow, outRow, 1));
  if (perBlock < 1) {
    throw new Error(
      `a single row of ${
        Math.max(inRow, outRow)
      } elements is larger than one storage binding (${max} bytes).`,
    );
  }
  const out = fromData(null, outShape);
  for (let r0 = 0; r0 < rows; r0 += perBlock) {
    const count = Math.min(perBlock, rows - r0);
    const part = rowsOf(src, r0, count, inRow);
    const result = run(part, count);
    intoRows(out, result, r0, outRow);
    part.dispose();
    result.dispose();
  }
  return out;
}
