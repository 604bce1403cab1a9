/**
 * GPU buffer pool. Buffers are bucketed by size (quarter-octave steps, so at most 25% slack) and reused.
 * A released buffer becomes reusable only after the submit that carries its last use has been queued:
 * `queue.writeBuffer` runs before any not-yet-submitted commands, so handing the buffer out earlier could
 * overwrite data those commands still read.
 *
 * @module
 */

import { gpu } from "./device.ts";

const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;
const MIN_BYTES = 256;

/** Rounds `bytes` up to its size bucket: 2^k, 1.25·2^k, 1.5·2^k or 1.75·2^k, at least 256 bytes. */
export function bucketSize(bytes: number): number {
  if (bytes <= MIN_BYTES) return MIN_BYTES;
  const octave = 2 ** Math.floor(Math.log2(bytes));
  const step = octave / 4;
  return Math.ceil(bytes / step) * step;
}

const free = new Map<number, GPUBuffer[]>();
/** Buffers currently holding f16 elements (kernels bound to them get f16 storage; see kernels/half.ts). */
const halfBuffers = new WeakSet<GPUBuffer>();
let pendingRelease: GPUBuffer[] = [];
let liveBytes = 0;
let peakBytes = 0;
let pooledBytes = 0;

/**
 * Takes a buffer of at least `bytes` from the pool, creating one when none is free. `half` marks it as
 * holding f16 elements until it is released.
 */
export function acquireBuffer(bytes: number, half = false): GPUBuffer {
  const size = bucketSize(bytes);
  const list = free.get(size);
  let buffer = list?.pop();
  if (buffer) {
    pooledBytes -= size;
  } else {
    buffer = createBuffer(size);
  }
  if (half) halfBuffers.add(buffer);
  else halfBuffers.delete(buffer);
  liveBytes += size;
  if (liveBytes > peakBytes) peakBytes = liveBytes;
  return buffer;
}

function createBuffer(size: number): GPUBuffer {
  const device = gpu();
  const maxSize = device.limits.maxBufferSize;
  if (size > maxSize) {
    throw new Error(
      `Cannot allocate a GPU buffer of ${size} bytes: the device's maxBufferSize is ${maxSize} bytes.`,
    );
  }
  try {
    return device.createBuffer({ size, usage: USAGE });
  } catch (error) {
    // Out of memory: drop every cached buffer and try once more before giving up.
    trimPool();
    try {
      return device.createBuffer({ size, usage: USAGE });
    } catch {
      throw new Error(`GPU out of memory allocating ${size} bytes (${liveBytes} bytes live): ${error}`);
    }
  }
}

/** True when `buffer` was acquired for f16 elements: 2 bytes per element instead of 4. */
export function isHalfBuffer(buffer: GPUBuffer): boolean {
  return halfBuffers.has(buffer);
}

/** Bytes per element of the floats `buffer` holds (2 for f16, else 4). */
export function elementBytes(buffer: GPUBuffer): number {
  return halfBuffers.has(buffer) ? 2 : 4;
}

/** Returns a buffer to the pool; it is handed out again only after the next submit. */
export function releaseBuffer(buffer: GPUBuffer): void {
  liveBytes -= buffer.size;
  pendingRelease.push(buffer);
}

/** Called by the runtime right after a submit: buffers released before it become reusable. */
export function afterSubmit(): void {
  for (const buffer of pendingRelease) {
    const list = free.get(buffer.size);
    if (list) list.push(buffer);
    else free.set(buffer.size, [buffer]);
    pooledBytes += buffer.size;
  }
  pendingRelease = [];
}

/** Destroys every cached (free) buffer, returning their memory to the driver. */
export function trimPool(): void {
  for (const list of free.values()) for (const buffer of list) buffer.destroy();
  free.clear();
  pooledBytes = 0;
}

/** Byte counts of the pool: in use by tensors, its high-water mark, and cached for reuse. */
export function poolStats(): { liveBytes: number; peakBytes: number; pooledBytes: number } {
  return { liveBytes, peakBytes, pooledBytes };
}

/** Resets the high-water mark to the current live bytes. */
export function resetPeak(): void {
  peakBytes = liveBytes;
}
