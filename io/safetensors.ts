/**
 * safetensors files on disk (Deno): loading into GPU tensors, reading the metadata alone, and atomic
 * writing. The format itself (parsing, validation, encoding) is io/safetensors_codec.ts, re-exported here.
 *
 * @module
 */

import type { Tensor } from "../engine/tensor.ts";
import { atomicWrite } from "./atomic.ts";
import { readBytes } from "./read.ts";
import { parseSafetensors, safetensorsBytes, tensorsFromSafetensors } from "./safetensors_codec.ts";

export * from "./safetensors_codec.ts";

/**
 * Loads a safetensors file (path, `file:`/`http(s):` URL, or bytes) into GPU tensors (f32; integer tensors
 * are converted, exactly up to 2^24). Call `await ready()` first.
 */
export async function loadSafetensors(pathOrBytes: string | URL | Uint8Array): Promise<Map<string, Tensor>> {
  return (await loadSafetensorsFile(pathOrBytes)).tensors;
}

/** Like {@linkcode loadSafetensors}, also returning the file's `__metadata__`. */
export async function loadSafetensorsFile(
  pathOrBytes: string | URL | Uint8Array,
): Promise<{ tensors: Map<string, Tensor>; metadata: Record<string, string> }> {
  if (pathOrBytes instanceof Uint8Array) return tensorsFromSafetensors(pathOrBytes);
  return tensorsFromSafetensors(await readBytes(pathOrBytes), String(pathOrBytes));
}

/** Reads only the `__metadata__` of a safetensors file (path or `file:`/`http(s):` URL). */
export async function readSafetensorsMetadata(path: string | URL): Promise<Record<string, string>> {
  return parseSafetensors(await readBytes(path), String(path)).metadata;
}

/** Writes tensors to a safetensors file atomically (f32). Accepts a Map or a plain object of tensors. */
export async function saveSafetensors(
  path: string,
  tensors: Map<string, Tensor> | Record<string, Tensor>,
  metadata?: Record<string, string>,
): Promise<void> {
  await atomicWrite(path, await safetensorsBytes(tensors, metadata));
}
