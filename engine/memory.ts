/**
 * Scopes and memory accounting. `scope(fn)` frees every tensor created inside `fn` except those it
 * returns, so loops of hundreds of steps (diffusion sampling, training) run in constant memory.
 *
 * @module
 */

import { poolStats, trimPool } from "./pool.ts";
import { flush } from "./runtime.ts";
import { liveTensorCount, popScope, pushScope, scopeDepth, Tensor, untrack } from "./tensor.ts";

/** Live GPU memory as the engine sees it. */
export interface MemoryInfo {
  /** Tensors created and not yet disposed. */
  liveTensors: number;
  /** Bytes of GPU buffers held by live tensors and autograd records. */
  liveBytes: number;
  /** High-water mark of `liveBytes`. */
  peakBytes: number;
  /** Bytes of free buffers cached by the pool for reuse. */
  pooledBytes: number;
}

/** Current GPU memory use. */
export function memory(): MemoryInfo {
  const { liveBytes, peakBytes, pooledBytes } = poolStats();
  return { liveTensors: liveTensorCount(), liveBytes, peakBytes, pooledBytes };
}

/** Frees the pool's cached buffers (live tensors are untouched). */
export function releaseCachedMemory(): void {
  trimPool();
}

function collect(value: unknown, out: Set<Tensor>, depth = 0): void {
  if (depth > 8 || value === null || typeof value !== "object") return;
  if (value instanceof Tensor) {
    out.add(value);
    return;
  }
  if (value instanceof Map) {
    for (const v of value.values()) collect(v, out, depth + 1);
    return;
  }
  if (Array.isArray(value)) {
    for (const v of value) collect(v, out, depth + 1);
    return;
  }
  if (Object.getPrototypeOf(value) === Object.prototype) {
    for (const v of Object.values(value)) collect(v, out, depth + 1);
  }
}

/**
 * Runs `fn` and disposes every tensor created inside it that it does not return. Tensors in the result
 * (a tensor, or arrays, maps and plain objects of tensors) survive and belong to the enclosing scope.
 * `fn` must be synchronous: tensors created after an `await` could not be attributed to this scope.
 * Leaving an outermost scope submits the recorded GPU work.
 *
 * @example
 * ```ts
 * const y = scope(() => relu(add(matmul(x, w), b))); // intermediates are freed
 * ```
 */
export function scope<T>(fn: () => T): T {
  pushScope();
  let result: T;
  try {
    result = fn();
  } catch (error) {
    popScope(new Set());
    throw error;
  }
  if (result instanceof Promise) {
    popScope(new Set());
    throw new Error(
      "scope(fn): fn returned a Promise. Scopes track tensors synchronously; do the async work " +
        "(e.g. toArray) outside the scope, or use keep() and dispose() by hand.",
    );
  }
  const kept = new Set<Tensor>();
  collect(result, kept);
  popScope(kept);
  // Submitting at the end of an outermost scope (one step of a loop) makes every step start a fresh
  // batch, so the buffers it frees are reusable by the next step and the pool reaches a fixed size.
  if (scopeDepth() === 0) flush();
  return result;
}

/** Excludes `t` from every enclosing scope, so it survives them; dispose it yourself. Returns `t`. */
export function keep<T extends Tensor>(t: T): T {
  untrack(t);
  return t;
}
