/**
 * Per-dispatch GPU timing with `timestamp-query`, for benchmarks. While a profile is running the runtime
 * gives every dispatch its own compute pass whose beginning and end write timestamps; each dispatch is
 * attributed to the kernel family (e.g. "conv3d:chunk", the first two fields of its key) and to the outermost label an op set with
 * {@linkcode profileLabel} (e.g. "conv3d fwd 32→32 64³"). Outside a profile the only cost is one variable
 * write per labelled op.
 *
 * Pass boundaries serialise the dispatches, so a profiled run is somewhat slower than an unprofiled one;
 * compare shares within a profile, and totals only against other profiles.
 *
 * @module
 */

import { gpu } from "./device.ts";

/** GPU time of one group of dispatches in a profile. */
export interface ProfileEntry {
  /** The op's label (empty when no op set one). */
  label: string;
  /** The kernel family (`Kernel.family`, the first two fields of its cache key, e.g. "map:add", "conv3d:chunk"). */
  kernel: string;
  /** Dispatches. */
  count: number;
  /** GPU seconds summed over the dispatches. */
  seconds: number;
}

const QUERIES_PER_SET = 512;

let active = false;
let label = "";
let current: { set: GPUQuerySet; names: string[] } | null = null;
let pending: Array<Promise<Array<[string, number]>>> = [];

/** True while a profile runs (the runtime then opens one timed compute pass per dispatch). */
export function profiling(): boolean {
  return active;
}

/** Runs `fn` with `name` as the label of its dispatches (the outermost label wins); returns its result. */
export function profileLabel<T>(name: string | (() => string), fn: () => T): T {
  if (!active || label !== "") return fn();
  label = typeof name === "string" ? name : name();
  try {
    return fn();
  } finally {
    label = "";
  }
}

/** Whether the device can time dispatches (the adapter has `timestamp-query`). */
export function canProfile(): boolean {
  return gpu().features.has("timestamp-query");
}

/** Starts collecting per-dispatch GPU times. Throws when the device has no `timestamp-query`. */
export function startProfile(): void {
  if (!canProfile()) throw new Error("startProfile: the device has no timestamp-query feature.");
  active = true;
  pending = [];
}

/**
 * The timestamp writes for the pass of the next dispatch of a kernel of `family`, or null when the current query
 * set is full (the runtime then submits, which resolves it, and asks again).
 */
export function passTimestamps(family: string): GPUComputePassTimestampWrites | null {
  if (!current) {
    current = { set: gpu().createQuerySet({ type: "timestamp", count: QUERIES_PER_SET }), names: [] };
  }
  const at = current.names.length * 2;
  if (at + 2 > QUERIES_PER_SET) return null;
  current.names.push(`${label}\u0000${family}`);
  return { querySet: current.set, beginningOfPassWriteIndex: at, endOfPassWriteIndex: at + 1 };
}

/** Called by the runtime before it finishes `encoder`: resolves the timestamps recorded in it. */
export function resolveTimestamps(encoder: GPUCommandEncoder): void {
  if (!current || current.names.length === 0) return;
  const { set, names } = current;
  current = null;
  const bytes = names.length * 16;
  const dev = gpu();
  const resolved = dev.createBuffer({
    size: bytes,
    usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
  });
  const readback = dev.createBuffer({
    size: bytes,
    usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
  });
  encoder.resolveQuerySet(set, 0, names.length * 2, resolved, 0);
  encoder.copyBufferToBuffer(resolved, 0, readback, 0, bytes);
  pending.push((async () => {
    // Mapping waits for the submit that carries the copy (the runtime submits this encoder next).
    await Promise.resolve();
    await readback.mapAsync(GPUMapMode.READ);
    const t = new BigUint64Array(readback.getMappedRange().slice(0));
    readback.destroy();
    resolved.destroy();
    set.destroy();
    return names.map((n, i) => [n, Number(t[2 * i + 1] - t[2 * i]) / 1e9] as [string, number]);
  })());
}

/**
 * Stops the profile and returns its entries grouped by (label, kernel family), longest first. Call it
 * after a `sync()` so that the last batch has been submitted.
 */
export async function stopProfile(): Promise<ProfileEntry[]> {
  active = false;
  const all = (await Promise.all(pending)).flat();
  pending = [];
  const groups = new Map<string, ProfileEntry>();
  for (const [key, seconds] of all) {
    const [l, kernel] = key.split("\u0000");
    const entry = groups.get(key) ?? { label: l, kernel, count: 0, seconds: 0 };
    entry.count++;
    entry.seconds += Math.max(0, seconds);
    groups.set(key, entry);
  }
  return [...groups.values()].sort((a, b) => b.seconds - a.seconds);
}
