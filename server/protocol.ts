/**
 * Types shared by the HTTP side of the server and the GPU worker: what a job asks for, what the worker
 * reports back, and the worker's Comlink interface.
 *
 * @module
 */

/** A sampler name or alias (samplers/registry.ts has the list). */
export type SamplerName = string;

/** Highest queue priority a request may ask for (0 is the default and lowest). */
export const MAX_PRIORITY = 100;

/** An adapter applied on top of the model, with its weight. */
export interface AdapterChoice {
  /** Adapter name: a file `<data>/adapters/<name>.safetensors`. */
  name: string;
  /** Scale of the adapter's update (1 = as trained). */
  weight: number;
}

/** A control module steering the model, with its condition volumes (names of uploads) and scale. */
export interface ControlChoice {
  /** Control module name: a file `<data>/controls/<name>.safetensors`. */
  name: string;
  /** One uploaded condition volume per condition of the module, in its order (null: absent, VCM only). */
  conditions: Array<string | null>;
  /** Strength of the control (1 = as trained). */
  scale: number;
  /**
   * The condition volumes themselves (base64 NIfTI, null where absent), filled in from the uploads when the
   * request is accepted: they travel with the request, so any worker host can run it and a stored request
   * can run again after the upload is replaced.
   */
  volumes?: Array<string | null>;
}

/** A validated sample request with every default filled in (stored with the job, so it can be rerun). */
export interface SampleRequest {
  /** Model name ("default" is the embedded model). */
  model: string;
  /** Adapters, applied in order. */
  adapters: AdapterChoice[];
  /** Sampler. */
  sampler: SamplerName;
  /** Denoising steps. */
  steps: number;
  /** Seed of all the noise (0 ≤ seed < 2^53); chosen at random when the request has none. */
  seed: number;
  /** Classifier-free guidance scale (1 = none). */
  guidanceScale: number;
  /** Volumes to generate. */
  batch: number;
  /** Queue priority 0…100: higher runs first, equal ones in order of submission (default 0). */
  priority?: number;
  /** A control module and its conditions (absent: uncontrolled). */
  control?: ControlChoice;
  /** Prompt, for a model with a token table ("" = the null prompt). */
  prompt?: string;
  /** Class label, for a class-conditional model. */
  classLabel?: number;
  /** Textual-inversion embeddings (names in `<data>/embeddings/`) whose tokens the prompt may use. */
  embeddings?: string[];
  /** Condition volumes (base64 NIfTI, one volume per channel), for a model trained with them. */
  condition?: string;
  /** Inpainting: the kept image and the mask. */
  inpaint?: InpaintChoice;
  /**
   * Storage precision of the U-Net's weights and activations, "f32" (absent) or "f16" (half the GPU memory,
   * f32 arithmetic; needs a GPU with `shader-f16`).
   */
  precision?: "f32" | "f16";
}

/**
 * Inpainting inputs of a request. The volumes travel with the request (base64 NIfTI), so that any worker
 * host can run it and a stored request can run again.
 */
export interface InpaintChoice {
  /** The kept image: base64 of a `.nii`/`.nii.gz` on the model's grid (an upload or a finished job's result). */
  image: string;
  /** The finished job the image came from, when it did. */
  fromJob?: string;
  /** Volume of a 4-D image (a batch result) to use. */
  index: number;
  /** The mask (non-zero = generate): base64 NIfTI, or a sphere in voxels. */
  mask: string | { center: [number, number, number]; radius: number };
  /** How the image reaches the model's intensity range (see pipelines/inpaint.ts). */
  normalize: "auto" | "none" | "percentile";
}

/** Everything the worker needs to run a job: the request with names resolved to files. */
export interface WorkerJob {
  /** Job id (names the result files). */
  id: string;
  /** The request. */
  request: SampleRequest;
  /** Absolute path of the model file. */
  modelPath: string;
  /** Absolute paths and weights of the adapters. */
  adapters: Array<{ path: string; weight: number }>;
  /**
   * The control module's file, its conditions (names, for messages, and base64 NIfTI volumes; null: absent)
   * and the scale.
   */
  control?: { path: string; conditions: Array<{ name: string; nifti: string } | null>; scale: number };
  /** Absolute paths of the embeddings (absent: none). */
  embeddings?: string[];
  /** Directory the result files go to. */
  resultsDir: string;
}

/** What a finished job produced. */
export interface JobResult {
  /** Spatial size [nx, ny, nz] of each volume. */
  shape: [number, number, number];
  /** Volumes in the file (a batch of several is one 4-D NIfTI, t = batch index). */
  batch: number;
  /** NIfTI file name inside the results directory. */
  nifti: string;
  /** PNG preview file name inside the results directory. */
  png: string;
  /** Size of the NIfTI file in bytes. */
  bytes: number;
  /** Seconds the worker spent on the job (model load, sampling, writing). */
  seconds: number;
}

/** Progress of a running job. */
export interface WorkerProgress {
  /** Steps done. */
  step: number;
  /** Total steps. */
  total: number;
}

/** The adapter the worker's device runs on. */
export interface WorkerDevice {
  /** Adapter name, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)". */
  adapter: string;
  /** Vendor string. */
  vendor: string;
  /** True for software adapters. */
  isFallbackAdapter: boolean;
}

/** The GPU worker's interface (exposed with Comlink). */
export interface WorkerApi {
  /** Acquires the GPU device; rejects with the reason when there is none. */
  init(): Promise<WorkerDevice>;
  /** Runs one job to completion; progress goes to `onProgress`. Rejects on failure or cancellation. */
  run(job: WorkerJob, onProgress: (p: WorkerProgress) => void): Promise<JobResult>;
  /** Asks the running job `id` to stop at its next step. */
  cancel(id: string): void;
  /**
   * Frees the cached model, waits for the GPU's submitted work, and destroys the device; resolves once it is
   * destroyed. The worker takes no job after this.
   */
  close(): Promise<void>;
}
