/**
 * Reading PyTorch checkpoint files (`torch.save`) without Python and without running anything in them.
 *
 * Both formats are read: the zip archive of torch ≥ 1.6 (`<folder>/data.pkl` plus one file per storage in
 * `<folder>/data/`, where the folder is the saved file's stem or `archive`), and the older stream of pickles
 * (`_use_new_zipfile_serialization=False`: magic number, protocol, system info, the object, the storage keys,
 * then the raw storages). The object pickle is read by the restricted unpickler of `io/pickle.ts`, which
 * accepts only tensors, storages and plain containers (`collections.OrderedDict`,
 * `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter`, the `torch.*Storage` types) and
 * refuses every other global with an error naming it. Tensors may be any view into a storage (offset,
 * strides); they come back contiguous, in float32 (float16, bfloat16, float64) or int32 (integer and bool
 * types), like {@linkcode RawTensor}s read from safetensors.
 *
 * @module
 */

import { isZip, readZip } from "./zip.ts";
import { type PickleGlobal, unpickle } from "./pickle.ts";
import { decodeTensorData, type RawTensor, type SafetensorsDType } from "./safetensors_codec.ts";

/** A tensor read from a checkpoint (a {@linkcode RawTensor}: dtype as stored, shape, contiguous values). */
export class CheckpointTensor implements RawTensor {
  /** Data type as stored. */
  readonly dtype: SafetensorsDType;
  /** Shape. */
  readonly shape: number[];
  /** Values in row-major order: float32 for float types, int32 for integer and bool types. */
  readonly data: Float32Array | Int32Array;
  /** A tensor of `dtype` (as stored) with `shape` and contiguous `data`. */
  constructor(dtype: SafetensorsDType, shape: number[], data: Float32Array | Int32Array) {
    this.dtype = dtype;
    this.shape = shape;
    this.data = data;
  }
}

/** The element type of each storage class a checkpoint may name. */
const STORAGE_TYPES: Record<string, SafetensorsDType> = {
  FloatStorage: "F32",
  HalfStorage: "F16",
  BFloat16Storage: "BF16",
  DoubleStorage: "F64",
  LongStorage: "I64",
  IntStorage: "I32",
  ShortStorage: "I16",
  CharStorage: "I8",
  ByteStorage: "U8",
  BoolStorage: "BOOL",
};

const ELEMENT_BYTES: Record<SafetensorsDType, number> = {
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

/** The legacy format's first pickle: this number. */
const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;

/** A storage named by a persistent id; its bytes are found later (legacy files store them after the pickle). */
interface StorageRef {
  key: string;
  dtype: SafetensorsDType;
  /** Elements in the storage. */
  numel: number;
  /** Element offset of a legacy storage view into its root storage. */
  viewOffset: number;
  /** The decoded storage, once read. */
  values?: Float32Array | Int32Array;
}

/** A tensor found while unpickling, built once the storages are read. */
class PendingTensor {
  constructor(
    readonly storage: StorageRef,
    readonly offset: number,
    readonly shape: number[],
    readonly strides: number[],
  ) {}
}

/** Whether `bytes` look like a `torch.save` file (zip archive or legacy pickle stream). */
export function isTorchCheckpoint(bytes: Uint8Array): boolean {
  return isZip(bytes) || (bytes.byteLength > 2 && bytes[0] === 0x80 && bytes[1] <= 5);
}

/**
 * Reads a `torch.save` file's object. Tensors become {@linkcode CheckpointTensor}s, dicts `Map`s, lists
 * arrays, tuples frozen arrays. Throws on any global other than the accepted ones (without executing it),
 * and on malformed data, saying what was wrong. `source` names the file in errors.
 */
export async function readTorchCheckpoint(bytes: Uint8Array, source = "<bytes>"): Promise<unknown> {
  const fail = (message: string): never => {
    throw new Error(`torch checkpoint ${source}: ${message}`);
  };
  const storages = new Map<string, StorageRef>();
  const persistentLoad = (pid: unknown): StorageRef => {
    if (!Array.isArray(pid) || pid[0] !== "storage" || pid.length < 5) {
      fail(`unexpected persistent id ${describe(pid)}; only ('storage', type, key, location, size) is read.`);
    }
    const [, type, key, , numel, view] = pid as unknown[];
    const dtype = (type as { dtype?: SafetensorsDType })?.dtype;
    if (!dtype || typeof key !== "string" || typeof numel !== "number") {
      fail(`malformed storage reference ${describe(pid)}.`);
    }
    let root = storages.get(key as string);
    if (!root) {
      root = { key: key as string, dtype: dtype!, numel: numel as number, viewOffset: 0 };
      storages.set(key as string, root);
    }
    if (Array.isArray(view)) {
      // Legacy storage views: (view key, element offset into the root, view size).
      const [, viewOffset] = view as unknown[];
      return { ...root, viewOffset: Number(viewOffset), values: undefined, key: root.key };
    }
    return root;
  };
  const opts = { globals: GLOBALS, persistentLoad, source };

  let value: unknown;
  if (isZip(bytes)) {
    const entries = readZip(bytes, source);
    const pickles = [...entries.keys()].filter((n) => /^([^/]+\/)?data\.pkl$/.test(n));
    if (pickles.length !== 1) {
      fail(
        `expected one data.pkl in the archive, found ${pickles.length ? pickles.join(", ") : "none"}; ` +
          `is this a torch.save file? (entries: ${[...entries.keys()].slice(0, 8).join(", ")})`,
      );
    }
    const folder = pickles[0].slice(0, -"data.pkl".length);
    const byteorder = entries.get(`${folder}byteorder`);
    if (byteorder) {
      const order = new TextDecoder().decode(await byteorder.read()).trim();
      if (order !== "little") fail(`storages are ${order}-endian; only little-endian files are read.`);
    }
    value = unpickle(await entries.get(pickles[0])!.read(), opts).value;
    for (const ref of storages.values()) {
      const entry = entries.get(`${folder}data/${ref.key}`) ?? fail(`storage ${ref.key} is missing.`);
      ref.values = decodeStorage(ref, await entry.read(), source);
    }
  } else if (isTorchCheckpoint(bytes)) {
    const plain = { globals: {}, source };
    const magic = unpickle(bytes, plain);
    if (magic.value !== LEGACY_MAGIC) {
      fail("a pickle, but not a torch.save file (no magic number); plain pickles are not read.");
    }
    const protocol = unpickle(bytes, plain, magic.end);
    if (protocol.value !== 1001) fail(`legacy format protocol ${describe(protocol.value)}; 1001 is read.`);
    const info = unpickle(bytes, plain, protocol.end);
    if (info.value instanceof Map && info.value.get("little_endian") === false) {
      fail("storages are big-endian; only little-endian files are read.");
    }
    const main = unpickle(bytes, opts, info.end);
    value = main.value;
    const keys = unpickle(bytes, plain, main.end);
    if (!Array.isArray(keys.value)) fail("the storage key list is missing.");
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let at = keys.end;
    for (const key of keys.value as unknown[]) {
      const ref = storages.get(String(key)) ?? fail(`storage ${describe(key)} is stored but never used.`);
      if (at + 8 > bytes.byteLength) fail(`truncated before storage ${ref.key}.`);
      const numel = Number(view.getBigInt64(at, true));
      const length = numel * ELEMENT_BYTES[ref.dtype];
      if (numel !== ref.numel || at + 8 + length > bytes.byteLength) {
        fail(`storage ${ref.key}: ${numel} elements recorded, ${ref.numel} expected, or truncated.`);
      }
      ref.values = decodeStorage(ref, bytes.subarray(at + 8, at + 8 + length), source);
      at += 8 + length;
    }
  } else {
    fail("not a torch.save file (neither a zip archive nor a pickle).");
  }
  return materialize(value, storages, fail);
}

/** The globals a checkpoint may name: tensors, parameters, storage types, OrderedDict. */
const GLOBALS: Record<string, PickleGlobal> = {
  "collections.OrderedDict": (args) => new Map(args.length ? (args[0] as Iterable<[unknown, unknown]>) : []),
  "torch._utils._rebuild_tensor_v2": (args) => {
    const [storage, offset, shape, strides] = args;
    return new PendingTensor(
      storage as StorageRef,
      Number(offset),
      [...(shape as number[])].map(Number),
      [...(strides as number[])].map(Number),
    );
  },
  "torch._utils._rebuild_parameter": (args) => args[0],
  ...Object.fromEntries(Object.entries(STORAGE_TYPES).map(([name, dtype]) => [`torch.${name}`, { dtype }])),
};

function decodeStorage(ref: StorageRef, bytes: Uint8Array, source: string): Float32Array | Int32Array {
  const need = ref.numel * ELEMENT_BYTES[ref.dtype];
  if (bytes.byteLength < need) {
    throw new Error(
      `torch checkpoint ${source}: storage ${ref.key} holds ${bytes.byteLength} bytes, ${need} expected.`,
    );
  }
  return decodeTensorData(ref.dtype, bytes, ref.numel, `storage ${ref.key}`, source);
}

/** Replaces every pending tensor in `value` by its contiguous values. */
function materialize(
  value: unknown,
  storages: Map<string, StorageRef>,
  fail: (message: string) => never,
): unknown {
  if (value instanceof PendingTensor) {
    const { storage, offset, shape, strides } = value;
    const values = storages.get(storage.key)?.values ?? fail(`storage ${storage.key} was never read.`);
    if (
      shape.length !== strides.length || shape.some((d) => !Number.isInteger(d) || d < 0) ||
      !Number.isInteger(offset) || offset < 0
    ) {
      fail(`a tensor has shape ${describe(shape)}, strides ${describe(strides)}, offset ${offset}.`);
    }
    const count = shape.reduce((a, b) => a * b, 1);
    const start = storage.viewOffset + offset;
    const last = start + shape.reduce((s, d, i) => s + (d - 1) * strides[i], 0);
    if (count > 0 && (last >= values.length || last < 0)) {
      fail(
        `a tensor of shape ${describe(shape)} (strides ${describe(strides)}, offset ${offset}) reaches ` +
          `element ${last} of storage ${storage.key}, which has ${values.length}.`,
      );
    }
    const out = values instanceof Float32Array ? new Float32Array(count) : new Int32Array(count);
    // Walk the view in row-major order with an index counter (strides may be anything, even zero).
    const index = new Array(shape.length).fill(0);
    let source = start;
    for (let i = 0; i < count; i++) {
      out[i] = values[source];
      for (let axis = shape.length - 1; axis >= 0; axis--) {
        index[axis]++;
        source += strides[axis];
        if (index[axis] < shape[axis]) break;
        source -= strides[axis] * shape[axis];
        index[axis] = 0;
      }
    }
    return new CheckpointTensor(storage.dtype, shape, out);
  }
  if (value instanceof Map) {
    return new Map([...value].map(([k, v]) => [k, materialize(v, storages, fail)]));
  }
  if (Array.isArray(value)) {
    const items = value.map((v) => materialize(v, storages, fail));
    return Object.isFrozen(value) ? Object.freeze(items) : items;
  }
  return value;
}

/** A short description of a value for error messages. */
function describe(v: unknown): string {
  if (v instanceof Map) {
    return `{${[...v.keys()].slice(0, 5).map(String).join(", ")}${v.size > 5 ? ", …" : ""}}`;
  }
  if (Array.isArray(v)) return `(${v.map(describe).join(", ")})`;
  if (typeof v === "bigint") return v.toString();
  return JSON.stringify(v) ?? String(v);
}

/** Whether `v` is a dict of tensors only (a state dict). */
function isStateDict(v: unknown): v is Map<string, CheckpointTensor> {
  return v instanceof Map && v.size > 0 &&
    [...v].every(([k, t]) => typeof k === "string" && t instanceof CheckpointTensor);
}

/**
 * The state dict inside a checkpoint's object: the object itself when it is a dict of tensors, else the
 * entry `key` of it, else its only entry that is a dict of tensors (training checkpoints often hold
 * `{"state_dict": …, "epoch": …}` or `{"model": …, "optimizer": …}`). Non-tensor entries of a state dict are
 * an error; so is an ambiguous or missing one, listing the keys to choose from.
 */
export function findStateDict(
  value: unknown,
  key?: string,
  source = "<bytes>",
): Map<string, CheckpointTensor> {
  const fail = (message: string): never => {
    throw new Error(`torch checkpoint ${source}: ${message}`);
  };
  if (!(value instanceof Map)) fail(`holds ${describe(value)}, not a dict of tensors.`);
  const dict = value as Map<unknown, unknown>;
  const keys = [...dict.keys()].map(String);
  if (key !== undefined) {
    const chosen = dict.get(key);
    if (chosen === undefined) fail(`has no entry "${key}"; its entries: ${keys.join(", ")}.`);
    if (!isStateDict(chosen)) fail(`entry "${key}" is not a dict of tensors.`);
    return chosen as Map<string, CheckpointTensor>;
  }
  if (isStateDict(dict)) return dict;
  const candidates = [...dict].filter(([, v]) => isStateDict(v));
  if (candidates.length === 1) return candidates[0][1] as Map<string, CheckpointTensor>;
  return fail(
    candidates.length === 0
      ? `holds no dict of tensors (entries: ${keys.join(", ")}).`
      : `holds several dicts of tensors (${
        candidates.map(([k]) => String(k)).join(", ")
      }); choose one with --key.`,
  );
}
