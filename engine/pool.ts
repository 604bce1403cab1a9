/**
 * GPU buffer pool. Buffers are bucketed by size (quarter-octave steps, so at most 25% slack) and reused.
 * A released buffer becomes reusable only after the submit that carries its last use has been queued:
 * `queue.writeBuffer` runs before any not-yet-submitted commands, so handing the buffer out earlier could
 * overwrite data those commands still read.
 *
 * Two rules keep the pool's memory near what the tensors themselves need (measured on the default U-Net at
 * 64³: without them the pool held 3.2× the forward's peak of live bytes, see bench/README.md):
 *
 * - **Reuse before creating.** A request whose bucket has no free buffer, but a released one still waiting
 *   for its submit, submits the recorded work (buckets of {@linkcode poolSettings}`.submitForReuseBytes` and
 *   up) and takes that buffer, instead of creating another.
 * - **A bounded cache.** Free buffers are kept in release order; once they exceed the cap (a fraction of the
 *   highest live bytes seen, at least a floor), the least recently released are destroyed, also before a new
 *   buffer is created. Loops that repeat the same shapes keep their working set; one-off sizes (blocks of
 *   split ops, other resolutions) do not pile up.
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

/** Knobs of the pool's caching (see the module doc). */
export const poolSettings: {
  /** Cached (free) bytes kept: at most this fraction of the highest live bytes seen (default 0.5)… */
  cacheFraction: number;
  /** …but always up to this many bytes (default 256 MiB), so small programs keep all they release. */
  minCacheBytes: number;
  /** Smallest bucket for which a request submits pending work to reuse a released buffer (default 1 MiB). */
  submitForReuseBytes: number;
} = { cacheFraction: 0.5, minCacheBytes: 256 * 2 ** 20, submitForReuseBytes: 2 ** 20 };

/** Free buffers by size, oldest first within a size; `cached` holds all of them in release order. */
const free = new Map<number, GPUBuffer[]>();
const cached = new Set<GPUBuffer>();
/** Buffers currently holding f16 elements (kernels bound to them get f16 storage; see kernels/half.ts). */
const halfBuffers = new WeakSet<GPUBuffer>();
let pendingRelease: GPUBuffer[] = [];
/** Released buffers waiting for a submit, by size. */
const pendingBySize = new Map<number, number>();
let submitHook: () => void = () => {};
let liveBytes = 0;
let peakBytes = 0;
let maxLiveBytes = 0;
let pooledBytes = 0;
let pendingBytes = 0;
let heldBytes = 0;
let peakHeldBytes = 0;

/**
 * Registers the function that submits the recorded work (the runtime's `flush`, which calls
 * {@linkcode afterSubmit}); the pool calls it to make a pending buffer reusable.
 */
export function setSubmitHook(fn: () => void): void {
  submitHook = fn;
}

/** Bytes the cache may hold now. */
function cacheCap(): number {
  return Math.max(poolSettings.minCacheBytes, poolSettings.cacheFraction * maxLiveBytes);
}

/** Destroys the least recently released free buffers until the cache holds at most `cap` bytes. */
function evictTo(cap: number): void {
  for (const buffer of cached) {
    if (pooledBytes <= cap) return;
    cached.delete(buffer);
    free.get(buffer.size)!.shift(); // the oldest of its size is the oldest overall among them
    pooledBytes -= buffer.size;
    heldBytes -= buffer.size;
    buffer.destroy();
  }
}

function takeFree(size: number): GPUBuffer | undefined {
  const buffer = free.get(size)?.pop();
  if (buffer) {
    cached.delete(buffer);
    pooledBytes -= size;
  }
  return buffer;
}

/**
 * Takes a buffer of at least `bytes` from the pool, creating one when none is free. `half` marks it as
 * holding f16 elements until it is released.
 */
export function acquireBuffer(bytes: number, half = false): GPUBuffer {
  const size = bucketSize(bytes);
  let buffer = takeFree(size);
  if (!buffer && size >= poolSettings.submitForReuseBytes && (pendingBySize.get(size) ?? 0) > 0) {
    submitHook();
    buffer = takeFree(size);
  }
  if (!buffer) {
    evictTo(cacheCap() - size);
    buffer = createBuffer(size);
  }
  if (half) halfBuffers.add(buffer);
  else halfBuffers.delete(buffer);
  liveBytes += size;
  if (liveBytes > peakBytes) peakBytes = liveBytes;
  if (liveBytes > maxLiveBytes) maxLiveBytes = liveBytes;
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
  let buffer: GPUBuffer;
  try {
    buffer = device.createBuffer({ size, usage: USAGE });
  } catch (error) {
    // Out of memory: drop every cached buffer and try once more before giving up.
    trimPool();
    try {
      buffer = device.createBuffer({ size, usage: USAGE });
    } catch {
      throw new Error(`GPU out of memory allocating ${size} bytes (${liveBytes} bytes live): ${error}`);
    }
  }
  heldBytes += size;
  if (heldBytes > peakHeldBytes) peakHeldBytes = heldBytes;
  return buffer;
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
  pendingBytes += buffer.size;
  pendingBySize.set(buffer.size, (pendingBySize.get(buffer.size) ?? 0) + 1);
  pendingRelease.push(buffer);
}

/**
 * Called by the runtime right after a submit, or when it finds nothing to submit: buffers released before
 * it become reusable (no unsubmitted command uses them), and the cache is trimmed to its cap.
 */
export function afterSubmit(): void {
  for (const buffer of pendingRelease) {
    const list = free.get(buffer.size);
    if (list) list.push(buffer);
    else free.set(buffer.size, [buffer]);
    cached.add(buffer);
    pooledBytes += buffer.size;
  }
  pendingRelease = [];
  pendingBySize.clear();
  pendingBytes = 0;
  evictTo(cacheCap());
}

/** Destroys every cached (free) buffer, returning their memory to the driver. */
export function trimPool(): void {
  for (const buffer of cached) buffer.destroy();
  cached.clear();
  free.clear();
  heldBytes -= pooledBytes;
  pooledBytes = 0;
}

/** Byte counts of the pool (see the fields). */
export interface PoolStats {
  /** Bytes of buffers held by tensors. */
  liveBytes: number;
  /** High-water mark of `liveBytes` since the last {@linkcode resetPeak}. */
  peakBytes: number;
  /** Free buffers cached for reuse. */
  pooledBytes: number;
  /** Released buffers waiting for the submit that makes them reusable. */
  pendingBytes: number;
  /** Every buffer the pool has created and not destroyed: live + pending + cached. */
  heldBytes: number;
  /** High-water mark of `heldBytes` since the last {@linkcode resetPeak}. */
  peakHeldBytes: number;
  /** Highest `liveBytes` since the start (never reset): the base of the cache's cap. */
  maxLiveBytes: number;
}

/** Byte counts of the pool. */
export function poolStats(): PoolStats {
  return { liveBytes, peakBytes, pooledBytes, pendingBytes, heldBytes, peakHeldBytes, maxLiveBytes };
}

/** Resets the high-water marks to the current live and held bytes. */
export function resetPeak(): void {
  peakBytes = liveBytes;
  peakHeldBytes = heldBytes;
}
