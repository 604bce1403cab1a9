/**
 * The safetensors format (https://github.com/huggingface/safetensors) in memory: an 8-byte little-endian
 * header length, a JSON header `{ name: { dtype, shape, data_offsets: [begin, end] }, "__metadata__"?:
 * { string: string } }`, then the raw little-endian tensor bytes. Decoding validates everything it reads
 * (header length, JSON, dtypes, shapes against byte ranges, ranges inside the file, no overlaps) and says
 * what was wrong. Works wherever WebGPU does: file reading and writing are in io/safetensors.ts.
 *
 * @module
 */

import { tensor } from "../engine/ops/create.ts";
import type { Tensor } from "../engine/tensor.ts";

/** Element types found in safetensors files that voxgen reads. */
export type SafetensorsDType = "F32" | "F16" | "BF16" | "F64" | "I32" | "I64" | "I16" | "I8" | "U8" | "BOOL";

const BYTES: Record<SafetensorsDType, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
};

/** One tensor decoded from a safetensors file, on the CPU. */
export interface RawTensor {
  /** Data type as stored in the file. */
  dtype: SafetensorsDType;
  /** Shape. */
  shape: number[];
  /** Values: float types decode to Float32Array, integer and bool types to Int32Array. */
  data: Float32Array | Int32Array;
}

/** A decoded safetensors file. */
export interface SafetensorsFile {
  /** Tensors by name, in file order. */
  tensors: Map<string, RawTensor>;
  /** The optional `__metadata__` string map. */
  metadata: Record<string, string>;
}

const MAX_HEADER = 100 * 1024 * 1024;

function fail(source: string, message: string): never {
  throw new Error(`safetensors ${source}: ${message}`);
}

/** Converts IEEE half-precision bits to a float. */
function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/**
 * Decodes `count` little-endian elements of `dtype` from `bytes`: float types to a Float32Array, integer and
 * bool types to an Int32Array (int64 outside the int32 range is an error naming `name` and `source`).
 */
export function decodeTensorData(
  dtype: SafetensorsDType,
  bytes: Uint8Array,
  count: number,
  name: string,
  source: string,
): Float32Array | Int32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  switch (dtype) {
    case "F32": {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = view.getFloat32(4 * i, true);
      return out;
    }
    case "F64": {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = view.getFloat64(8 * i, true);
      return out;
    }
    case "F16": {
      const out = new Float32Array(count);
      for (let i = 0; i < count; i++) out[i] = halfToFloat(view.getUint16(2 * i, true));
      return out;
    }
    case "BF16": {
      // bfloat16 is the top half of a float32.
      const out = new Float32Array(count);
      const bits = new Uint32Array(out.buffer);
      for (let i = 0; i < count; i++) bits[i] = view.getUint16(2 * i, true) << 16;
      return out;
    }
    case "I64": {
      const out = new Int32Array(count);
      for (let i = 0; i < count; i++) {
        const v = view.getBigInt64(8 * i, true);
        if (v > 2147483647n || v < -2147483648n) {
          fail(source, `tensor "${name}" (I64) holds ${v}, outside the int32 range voxgen supports.`);
        }
        out[i] = Number(v);
      }
      return out;
    }
    case "I32": {
      const out = new Int32Array(count);
      for (let i = 0; i < count; i++) out[i] = view.getInt32(4 * i, true);
      return out;
    }
    case "I16": {
      const out = new Int32Array(count);
      for (let i = 0; i < count; i++) out[i] = view.getInt16(2 * i, true);
      return out;
    }
    case "I8":
      return Int32Array.from(new Int8Array(bytes.buffer, bytes.byteOffset, count));
    case "U8":
    case "BOOL":
      return Int32Array.from(bytes.subarray(0, count));
  }
}

/** Decodes a safetensors file from bytes, validating its structure. `source` names it in errors. */
export function parseSafetensors(bytes: Uint8Array, source = "<bytes>"): SafetensorsFile {
  if (bytes.byteLength < 8) {
    fail(source, `file is ${bytes.byteLength} bytes, too short for the 8-byte header length.`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > MAX_HEADER) {
    fail(source, `header length ${headerLen} exceeds the ${MAX_HEADER}-byte limit (corrupt file?).`);
  }
  if (8 + headerLen > bytes.byteLength) {
    fail(
      source,
      `header of ${headerLen} bytes runs past the end of the ${bytes.byteLength}-byte file (truncated?).`,
    );
  }
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes.subarray(8, 8 + headerLen)));
  } catch (error) {
    fail(source, `header is not valid UTF-8 JSON: ${(error as Error).message}`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    fail(source, "header must be a JSON object mapping tensor names to {dtype, shape, data_offsets}.");
  }
  const data = bytes.subarray(8 + headerLen);
  const tensors = new Map<string, RawTensor>();
  let metadata: Record<string, string> = {};
  const ranges: Array<[number, number, string]> = [];
  for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (
        typeof entry !== "object" || entry === null || Object.values(entry).some((v) => typeof v !== "string")
      ) {
        fail(source, "__metadata__ must be an object of strings.");
      }
      metadata = entry as Record<string, string>;
      continue;
    }
    const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e !== "object" || e === null) fail(source, `entry "${name}" is not an object.`);
    const dtype = e.dtype as SafetensorsDType;
    if (typeof dtype !== "string" || !(dtype in BYTES)) {
      fail(
        source,
        `tensor "${name}" has dtype ${JSON.stringify(e.dtype)}; supported: ${Object.keys(BYTES).join(", ")}.`,
      );
    }
    const shape = e.shape;
    if (!Array.isArray(shape) || shape.some((d) => !Number.isInteger(d) || d < 0)) {
      fail(
        source,
        `tensor "${name}" has shape ${JSON.stringify(shape)}; expected a list of non-negative integers.`,
      );
    }
    const offsets = e.data_offsets;
    if (
      !Array.isArray(offsets) || offsets.length !== 2 || offsets.some((o) => !Number.isInteger(o) || o < 0) ||
      offsets[0] > offsets[1]
    ) {
      fail(
        source,
        `tensor "${name}" has data_offsets ${
          JSON.stringify(offsets)
        }; expected [begin, end] with begin ≤ end.`,
      );
    }
    const [begin, end] = offsets as [number, number];
    if (end > data.byteLength) {
      fail(
        source,
        `tensor "${name}" spans bytes ${begin}..${end} but the data section has ${data.byteLength} bytes (truncated?).`,
      );
    }
    const count = (shape as number[]).reduce((a, b) => a * b, 1);
    if (end - begin !== count * BYTES[dtype]) {
      fail(
        source,
        `tensor "${name}": shape ${JSON.stringify(shape)} of ${dtype} needs ${count * BYTES[dtype]} bytes, ` +
          `but data_offsets give ${end - begin}.`,
      );
    }
    ranges.push([begin, end, name]);
    tensors.set(name, {
      dtype,
      shape: shape as number[],
      data: decodeTensorData(dtype, data.subarray(begin, end), count, name, source),
    });
  }
  ranges.sort((a, b) => a[0] - b[0]);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i][0] < ranges[i - 1][1]) {
      fail(source, `tensors "${ranges[i - 1][2]}" and "${ranges[i][2]}" overlap.`);
    }
  }
  return { tensors, metadata };
}

/** Encodes CPU tensors (f32) as safetensors bytes. Names are written in sorted order. */
export function encodeSafetensors(
  tensors: Map<string, { shape: readonly number[]; data: Float32Array }>,
  metadata?: Record<string, string>,
): Uint8Array {
  const names = [...tensors.keys()].sort();
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== "string") {
        throw new Error(`saveSafetensors: metadata "${k}" must be a string, got ${typeof v}.`);
      }
    }
    header.__metadata__ = metadata;
  }
  let offset = 0;
  for (const name of names) {
    const t = tensors.get(name)!;
    const count = t.shape.reduce((a, b) => a * b, 1);
    if (count !== t.data.length) {
      throw new Error(
        `saveSafetensors: "${name}" has ${t.data.length} values for shape ${JSON.stringify(t.shape)}.`,
      );
    }
    header[name] = { dtype: "F32", shape: [...t.shape], data_offsets: [offset, offset + 4 * count] };
    offset += 4 * count;
  }
  let json = new TextEncoder().encode(JSON.stringify(header));
  // Pad the header with spaces so the data section starts 8-byte aligned, as the reference writer does.
  const padded = Math.ceil(json.byteLength / 8) * 8;
  if (padded !== json.byteLength) {
    const p = new Uint8Array(padded).fill(0x20);
    p.set(json);
    json = p;
  }
  const out = new Uint8Array(8 + json.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.byteLength), true);
  out.set(json, 8);
  let at = 8 + json.byteLength;
  for (const name of names) {
    const t = tensors.get(name)!;
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    // Little-endian hosts (all WebGPU platforms) can copy f32 bytes directly.
    out.set(bytes, at);
    at += bytes.byteLength;
  }
  return out;
}

/**
 * GPU tensors (f32; integer tensors are converted, exactly up to 2^24) and the metadata of safetensors
 * bytes. Call `await ready()` first. `source` names the data in errors.
 */
export function tensorsFromSafetensors(
  bytes: Uint8Array,
  source = "<bytes>",
): { tensors: Map<string, Tensor>; metadata: Record<string, string> } {
  const file = parseSafetensors(bytes, source);
  const tensors = new Map<string, Tensor>();
  for (const [name, raw] of file.tensors) {
    tensors.set(
      name,
      tensor(raw.data instanceof Float32Array ? raw.data : Float32Array.from(raw.data), raw.shape),
    );
  }
  return { tensors, metadata: file.metadata };
}

/** Encodes GPU tensors (a Map or a plain object) as safetensors bytes (f32), reading them back first. */
export async function safetensorsBytes(
  tensors: Map<string, Tensor> | Record<string, Tensor>,
  metadata?: Record<string, string>,
): Promise<Uint8Array> {
  const entries = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  // All readbacks in flight at once: each one alone waits ~12 ms for the GPU on lavapipe.
  const arrays = await Promise.all(entries.map(([, t]) => t.toArray()));
  const cpu = new Map<string, { shape: readonly number[]; data: Float32Array }>();
  entries.forEach(([name, t], i) => cpu.set(name, { shape: t.shape, data: arrays[i] }));
  return encodeSafetensors(cpu, metadata);
}
