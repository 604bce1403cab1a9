/**
 * Conversions between float32 and float16 tensors: {@linkcode cast} (differentiable, a new tensor) and
 * {@linkcode castInPlace} (the tensor itself changes type, for converting a model's parameters). The copy
 * runs the map kernel with f16 storage on one side (kernels/half.ts): f32 → f16 rounds to nearest-even,
 * saturating to ±Infinity beyond ±65504 as IEEE does; f16 → f32 is exact.
 *
 * @module
 */

import { noGrad, record } from "../autograd.ts";
import { checkPrecision } from "../precision.ts";
import { fromData, Tensor } from "../tensor.ts";
import { contiguous, mapInto } from "./map.ts";

/** The float types {@linkcode cast} converts between. */
export type FloatDType = "float32" | "float16";

function checkTarget(op: string, x: Tensor, dtype: FloatDType): void {
  if (!(x instanceof Tensor)) throw new Error(`${op}: x must be a Tensor.`);
  x.storage(op);
  if (dtype !== "float32" && dtype !== "float16") {
    throw new Error(`${op}: dtype must be "float32" or "float16"; got ${JSON.stringify(dtype)}.`);
  }
  if (x.dtype === "int32") throw new Error(`${op}: x is int32; only float tensors convert.`);
  if (dtype === "float16" || x.dtype === "float16") checkPrecision("f16");
}

/** A dense copy of `x` converted to `dtype` (or a handle sharing `x`'s dense storage when it already is). */
function converted(x: Tensor, dtype: FloatDType): Tensor {
  if (x.dtype === dtype) return contiguous(x);
  const out = fromData(null, x.shape, { dtype });
  mapInto(out, "copy", "a", [x]);
  return out;
}

/**
 * `x` as `dtype` ("float32" or "float16"). Gradients flow back converted to `x`'s type. Needs the
 * `shader-f16` feature when either side is float16.
 */
export function cast(x: Tensor, dtype: FloatDType): Tensor {
  checkTarget("cast", x, dtype);
  const from = x.dtype as FloatDType;
  const y = converted(x, dtype);
  return record("cast", y, [x], (g) => [converted(g, from)]);
}

/**
 * Converts the dense leaf tensor `t` to `dtype` in place: the same Tensor object now holds `dtype` elements
 * (its old buffer is freed), so modules that hold it see the change. For converting parameters of a model
 * used for inference (`Module.toPrecision`); a tensor produced by an op cannot change type.
 */
export function castInPlace(t: Tensor, dtype: FloatDType): void {
  checkTarget("castInPlace", t, dtype);
  if (t.dtype === dtype) return;
  if (t.node) throw new Error(`castInPlace: ${t} is the result of an op; only leaf tensors change type.`);
  const dense = noGrad(() => converted(t, dtype));
  const storage = dense.storage("castInPlace");
  storage.retain();
  dense.dispose();
  t.replaceStorage(storage, dtype);
}
