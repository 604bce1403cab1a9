/**
 * The GPU worker: owns the WebGPU device, loads models, samples, and writes the result files. It runs in a
 * Web Worker because a GPU readback in Deno blocks the JS thread for the whole GPU job; the main thread
 * stays free to answer HTTP. The main thread talks to it through Comlink ({@linkcode WorkerApi}).
 *
 * Test hook: `VOXGEN_TEST_FAULTS="<seed>:<fault>,…"` makes jobs with those seeds destroy the GPU device
 * (`lose-device`) or throw an uncaught error (`crash`) after their first step, or destroy the device just
 * after they finished (`lose-device-idle`) — how the tests check that the server survives a lost device
 * and a dying worker.
 *
 * @module
 */

import * as Comlink from "comlink";
import { gpu, onDeviceLost, ready } from "../engine/device.ts";
import { releaseCachedMemory } from "../engine/memory.ts";
import { readNifti } from "../io/nifti.ts";
import { generate, type GenerationRequest, type Generator } from "../pipelines/generate.ts";
import { prepareInpainting, sphereMask } from "../pipelines/inpaint.ts";
import { loadGenerator, loadModelWithEmbeddings } from "../pipelines/generators.ts";
import { controlledGenerator } from "../pipelines/control.ts";
import { writeStackedFiles } from "../pipelines/output.ts";
import type {
  InpaintChoice,
  JobResult,
  WorkerApi,
  WorkerDevice,
  WorkerJob,
  WorkerProgress,
} from "./protocol.ts";

let lostReason: string | null = null;
/** Set by `close`: the device is being destroyed on purpose, which is not a loss. */
let closing = false;
let current: { id: string; controller: AbortController } | null = null;
/** The last base model used, kept loaded for the next job (jobs usually share a model). */
let cached: { key: string; model: Generator } | null = null;

const api: WorkerApi = {
  async init(): Promise<WorkerDevice> {
    const info = await ready();
    onDeviceLost((reason) => {
      if (closing) return;
      lostReason = reason;
      if (current) {
        current.controller.abort();
        return;
      }
      // Idle: die loudly, so the main thread replaces this worker before it is given a job.
      setTimeout(() => {
        throw new Error(`the GPU device was lost (${reason})`);
      });
    });
    return { adapter: info.adapter, vendor: info.vendor, isFallbackAdapter: info.isFallbackAdapter };
  },

  async run(job: WorkerJob, onProgress: (p: WorkerProgress) => void): Promise<JobResult> {
    if (current) throw new Error(`the worker is busy with job ${current.id}`);
    if (lostReason) throw new Error(`the GPU device was lost (${lostReason})`);
    const controller = new AbortController();
    current = { id: job.id, controller };
    try {
      return await runJob(job, controller.signal, onProgress);
    } catch (error) {
      if (lostReason) throw new Error(`the GPU device was lost (${lostReason})`);
      if (controller.signal.aborted) {
        // The name survives Comlink's error transfer: it tells the main thread this worker is still sound.
        const cancelled = new Error("the job was stopped on request");
        cancelled.name = "CancelledError";
        throw cancelled;
      }
      throw error;
    } finally {
      current = null;
      (onProgress as unknown as Comlink.Remote<unknown>)[Comlink.releaseProxy]?.();
    }
  },

  cancel(id: string): void {
    if (current?.id === id) current.controller.abort();
  },

  async close(): Promise<void> {
    // Releasing the device here, in order, rather than leaving it to thread teardown at process exit: a
    // software Vulkan driver's threads can still be running then. Submitted work (a stopped job's last
    // step) finishes first, so the driver is idle when the device goes.
    closing = true;
    cached?.model.dispose();
    cached = null;
    releaseCachedMemory();
    if (lostReason) return;
    const device = gpu();
    await device.queue.onSubmittedWorkDone();
    device.destroy();
    await device.lost;
  },
};

// Expose before any await, so no message from the main thread arrives before the handler exists.
Comlink.expose(api);

async function runJob(
  job: WorkerJob,
  signal: AbortSignal,
  onProgress: (p: WorkerProgress) => void,
): Promise<JobResult> {
  const start = performance.now();
  const { request } = job;
  const fault = injectedFault(request.seed);
  const model = await acquireModel(job);
  try {
    const generated = await generate(model, {
      sampler: request.sampler,
      steps: request.steps,
      seed: request.seed,
      batch: request.batch,
      guidanceScale: request.guidanceScale,
      prompt: request.prompt,
      classLabel: request.classLabel,
      inpaint: request.inpaint ? await inpaintInputs(request.inpaint, model) : undefined,
      condition: request.condition ? (await readNifti(fromBase64(request.condition))).data : undefined,
      signal,
      onProgress: (p) => {
        // Fire and forget: a round trip per step would slow sampling for nothing.
        Promise.resolve(onProgress({ step: p.step, total: p.total })).catch(() => {});
        if (p.step === 1 && (fault === "lose-device" || fault === "crash")) injectFault(fault);
      },
    });
    const nifti = `${job.id}.nii.gz`;
    const png = `${job.id}.png`;
    await writeStackedFiles(generated, `${job.resultsDir}/${nifti}`, `${job.resultsDir}/${png}`, {
      description: `voxgen ${request.model} ${request.sampler} ${request.steps} steps seed ${request.seed}`,
    });
    const { size } = await Deno.stat(`${job.resultsDir}/${nifti}`);
    if (fault === "lose-device-idle") setTimeout(() => injectFault("lose-device"), 100);
    return {
      shape: generated.shape,
      batch: request.batch,
      nifti,
      png,
      bytes: size,
      seconds: (performance.now() - start) / 1000,
    };
  } finally {
    if (model !== cached?.model) model.dispose();
  }
}

function fromBase64(b64: string): Uint8Array {
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

/** The inpainting request's image and mask (base64 NIfTI in the request, or a sphere). */
async function inpaintInputs(choice: InpaintChoice, model: Generator): Promise<GenerationRequest["inpaint"]> {
  const decode = (b64: string) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const image = await readNifti(decode(choice.image));
  const mask = typeof choice.mask === "string" ? await readNifti(decode(choice.mask)) : {
    data: sphereMask(model.volume.shape, choice.mask.center, choice.mask.radius),
    shape: model.volume.shape,
  };
  return prepareInpainting(image, mask, model.volume, { normalize: choice.normalize, index: choice.index }, {
    image: "inpaint.image",
    mask: "inpaint.mask",
  });
}

/**
 * The job's model: the cached base model when it has no adapters, embeddings or control, otherwise a fresh
 * copy with them merged or added and the control module wrapped around it.
 */
async function acquireModel(job: WorkerJob): Promise<Generator> {
  if (job.control) {
    const { path, conditions, scale } = job.control;
    const volumes = await Promise.all(conditions.map(async (c) => {
      if (c === null) return null;
      const nii = await readNifti(fromBase64(c.nifti));
      return { data: nii.data, shape: nii.shape, source: c.name };
    }));
    const { model, vectors } = await loadModelWithEmbeddings(job.modelPath, {
      adapters: job.adapters,
      embeddings: job.embeddings,
    });
    return await controlledGenerator(model, { file: path, conditions: volumes, scale }, vectors);
  }
  const stat = await Deno.stat(job.modelPath);
  const key = `${job.modelPath}:${stat.mtime?.getTime()}:${stat.size}`;
  const plain = job.adapters.length === 0 && (job.embeddings ?? []).length === 0;
  if (plain && cached?.key === key) return cached.model;
  const model = await loadGenerator(job.modelPath, { adapters: job.adapters, embeddings: job.embeddings });
  if (!plain) return model;
  cached?.model.dispose();
  cached = { key, model };
  return model;
}

type Fault = "lose-device" | "lose-device-idle" | "crash";
const FAULTS: readonly string[] = ["lose-device", "lose-device-idle", "crash"];

function injectedFault(seed: number): Fault | null {
  const spec = Deno.env.get("VOXGEN_TEST_FAULTS");
  if (!spec) return null;
  for (const entry of spec.split(",")) {
    const [s, kind] = entry.split(":");
    if (Number(s) === seed && FAULTS.includes(kind)) return kind as Fault;
  }
  return null;
}

function injectFault(fault: Fault): void {
  if (fault === "lose-device") {
    gpu().destroy();
    return;
  }
  // Thrown outside any promise: an uncaught error, which ends the worker.
  setTimeout(() => {
    throw new Error("injected worker crash (VOXGEN_TEST_FAULTS)");
  });
}
