/**
 * The runner behind every element-wise op: broadcasts inputs, coalesces dimensions, and dispatches the
 * strided map kernel. Also `contiguous` and the internal `copyInto` used by concat, pad and slice backward.
 *
 * @module
 */

import {
  MAP_SCALARS,
  mapKernel,
  mapUniforms,
  mapVec4Kernel,
  mapVec4Uniforms,
} from "../../kernels/elementwise.ts";
import type { Kernel } from "../../kernels/types.ts";
import { WG } from "../../kernels/types.ts";
import { dispatch, windowElements } from "../runtime.ts";
import { broadcastShapes, broadcastStrides, coalesce, formatShape, sizeOf } from "../shape.ts";
import { fromData, Tensor } from "../tensor.ts";
import { bindPiece, splitStrided } from "./split.ts";

/** The strided map kernel of `rank` dimensions, or (rank 0) the contiguous vec4 one. */
function kernelFor(name: string, expr: string, arity: number, rank: number): Kernel {
  return rank === 0 ? mapVec4Kernel(name, expr, arity) : mapKernel(name, expr, arity, rank);
}

/** Knobs of the map kernels, for benchmarks. */
export const mapSettings: {
  /** Use the vec4 kernel for contiguous, vec4-aligned operands (default true). */
  vec4: boolean;
} = { vec4: true };

/** Largest element index a map kernel can address (u32 arithmetic). */
const MAX_ELEMENTS = 2 ** 32 - 1;

/**
 * Writes `expr(inputs…, scalars…)` into `out`, which may be a strided view. Inputs broadcast to
 * `out.shape`. `name` labels the kernel (its family is `map:name`); kernels are cached by name and `expr`.
 */
export function mapInto(
  out: Tensor,
  name: string,
  expr: string,
  inputs: readonly Tensor[],
  scalars: readonly number[] = [],
): void {
  const n = out.size;
  if (n === 0) return;
  if (n > MAX_ELEMENTS) throw new Error(`${name}: ${n} elements exceed the 2^32 addressable by one kernel.`);
  if (scalars.length > MAP_SCALARS) throw new Error(`${name}: at most ${MAP_SCALARS} scalars`);
  const strides = [
    [...out.strides],
    ...inputs.map((t) => broadcastStrides(t.shape, t.strides, out.shape)),
  ];
  const c = coalesce(out.shape, strides);
  const rank = c.shape.length;
  const allScalars = Array.from({ length: MAP_SCALARS }, (_, i) => scalars[i] ?? 0);
  const arity = inputs.length;
  const buffers = [out.storage(name).buffer, ...inputs.map((t) => t.storage(name).buffer)];
  const offsets = [out.offset, ...inputs.map((t) => t.offset)];
  // Contiguous operands in whole vec4s: the vec4 kernel, in windows of whole vec4s when large. Not for
  // expressions of the element index `i` (arange): the vec4 kernel's index counts vec4s.
  if (
    mapSettings.vec4 && rank === 1 && c.strides.every((s) => s[0] === 1) && n % 4 === 0 &&
    offsets.every((o) => o % 4 === 0) && !/\bi\b/.test(expr)
  ) {
    const kernel = kernelFor(name, expr, arity, 0);
    const layout = mapVec4Uniforms(arity);
    const per = Math.floor(windowElements() / 4) * 4;
    for (let first = 0; first < n; first += per) {
      const count = Math.min(per, n - first);
      const bound = bindPiece(buffers, [count], c.strides, offsets.map((o) => o + first));
      const [outOffset4, ...inOffsets4] = bound.offsets.map((o) => o / 4);
      const params = layout.pack({ vec4s: count / 4, outOffset4, inOffsets4, scalars: allScalars });
      const [outBinding, ...inBindings] = bound.bindings;
      dispatch(kernel, params, [...inBindings, outBinding], Math.ceil(count / 4 / WG));
    }
    return;
  }
  const kernel = kernelFor(name, expr, arity, rank);
  const layout = mapUniforms(arity, rank);
  // Tensors larger than one binding: pieces along the outer dimensions, each bound as windows.
  for (const piece of splitStrided(c.shape, c.strides, [out.offset, ...inputs.map((t) => t.offset)])) {
    const bound = bindPiece(buffers, piece.shape, c.strides, piece.offsets);
    const [outOffset, ...inOffsets] = bound.offsets;
    const count = sizeOf(piece.shape);
    const params = layout.pack({
      n: count,
      outOffset,
      inOffsets,
      shape: piece.shape,
      outStrides: c.strides[0],
      inStrides: c.strides.slice(1).flat(),
      scalars: allScalars,
      first: piece.first,
    });
    const [outBinding, ...inBindings] = bound.bindings;
    dispatch(kernel, params, [...inBindings, outBinding], Math.ceil(count / WG));
  }
}

/** A new contiguous tensor `expr(inputs…)` with the broadcast shape of the inputs (or `shape`). */
export function map(
  name: string,
  expr: string,
  inputs: readonly Tensor[],
  scalars: readonly number[] = [],
  shape?: readonly number[],
): Tensor {
  for (const t of inputs) t.storage(name);
  const outShape = shape ?? broadcastShapes(name, ...inputs.map((t) => t.shape));
  const out = fromData(null, outShape);
  mapInto(out, name, expr, inputs, scalars);
  return out;
}

/** A contiguous copy of `x` (or a new handle sharing its storage when it already is contiguous). */
export function contiguous(x: Tensor): Tensor {
  if (x.isContiguous) {
    const storage = x.storage("contiguous");
    storage.retain();
    return new Tensor({ shape: x.shape, storage, offset: x.offset, dtype: x.dtype });
  }
  return map("copy", "a", [x]);
}

/** Copies `src` into the view `dst` (shapes must match, `src` may broadcast). */
export function copyInto(dst: Tensor, src: Tensor): void {
  if (sizeOf(src.shape) !== 0 && src.shape.length > dst.shape.length) {
    throw new Error(`copyInto: ${formatShape(src.shape)} does not fit ${formatShape(dst.shape)}`);
  }
  mapInto(dst, "copy", "a", [src]);
}
