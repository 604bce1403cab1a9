/**
 * Command recording and submission: the cache of compiled pipelines, a uniform arena for kernel parameters, batching of
 * dispatches into few submits, workgroup-grid folding, and readback.
 *
 * Storage bindings are whole buffers or windows of one (`bindRange`): ops whose tensors exceed the device's
 * `maxStorageBufferBindingSize` split their work so that each dispatch binds windows that fit, and a
 * dispatch that would bind a larger buffer whole throws instead of failing validation later.
 *
 * Dispatches are recorded into one command encoder and submitted in batches (or before a readback), never one
 * submit per op. Kernel parameters of a batch live in one uniform arena uploaded with a single `writeBuffer`
 * right before its submit. Validation and compile errors of a batch are collected in an error scope and
 * surface, with the failing WGSL line, at the next readback or {@linkcode sync}.
 *
 * @module
 */

import type { Kernel } from "../kernels/types.ts";
import { gpu, limit } from "./device.ts";
import { afterSubmit, setSubmitHook } from "./pool.ts";
import { passTimestamps, profiling, resolveTimestamps } from "./profile.ts";

const ARENA_BYTES = 1 << 18;
const MAX_DISPATCHES_PER_SUBMIT = 128;
const MAX_WORKGROUPS_PER_DIM = 65535;

interface Compiled {
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
  /** The WGSL it was compiled from (a second kernel under the same key must have the same). */
  code: string;
}

/** The one cache of compiled pipelines, by kernel key (kernels/program.ts derives the keys). */
const pipelines = new Map<string, Compiled>();
let cacheDevice: GPUDevice | null = null;

let encoder: GPUCommandEncoder | null = null;
let pass: GPUComputePassEncoder | null = null;
let dispatchesInBatch = 0;
let arena: GPUBuffer | null = null;
const arenaCpu = new Uint8Array(ARENA_BYTES);
let arenaUsed = 0;
let pendingChecks: Array<Promise<string | null>> = [];
const stats = { dispatches: 0, submits: 0, pipelines: 0 };

function device(): GPUDevice {
  const dev = gpu();
  if (dev !== cacheDevice) {
    // A new device (after a loss): everything cached belongs to the old one.
    pipelines.clear();
    encoder = null;
    pass = null;
    arena = null;
    arenaUsed = 0;
    dispatchesInBatch = 0;
    pendingChecks = [];
    cacheDevice = dev;
  }
  return dev;
}

function compile(dev: GPUDevice, kernel: Kernel): Compiled {
  const cached = pipelines.get(kernel.key);
  if (cached) {
    if (cached.code !== kernel.code) {
      throw new Error(
        `two different WGSL kernels share the key "${kernel.key}": a kernel's key must cover everything ` +
          "baked into its code (declare generators with defineKernel, kernels/program.ts).",
      );
    }
    return cached;
  }
  dev.pushErrorScope("validation");
  const module = dev.createShaderModule({ label: kernel.key, code: kernel.code });
  const entries: GPUBindGroupLayoutEntry[] = [
    { binding: 0, visibility: GPUShaderStage.COMPUTE, buffer: { type: "uniform" } },
  ];
  kernel.bindings.forEach((access, i) => {
    entries.push({
      binding: i + 1,
      visibility: GPUShaderStage.COMPUTE,
      buffer: { type: access === "read" ? "read-only-storage" : "storage" },
    });
  });
  const layout = dev.createBindGroupLayout({ label: kernel.key, entries });
  const pipeline = dev.createComputePipeline({
    label: kernel.key,
    layout: dev.createPipelineLayout({ bindGroupLayouts: [layout] }),
    compute: { module, entryPoint: "main" },
  });
  const scope = dev.popErrorScope();
  pendingChecks.push(
    scope.then(async (error) => {
      if (!error) return null;
      return await describeCompileError(kernel, module, error.message);
    }),
  );
  const compiled = { pipeline, layout, code: kernel.code };
  pipelines.set(kernel.key, compiled);
  stats.pipelines++;
  return compiled;
}

async function describeCompileError(
  kernel: Kernel,
  module: GPUShaderModule,
  message: string,
): Promise<string> {
  const lines = kernel.code.split("\n");
  let detail = message;
  try {
    const info = await module.getCompilationInfo();
    const errors = info.messages.filter((m) => m.type === "error");
    if (errors.length > 0) {
      detail = errors.map((m) => {
        const line = lines[m.lineNum - 1] ?? "";
        return `line ${m.lineNum}: ${m.message.trim()}\n  > ${line.trim()}`;
      }).join("\n");
    }
  } catch {
    // getCompilationInfo is optional in some runtimes; the scope message is still useful.
  }
  return `WGSL kernel "${kernel.key}" failed to compile:\n${detail}`;
}

/** Splits a 1-D count of workgroups into a grid within the per-dimension limit. */
export function foldGrid(count: number): [number, number, number] {
  if (count <= MAX_WORKGROUPS_PER_DIM) return [count, 1, 1];
  const y = Math.ceil(count / MAX_WORKGROUPS_PER_DIM);
  if (y <= MAX_WORKGROUPS_PER_DIM) return [Math.ceil(count / y), y, 1];
  const z = Math.ceil(y / MAX_WORKGROUPS_PER_DIM);
  return [MAX_WORKGROUPS_PER_DIM, Math.ceil(y / z), z];
}

function beginBatch(dev: GPUDevice): GPUCommandEncoder {
  if (!encoder) {
    dev.pushErrorScope("validation");
    encoder = dev.createCommandEncoder();
  }
  return encoder;
}

function uniformSlot(dev: GPUDevice, params: Uint32Array): { offset: number; size: number } {
  const align = Math.max(dev.limits.minUniformBufferOffsetAlignment, 16);
  const size = Math.max(16, Math.ceil(params.byteLength / 16) * 16);
  let offset = Math.ceil(arenaUsed / align) * align;
  if (offset + size > ARENA_BYTES) {
    flush();
    offset = 0;
  }
  arenaCpu.set(new Uint8Array(params.buffer, params.byteOffset, params.byteLength), offset);
  arenaUsed = offset + size;
  return { offset, size };
}

/** Runtime knobs, for tests. */
export const runtimeSettings: {
  /**
   * Largest storage binding in bytes the engine uses, 0 for the device's `maxStorageBufferBindingSize`.
   * Tests set a small value so that the paths splitting large tensors into bound windows run on small data.
   */
  maxBindingBytes: number;
} = { maxBindingBytes: 0 };

/** The largest storage binding ops may use, in bytes (a multiple of 16). */
export function maxBindingBytes(): number {
  const device = limit("maxStorageBufferBindingSize");
  const chosen = runtimeSettings.maxBindingBytes > 0
    ? Math.min(runtimeSettings.maxBindingBytes, device)
    : device;
  return Math.floor(chosen / 16) * 16;
}

/** A bound part of a buffer: bytes [offset, offset + size), offset a multiple of the storage alignment. */
export type BufferWindow = { buffer: GPUBuffer; offset: number; size: number };

/** A storage binding: a whole buffer or a window of one. */
export type Binding = GPUBuffer | BufferWindow;

/**
 * The binding of elements [first, end) of `buffer` (4-byte elements): the whole buffer when it fits a
 * binding, else a window starting at or before `first` on the storage-offset alignment. `shift` is the
 * element index of the binding's start, to be subtracted from the element offsets the kernel gets.
 * Throws when the range does not fit one binding.
 */
export function bindRange(
  buffer: GPUBuffer,
  first: number,
  end: number,
): { binding: Binding; shift: number } {
  const max = maxBindingBytes();
  if (buffer.size <= max) return { binding: buffer, shift: 0 };
  const align = limit("minStorageBufferOffsetAlignment");
  const start = Math.floor((first * 4) / align) * align;
  const stop = Math.min(buffer.size, Math.max(start + 4, Math.ceil((end * 4) / 4) * 4));
  if (stop - start > max) {
    throw new Error(
      `elements [${first}, ${end}) span ${stop - start} bytes, more than one storage binding ` +
        `(${max} bytes) can hold.`,
    );
  }
  return { binding: { buffer, offset: start, size: stop - start }, shift: start / 4 };
}

/** Elements a window can hold for a range starting anywhere (the largest binding less the alignment). */
export function windowElements(): number {
  return Math.floor((maxBindingBytes() - limit("minStorageBufferOffsetAlignment")) / 4);
}

/**
 * Records one dispatch of `kernel`. `params` fills the uniform block (binding 0); `buffers` bind to
 * 1..n (whole buffers, or windows from {@linkcode bindRange}). `workgroups` is either a 1-D count (folded
 * into 2-D/3-D when over the per-dimension limit; the kernel must use `linear_workgroup`) or an explicit
 * grid. A whole buffer larger than the largest binding is an error: the op must split its work.
 */
export function dispatch(
  kernel: Kernel,
  params: Uint32Array,
  buffers: readonly Binding[],
  workgroups: number | [number, number, number],
): void {
  if (buffers.length !== kernel.bindings.length) {
    throw new Error(
      `dispatch(${kernel.key}): ${buffers.length} buffers for ${kernel.bindings.length} bindings`,
    );
  }
  const max = maxBindingBytes();
  buffers.forEach((b, i) => {
    const bytes = b.size;
    if (bytes > max) {
      throw new Error(
        `${kernel.family}: binding ${i + 1} would bind ${bytes} bytes, more ` +
          `than the largest storage binding (${max} bytes, the device's maxStorageBufferBindingSize or ` +
          `runtimeSettings.maxBindingBytes); this op cannot split a tensor that large.`,
      );
    }
  });
  const grid = typeof workgroups === "number" ? foldGrid(workgroups) : workgroups;
  if (grid[0] * grid[1] * grid[2] === 0) return;
  const dev = device();
  const { pipeline, layout } = compile(dev, kernel);
  if (!arena) {
    arena = dev.createBuffer({ size: ARENA_BYTES, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
  }
  // Profiling: one pass per dispatch, its start and end timestamped (see engine/profile.ts). A full query
  // set is resolved by a submit first (before this dispatch takes its uniform slot).
  let writes: GPUComputePassTimestampWrites | null = null;
  if (profiling()) {
    writes = passTimestamps(kernel.family);
    if (!writes) {
      flush();
      writes = passTimestamps(kernel.family)!;
    }
  }
  const slot = uniformSlot(dev, params);
  const enc = beginBatch(dev);
  const entries: GPUBindGroupEntry[] = [{
    binding: 0,
    resource: { buffer: arena, offset: slot.offset, size: slot.size },
  }];
  buffers.forEach((b, i) =>
    entries.push({ binding: i + 1, resource: b instanceof GPUBuffer ? { buffer: b } : b })
  );
  const bindGroup = dev.createBindGroup({ layout, entries });
  if (writes) {
    if (pass) pass.end();
    pass = enc.beginComputePass({ timestampWrites: writes });
  }
  if (!pass) pass = enc.beginComputePass();
  pass.setPipeline(pipeline);
  pass.setBindGroup(0, bindGroup);
  pass.dispatchWorkgroups(grid[0], grid[1], grid[2]);
  if (writes) {
    pass.end();
    pass = null;
  }
  stats.dispatches++;
  if (++dispatchesInBatch >= MAX_DISPATCHES_PER_SUBMIT) flush();
}

/** Records a buffer-to-buffer copy in the current batch. */
export function copyBuffer(
  src: GPUBuffer,
  srcOffset: number,
  dst: GPUBuffer,
  dstOffset: number,
  bytes: number,
): void {
  const dev = device();
  const enc = beginBatch(dev);
  if (pass) {
    pass.end();
    pass = null;
  }
  enc.copyBufferToBuffer(src, srcOffset, dst, dstOffset, bytes);
}

/** Uploads `data` into `buffer` at `byteOffset` (ordered before any command not yet submitted). */
export function upload(buffer: GPUBuffer, byteOffset: number, data: ArrayBufferView): void {
  device().queue.writeBuffer(
    buffer,
    byteOffset,
    data.buffer as ArrayBuffer,
    data.byteOffset,
    data.byteLength,
  );
}

/** Submits everything recorded so far. */
export function flush(): void {
  if (!encoder) {
    afterSubmit(); // nothing recorded: released buffers are already free to reuse
    return;
  }
  const dev = device();
  if (pass) {
    pass.end();
    pass = null;
  }
  if (arenaUsed > 0 && arena) dev.queue.writeBuffer(arena, 0, arenaCpu.buffer, 0, arenaUsed);
  resolveTimestamps(encoder);
  dev.queue.submit([encoder.finish()]);
  pendingChecks.push(
    dev.popErrorScope().then((error) => error ? `WebGPU validation error: ${error.message}` : null),
  );
  encoder = null;
  arenaUsed = 0;
  dispatchesInBatch = 0;
  stats.submits++;
  afterSubmit();
}

// The pool submits the recorded work when that lets it reuse a released buffer instead of creating one.
setSubmitHook(flush);

async function throwPendingErrors(): Promise<void> {
  if (pendingChecks.length === 0) return;
  const checks = pendingChecks;
  pendingChecks = [];
  const messages = (await Promise.all(checks)).filter((m): m is string => m !== null);
  if (messages.length > 0) throw new Error(messages.join("\n"));
}

/** Submits pending work, waits for the GPU to finish it, and throws any error it produced. */
export async function sync(): Promise<void> {
  flush();
  await device().queue.onSubmittedWorkDone();
  await throwPendingErrors();
}

/** Copies `bytes` bytes of `buffer` from `byteOffset` back to the CPU. Flushes pending work first. */
export async function readBuffer(buffer: GPUBuffer, byteOffset: number, bytes: number): Promise<ArrayBuffer> {
  const dev = device();
  const size = Math.max(4, Math.ceil(bytes / 4) * 4);
  const staging = dev.createBuffer({ size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
  try {
    if (bytes > 0) copyBuffer(buffer, byteOffset, staging, 0, size);
    flush();
    await throwPendingErrors();
    await staging.mapAsync(GPUMapMode.READ);
    return staging.getMappedRange(0, size).slice(0, bytes);
  } finally {
    staging.destroy();
  }
}

/** Counters of recorded dispatches, submits and compiled pipelines (for benchmarks and tests). */
export function runtimeStats(): { dispatches: number; submits: number; pipelines: number } {
  return { ...stats };
}
