/**
 * A fingerprint of a model's parameters, stored in adapter files so that an adapter is only ever applied to
 * the base model it was trained on.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { noGrad } from "../engine/autograd.ts";
import { scope } from "../engine/memory.ts";
import { concat, reshape } from "../engine/ops/view.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { Module } from "../nn/module.ts";

/** Parameters read back per GPU→CPU transfer (each readback waits for the GPU: fewer, larger ones). */
const READBACK_ELEMENTS = 1 << 22;

/**
 * SHA-256 (hex) over the model's parameters in name order: for each, `name`, a NUL, the shape joined with
 * "x", a NUL, then the float32 values in little-endian byte order, after the tag `voxgen-base-hash/1\n`.
 * Values are read back from the GPU in a few large batches. Equal hashes mean bit-identical weights under
 * the same names and shapes.
 */
export async function parameterHash(named: ReadonlyArray<readonly [string, Tensor]>): Promise<string> {
  const sorted = [...named].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  const hash = createHash("sha256");
  hash.update("voxgen-base-hash/1\n");
  const encoder = new TextEncoder();
  for (let start = 0; start < sorted.length;) {
    let end = start;
    let elements = 0;
    while (end < sorted.length && (end === start || elements + sorted[end][1].size <= READBACK_ELEMENTS)) {
      elements += sorted[end][1].size;
      end++;
    }
    const batch = sorted.slice(start, end);
    const values = await readBatch(batch.map(([, t]) => t));
    let at = 0;
    for (const [name, t] of batch) {
      hash.update(encoder.encode(`${name}\0${t.shape.join("x")}\0`));
      const part = values.subarray(at, at + t.size);
      hash.update(new Uint8Array(part.buffer, part.byteOffset, part.byteLength));
      at += t.size;
    }
    start = end;
  }
  return hash.digest("hex");
}

/** The values of several tensors, concatenated (one readback). */
async function readBatch(tensors: Tensor[]): Promise<Float32Array> {
  if (tensors.length === 1) return await tensors[0].toArray();
  const flat = noGrad(() => scope(() => concat(tensors.map((t) => reshape(t, [t.size])), 0)));
  try {
    return await flat.toArray();
  } finally {
    flat.dispose();
  }
}

/** {@linkcode parameterHash} of every parameter of `model`. */
export async function modelHash(model: Module): Promise<string> {
  return await parameterHash(model.namedParameters());
}
