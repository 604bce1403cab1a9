/**
 * Kernel programs: every WGSL generator is declared with {@linkcode defineKernel}, which derives the kernel's
 * cache key from the family name and the very arguments the generator receives, and generates each distinct
 * kernel once.
 *
 * A generator is a pure function of its arguments: whatever is baked into the WGSL (shapes, tilings, the
 * expression of a map, a variant's flags) must be an argument, so it is in the key by construction, and two
 * generators that bake different values can never share a compiled pipeline. Values that change per dispatch
 * go into the uniform block instead (see `uniforms.ts`). The engine's runtime compiles one pipeline per key
 * and refuses two different WGSL sources under one key.
 *
 * Key format: `family:hint`, where `family` is two `:`-free fields (`"conv3d:chunk"`, `"map:add"`; the
 * profiler groups dispatches by it) and `hint` is the canonical JSON of the arguments (object keys sorted),
 * absent for a generator without arguments.
 *
 * @module
 */

import type { BindingAccess, Kernel } from "./types.ts";

/** What a generator returns: the WGSL and the access of its storage bindings 1..n. */
export interface KernelSource {
  /** WGSL source. */
  readonly code: string;
  /** Access of storage bindings 1..n. */
  readonly bindings: readonly BindingAccess[];
}

const FAMILY = /^[^:]+:[^:]+$/;

/** JSON of `value` with object keys in sorted order, so equal arguments always give equal text. */
function canonical(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.keys(value).sort()
      .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonical((value as Record<string, unknown>)[k])}`);
    return `{${entries.join(",")}}`;
  }
  if (
    typeof value === "number" || typeof value === "string" || typeof value === "boolean" || value === null
  ) {
    return JSON.stringify(value);
  }
  throw new Error(
    `kernel arguments must be JSON data (numbers, strings, booleans, arrays, objects); got ${typeof value}.`,
  );
}

/**
 * The cache key of the kernel of `family` generated from `args`: `family` alone without arguments, else
 * `family:` followed by the canonical JSON of the arguments. Throws when `family` is not two `:`-free fields.
 */
export function kernelKey(family: string, args: readonly unknown[]): string {
  if (!FAMILY.test(family)) {
    throw new Error(
      `kernel family "${family}" must be two fields without ':' (e.g. "conv3d:chunk", "map:add").`,
    );
  }
  return args.length === 0 ? family : `${family}:${canonical(args)}`;
}

/** Every kernel generated so far, by key (WGSL generation is string work: it runs once per key). */
const generated = new Map<string, Kernel>();

/**
 * Declares a kernel generator. The returned function takes the generator's arguments and returns the kernel,
 * generated once per distinct arguments, keyed by {@linkcode kernelKey} of `family` (a string, or a function
 * of the same arguments, e.g. `map:${name}`) and the arguments. `generate` must depend on its arguments only.
 *
 * @example
 * ```ts
 * const fillKernel = defineKernel("demo:fill", (value: number) => ({
 *   code: `@group(0) @binding(1) var<storage, read_write> out: array<f32>; ...${value}...`,
 *   bindings: ["write"],
 * }));
 * fillKernel(2).key; // 'demo:fill:[2]'
 * ```
 */
export function defineKernel<A extends readonly unknown[]>(
  family: string | ((...args: A) => string),
  generate: (...args: A) => KernelSource,
): (...args: A) => Kernel {
  return (...args: A): Kernel => {
    const name = typeof family === "string" ? family : family(...args);
    const key = kernelKey(name, args);
    let kernel = generated.get(key);
    if (!kernel) {
      const { code, bindings } = generate(...args);
      kernel = { key, family: name, code, bindings };
      generated.set(key, kernel);
    }
    return kernel;
  };
}
