/**
 * Tensor: a shape and strides over a reference-counted GPU buffer. Views (reshape, permute, slice, expand)
 * share the buffer; it returns to the pool when the last tensor using it is disposed.
 *
 * @module
 */

import { acquireBuffer, releaseBuffer } from "./pool.ts";
import { readBuffer, upload } from "./runtime.ts";
import { contiguousStrides, formatShape, sizeOf } from "./shape.ts";
import { currentFloatDType } from "./precision.ts";
import type { GradNode } from "./autograd.ts";

/**
 * Element type of a tensor. voxgen computes in f32; int32 is used for indices and labels; float16 is a
 * storage format (kernels widen it to f32 on load, see kernels/half.ts) for inference at half the memory.
 */
export type DType = "float32" | "float16" | "int32";

/** Bytes per element of `dtype`. */
export function dtypeBytes(dtype: DType): number {
  return dtype === "float16" ? 2 : 4;
}

/** True for the floating-point types (float32, float16). */
export function isFloat(dtype: DType): boolean {
  return dtype !== "int32";
}

/** A reference-counted GPU buffer shared by a tensor and its views. */
export class Storage {
  /** The pooled GPU buffer. */
  readonly buffer: GPUBuffer;
  /** Bytes requested (the buffer may be larger: pool buckets). */
  readonly bytes: number;
  #refs = 1;

  /** Allocates `bytes` from the buffer pool; `half` when it will hold f16 elements. */
  constructor(bytes: number, half = false) {
    this.bytes = bytes;
    this.buffer = acquireBuffer(Math.max(bytes, 4), half);
  }

  /** Adds a reference. */
  retain(): void {
    this.#refs++;
  }

  /** Drops a reference; the buffer goes back to the pool at zero. */
  release(): void {
    if (--this.#refs === 0) releaseBuffer(this.buffer);
  }
}

// --- Scopes and live-tensor accounting -------------------------------------------------------------------

let nextId = 1;
let liveTensors = 0;
const scopeStack: Array<Set<Tensor>> = [];

/** Internal: tracks a tensor in the innermost scope (if any). */
function track(t: Tensor): void {
  liveTensors++;
  const top = scopeStack[scopeStack.length - 1];
  if (top) top.add(t);
}

/** Internal: the number of tensors created and not yet disposed. */
export function liveTensorCount(): number {
  return liveTensors;
}

/** Internal: opens a scope frame. */
export function pushScope(): void {
  scopeStack.push(new Set());
}

/** Internal: closes the innermost scope, disposing every tensor in it except `keep`, which move outward. */
export function popScope(keep: Set<Tensor>): void {
  const frame = scopeStack.pop();
  if (!frame) throw new Error("popScope without pushScope");
  const parent = scopeStack[scopeStack.length - 1];
  for (const t of frame) {
    if (keep.has(t)) parent?.add(t);
    else t.dispose();
  }
}

/** Internal: how many scopes are open. */
export function scopeDepth(): number {
  return scopeStack.length;
}

/** Internal: removes `t` from every open scope so that no scope disposes it. */
export function untrack(t: Tensor): void {
  for (const frame of scopeStack) frame.delete(t);
}

// --- Tensor --------------------------------------------------------------------------------------------

/** Construction record of a tensor (engine internal). */
export interface TensorInit {
  /** Dimensions. */
  shape: readonly number[];
  /** The buffer (its reference is taken over by the tensor). */
  storage: Storage;
  /** Element strides (default: contiguous). */
  strides?: readonly number[];
  /** Element offset (default 0). */
  offset?: number;
  /** Element type (default float32). */
  dtype?: DType;
  /** Track gradients. */
  requiresGrad?: boolean;
  /** Autograd record of the producing op. */
  node?: GradNode | null;
  /** Internal handles (saved for backward) are not counted or scoped. */
  internal?: boolean;
}

/**
 * An n-dimensional array on the GPU. Create tensors with `tensor`, `zeros`, `ones`, … and free them with
 * {@linkcode Tensor.dispose} or by running the code inside `scope`.
 */
export class Tensor {
  /** Unique id; autograd routes gradients by it. */
  readonly id: number;
  /** Dimensions, outermost first. */
  readonly shape: readonly number[];
  /** Element strides of each dimension (0 for broadcast dimensions). */
  readonly strides: readonly number[];
  /** Element offset of the first element in the storage. */
  readonly offset: number;
  #dtype: DType;
  #requiresGrad: boolean;
  /** Autograd record of the op that produced this tensor (null for leaves and constants). */
  node: GradNode | null;
  #storage: Storage | null;
  readonly #internal: boolean;

  /** Engine internal: creates a tensor over existing storage. Use `tensor`, `zeros`, … instead. */
  constructor(init: TensorInit) {
    this.id = nextId++;
    this.shape = Object.freeze([...init.shape]);
    this.strides = Object.freeze(init.strides ? [...init.strides] : contiguousStrides(init.shape));
    this.offset = init.offset ?? 0;
    this.#dtype = init.dtype ?? "float32";
    this.#requiresGrad = init.requiresGrad ?? false;
    this.node = init.node ?? null;
    this.node?.retain();
    this.#storage = init.storage;
    this.#internal = init.internal ?? false;
    if (!this.#internal) track(this);
  }

  /** Element type. */
  get dtype(): DType {
    return this.#dtype;
  }

  /**
   * Engine internal: makes this tensor use `storage` (dense, same shape) holding `dtype` elements, releasing
   * its old storage. Converts parameters in place (`castInPlace`), so that every layer holding the tensor
   * sees the new type.
   */
  replaceStorage(storage: Storage, dtype: DType): void {
    const old = this.storage("replaceStorage");
    if (this.offset !== 0 || !this.isContiguous) {
      throw new Error(`replaceStorage: ${this} is a view; only dense tensors can change storage.`);
    }
    this.#storage = storage;
    this.#dtype = dtype;
    old.release();
  }

  /** Whether gradients flow to this tensor. Leaves get it from the user; op results inherit it. */
  get requiresGrad(): boolean {
    return this.#requiresGrad;
  }

  /**
   * Turns gradient tracking of a leaf tensor on or off (e.g. to freeze a parameter). Op results carry
   * their autograd record and cannot be changed. Returns `this`.
   */
  setRequiresGrad(flag: boolean): this {
    if (this.node) {
      throw new Error(
        `setRequiresGrad: ${this} is the result of an op; only leaf tensors (created from data) can change it.`,
      );
    }
    this.#requiresGrad = flag;
    return this;
  }

  /** Number of elements. */
  get size(): number {
    return sizeOf(this.shape);
  }

  /** Number of dimensions. */
  get rank(): number {
    return this.shape.length;
  }

  /** True once disposed. */
  get isDisposed(): boolean {
    return this.#storage === null;
  }

  /** True when elements are laid out densely in row-major order from `offset`. */
  get isContiguous(): boolean {
    const expected = contiguousStrides(this.shape);
    return this.shape.every((n, i) => n <= 1 || this.strides[i] === expected[i]);
  }

  /** The storage (throws a clear error when the tensor was disposed). */
  storage(op = "use"): Storage {
    if (!this.#storage) {
      throw new Error(`${op}: tensor ${formatShape(this.shape)} (id ${this.id}) was already disposed.`);
    }
    return this.#storage;
  }

  /**
   * Copies the values to the CPU (row-major). This waits for the GPU: in loops, read back once at the end.
   */
  async toArray(): Promise<Float32Array> {
    const storage = this.storage("toArray");
    if (this.size === 0) return new Float32Array(0);
    if (this.isContiguous && this.dtype === "float16") {
      // Reads start and end on 4-byte boundaries; the f16 elements are widened on the CPU.
      const start = Math.floor(this.offset / 2) * 4;
      const end = Math.ceil((this.offset + this.size) / 2) * 4;
      const bytes = await readBuffer(storage.buffer, start, end - start);
      return Float32Array.from(new Float16Array(bytes, this.offset * 2 - start, this.size));
    }
    if (this.isContiguous) {
      const bytes = await readBuffer(storage.buffer, this.offset * 4, this.size * 4);
      return new Float32Array(bytes);
    }
    const { contiguous } = await import("./ops/map.ts");
    const dense = contiguous(this);
    try {
      return await dense.toArray();
    } finally {
      dense.dispose();
    }
  }

  /** Reads a one-element tensor as a number. */
  async item(): Promise<number> {
    if (this.size !== 1) {
      throw new Error(`item(): tensor has shape ${formatShape(this.shape)}, not one element.`);
    }
    return (await this.toArray())[0];
  }

  /** Frees this tensor's reference to its GPU buffer. Safe to call twice. */
  dispose(): void {
    if (!this.#storage) return;
    this.#storage.release();
    this.#storage = null;
    this.node?.release();
    this.node = null;
    if (!this.#internal) {
      liveTensors--;
      untrack(this);
    }
  }

  /** Internal: a handle sharing this tensor's storage, for saving in autograd records. Not scoped. */
  saveForBackward(): Tensor {
    const storage = this.storage("autograd");
    storage.retain();
    return new Tensor({
      shape: this.shape,
      strides: this.strides,
      offset: this.offset,
      dtype: this.dtype,
      storage,
      internal: true,
    });
  }

  /** A short description, e.g. `Tensor[2, 3] float32`. */
  toString(): string {
    return `Tensor${formatShape(this.shape)} ${this.dtype}${this.requiresGrad ? " (requiresGrad)" : ""}`;
  }
}

/**
 * Creates a tensor over a fresh buffer, uploading `data` when given (engine internal). Without `dtype`, the
 * tensor is float32, or float16 inside `withPrecision("f16", …)`: ops allocate their outputs here, so that
 * outputs computed in f16 precision are stored as f16. Float data for a float16 tensor is rounded to f16.
 */
export function fromData(data: Float32Array | Int32Array | null, shape: readonly number[], opts: {
  requiresGrad?: boolean;
  dtype?: DType;
} = {}): Tensor {
  const size = sizeOf(shape);
  const dtype = opts.dtype ?? currentFloatDType();
  const half = dtype === "float16";
  const storage = new Storage(size * dtypeBytes(dtype), half);
  if (data && size > 0) {
    if (half && data instanceof Int32Array) throw new Error("fromData: int32 data for a float16 tensor.");
    // writeBuffer moves whole 4-byte words: an odd count of f16 elements gets one element of padding.
    let words: ArrayBufferView = data;
    if (half) {
      const halves = new Float16Array(Math.ceil(size / 2) * 2);
      halves.set(data);
      words = halves;
    }
    upload(storage.buffer, 0, words);
  }
  return new Tensor({ shape, storage, dtype, requiresGrad: opts.requiresGrad });
}
