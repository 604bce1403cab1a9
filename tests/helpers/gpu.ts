/**
 * Test harness for GPU tests: acquires the device once, converts between engine tensors and float64
 * reference tensors, and checks that a test leaves no tensors behind.
 *
 * @module
 */

import { memory, ready, type Tensor, tensor } from "../../mod.ts";
import type { RefTensor } from "../../engine/reference/mod.ts";

/** A Deno test that runs with the GPU device ready and fails if it leaks tensors. */
export function gpuTest(name: string, fn: () => Promise<void> | void): void {
  Deno.test({
    name,
    // WebGPU keeps device-level resources and promises alive across tests by design.
    sanitizeResources: false,
    sanitizeOps: false,
    async fn() {
      await ready();
      const before = memory().liveTensors;
      await fn();
      const after = memory().liveTensors;
      if (after !== before) throw new Error(`${name}: leaked ${after - before} tensors`);
    },
  });
}

/** An engine tensor holding the (f32-rounded) values of a reference tensor. */
export function fromRef(r: RefTensor, opts: { requiresGrad?: boolean } = {}): Tensor {
  return tensor(Float32Array.from(r.data), r.shape, opts);
}

/** The values of an engine tensor as a float64 reference tensor. */
export async function toRef(t: Tensor): Promise<RefTensor> {
  return { shape: [...t.shape], data: Float64Array.from(await t.toArray()) };
}

/** Disposes every tensor in the arguments. */
export function disposeAll(...ts: Array<Tensor | Tensor[] | undefined | null>): void {
  for (const t of ts.flat()) t?.dispose();
}
