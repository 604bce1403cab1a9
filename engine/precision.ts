/**
 * Numeric precision of inference: `"f32"` (default) or `"f16"`, where weights and activations are stored as
 * f16 (half the memory and memory traffic) and every kernel still computes and accumulates in f32 (see
 * kernels/half.ts). f16 needs the adapter feature `shader-f16`; training stays f32.
 *
 * @module
 */

import { type DeviceInfo, deviceInfo } from "./device.ts";

/** Storage precision of weights and activations. */
export type Precision = "f32" | "f16";

/** The precisions {@linkcode parsePrecision} accepts. */
export const PRECISIONS: readonly Precision[] = ["f32", "f16"];

let floatDType: "float32" | "float16" = "float32";

/** The element type new float tensors get: float16 inside `withPrecision("f16", …)`, else float32. */
export function currentFloatDType(): "float32" | "float16" {
  return floatDType;
}

/** `value` as a {@linkcode Precision}; a clear error naming the accepted values otherwise. */
export function parsePrecision(value: string): Precision {
  if ((PRECISIONS as readonly string[]).includes(value)) return value as Precision;
  throw new Error(`precision must be one of ${PRECISIONS.join(", ")}; got "${value}".`);
}

/**
 * Why `precision` cannot run on the device described by `info` (default: the current device), or null
 * when it can. f16 needs the `shader-f16` feature, which the device is created with whenever the adapter
 * has it (engine/device.ts).
 */
export function precisionProblem(precision: Precision, info: DeviceInfo = deviceInfo()): string | null {
  if (precision === "f32" || info.features.includes("shader-f16")) return null;
  return `precision f16 needs the WebGPU feature "shader-f16", which the adapter "${info.adapter}" does not ` +
    `offer (its features: ${info.features.join(", ") || "none"}). Use precision f32 on this adapter.`;
}

/** Throws {@linkcode precisionProblem}'s message when `precision` cannot run on the current device. */
export function checkPrecision(precision: Precision, info?: DeviceInfo): void {
  const problem = precisionProblem(precision, info);
  if (problem) throw new Error(problem);
}

/**
 * Runs `fn` (synchronous: ops record GPU work without waiting) with new float tensors stored in
 * `precision`: ops called inside `withPrecision("f16", …)` write f16 outputs. Inputs of either type are
 * accepted by every op at any time; this only decides what outputs are stored as. Nests; restores the
 * previous precision when `fn` returns or throws.
 */
export function withPrecision<T>(precision: Precision, fn: () => T): T {
  checkPrecision(precision);
  const previous = floatDType;
  floatDType = precision === "f16" ? "float16" : "float32";
  try {
    return fn();
  } finally {
    floatDType = previous;
  }
}
