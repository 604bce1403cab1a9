/**
 * The GPU worker seen from the main thread: {@linkcode GpuRunner} keeps one Web Worker running
 * `worker.ts` (through its Comlink {@linkcode WorkerApi}), runs jobs on it one at a time, stops them on
 * request, and replaces the worker when it crashes or loses its device. Both the single-machine queue
 * (`queue_local.ts`) and a GPU worker host (`host.ts`) run their jobs through it.
 *
 * @module
 */

import * as Comlink from "comlink";
import { ApiError } from "./errors.ts";
import type { Catalog } from "./catalog.ts";
import type {
  JobResult,
  SampleRequest,
  WorkerApi,
  WorkerDevice,
  WorkerJob,
  WorkerProgress,
} from "./protocol.ts";

/** State of the GPU worker, as `/healthz` reports it ("no_workers": a queue with no worker host alive). */
export type WorkerState = "starting" | "ready" | "restarting" | "unavailable" | "no_workers";

/** Turns a request's names into files (fails with an ApiError when a model, adapter, embedding or control has gone). */
export type ResolveFiles = (
  request: SampleRequest,
) => Promise<Pick<WorkerJob, "modelPath" | "adapters" | "embeddings" | "control">>;

/** The resolver of a catalog: model, adapter, embedding, control and condition names to their files. */
export function catalogFiles(catalog: Catalog): ResolveFiles {
  return async (request) => ({
    modelPath: (await catalog.model(request.model)).path,
    adapters: await Promise.all(
      request.adapters.map(async (a) => ({ path: await catalog.adapter(a.name), weight: a.weight })),
    ),
    ...(request.control
      ? {
        control: {
          path: await catalog.control(request.control.name),
          conditions: request.control.conditions.map((name, i) => {
            const nifti = request.control!.volumes?.[i];
            if (name === null) return null;
            if (!nifti) {
              throw new ApiError(
                422,
                "invalid_value",
                `control condition "${name}" was not carried in the request (stored before conditions ` +
                  "traveled with requests); submit it again.",
              );
            }
            return { name, nifti };
          }),
          scale: request.control.scale,
        },
      }
      : {}),
    embeddings: await Promise.all(
      (request.embeddings ?? []).map(async (n) => (await catalog.embedding(n)).path),
    ),
  });
}

/** True for the error a job rejects with when it was stopped on request (its worker is still sound). */
export function isCancelled(error: unknown): boolean {
  return (error as Error)?.name === "CancelledError";
}

/** A Web Worker running `worker.ts`, with a promise that rejects when it dies. */
class GpuWorker {
  readonly #worker: Worker;
  readonly #api: Comlink.Remote<WorkerApi>;
  readonly #died: Promise<never>;
  #kill!: (error: Error) => void;
  #terminated = false;
  device: WorkerDevice | null = null;

  /** @param onDeath called when the worker dies by itself (an uncaught error, a crash). */
  constructor(onDeath: (error: Error) => void) {
    this.#worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
    this.#died = new Promise<never>((_, reject) => (this.#kill = reject));
    this.#died.catch(() => {}); // observed by whoever races it
    this.#worker.addEventListener("error", (event) => {
      // Without preventDefault an error in a worker takes the whole process down.
      event.preventDefault();
      const error = new Error(`the GPU worker crashed: ${event.message}`);
      this.#kill(error);
      onDeath(error);
    });
    this.#api = Comlink.wrap<WorkerApi>(this.#worker);
  }

  async init(): Promise<WorkerDevice> {
    this.device = await this.#race(this.#api.init());
    return this.device;
  }

  run(job: WorkerJob, onProgress: (p: WorkerProgress) => void): Promise<JobResult> {
    return this.#race(this.#api.run(job, Comlink.proxy(onProgress)));
  }

  cancel(id: string): void {
    this.#api.cancel(id).catch(() => {});
  }

  /**
   * Lets an idle worker free its GPU device (for at most `ms`), then terminates it — or, with `keepThread`,
   * leaves its thread idle for a process that exits next (see {@linkcode GpuRunnerOptions.exitAfterClose}).
   */
  async close(ms: number, keepThread = false): Promise<void> {
    if (this.#terminated) return;
    await within(this.#race(this.#api.close()), ms).catch(() => {});
    if (!keepThread) return this.terminate();
    // Even when the device was not freed in time, no teardown is safer than one racing the exit.
    this.#terminated = true;
    this.#api[Comlink.releaseProxy]();
  }

  terminate(reason = "the GPU worker was stopped"): void {
    if (this.#terminated) return;
    this.#terminated = true;
    this.#kill(new Error(reason));
    this.#api[Comlink.releaseProxy]();
    this.#worker.terminate();
  }

  #race<T>(p: Promise<T>): Promise<T> {
    return Promise.race([p, this.#died]);
  }
}

/** Options of {@linkcode GpuRunner}. */
export interface GpuRunnerOptions {
  /** After a stop request, how long a job may take to stop before its worker is killed (default 10 s). */
  stopTimeoutMs?: number;
  /** Log sink (default console.error). */
  log?: (message: string) => void;
  /**
   * The process exits (`Deno.exit`) right after {@linkcode GpuRunner.close}: close then leaves the worker's
   * thread idle, its device destroyed, instead of terminating it. Terminating a worker tears its runtime
   * down on its own thread, which unloads the Vulkan driver (dlclose); when that overlaps the process's exit
   * handlers on the main thread, exit calls a handler of the library being unmapped: SIGSEGV, exit code
   * 139 after a clean shutdown (server/README.md, operations). Default false: close terminates the worker,
   * so an in-process user (a test) can end without `Deno.exit`.
   */
  exitAfterClose?: boolean;
}

/** One GPU worker, replaced when it fails, running one job at a time. */
export class GpuRunner {
  readonly #stopTimeoutMs: number;
  readonly #log: (message: string) => void;
  readonly #exitAfterClose: boolean;
  #worker: GpuWorker | null = null;
  #starting: Promise<GpuWorker> | null = null;
  #running: { id: string; worker: GpuWorker; settled: Promise<void> } | null = null;
  #closed = false;
  /** Worker state. */
  state: WorkerState = "starting";
  /** Why the worker is unavailable. */
  error: string | undefined;
  /** Times the worker was replaced after a failure. */
  restarts = 0;

  /** A runner; the worker starts with the first {@linkcode GpuRunner.ready} or job. */
  constructor(opts: GpuRunnerOptions = {}) {
    this.#stopTimeoutMs = opts.stopTimeoutMs ?? 10_000;
    this.#log = opts.log ?? ((m) => console.error(m));
    this.#exitAfterClose = opts.exitAfterClose ?? false;
  }

  /** The worker's GPU adapter, once known. */
  get device(): WorkerDevice | null {
    return this.#worker?.device ?? null;
  }

  /** Id of the running job, or null. */
  get running(): string | null {
    return this.#running?.id ?? null;
  }

  /** Starts the worker if needed; rejects when there is no GPU. */
  async ready(): Promise<WorkerDevice> {
    return (await this.#ensureWorker()).device!;
  }

  /**
   * Runs one job on the worker. Rejects when it fails, when it was stopped ({@linkcode isCancelled}), or
   * when there is no GPU. After a failure that is not a stop request the worker is replaced.
   */
  async run(job: WorkerJob, onProgress: (p: WorkerProgress) => void): Promise<JobResult> {
    const worker = await this.#ensureWorker();
    if (this.#running) throw new Error(`the GPU worker is busy with job ${this.#running.id}`);
    let settle!: () => void;
    this.#running = { id: job.id, worker, settled: new Promise<void>((resolve) => (settle = resolve)) };
    try {
      return await worker.run(job, onProgress);
    } catch (error) {
      if (!isCancelled(error)) this.#replace(worker, (error as Error).message);
      throw error;
    } finally {
      this.#running = null;
      settle();
    }
  }

  /** Asks job `id` to stop at its next step; kills its worker when it has not stopped after the stop timeout. */
  stop(id: string): void {
    const running = this.#running;
    if (running?.id !== id) return;
    running.worker.cancel(id);
    const timer = setTimeout(() => {
      if (this.#running !== running) return;
      this.#log(`job ${id} did not stop: killing its worker`);
      this.#replace(running.worker, "killed after a cancel timeout");
    }, this.#stopTimeoutMs);
    running.settled.then(() => clearTimeout(timer));
  }

  /**
   * Lets the idle worker free its device (at most `ms`), then terminates it (unless
   * {@linkcode GpuRunnerOptions.exitAfterClose}); no job runs after this. A worker still starting (a
   * replacement) is waited for, at most `ms`, and closed the same way.
   */
  async close(ms = 2_000): Promise<void> {
    this.#closed = true;
    const starting = this.#starting;
    let worker = this.#worker;
    this.#worker = null;
    if (!worker && starting) {
      const started = starting.catch(() => null);
      if (await within(started, ms)) worker = await started;
      else void started.then((w) => w?.terminate());
    }
    await worker?.close(ms, this.#exitAfterClose);
  }

  #replace(worker: GpuWorker, reason: string): void {
    worker.terminate(`the GPU worker was replaced (${reason})`);
    if (this.#worker !== worker) return;
    this.#worker = null;
    this.restarts++;
    this.state = "restarting";
    if (!this.#closed) this.#ensureWorker().catch(() => {});
  }

  #ensureWorker(): Promise<GpuWorker> {
    if (this.#closed) return Promise.reject(new Error("the GPU worker was stopped"));
    if (this.#worker) return Promise.resolve(this.#worker);
    if (!this.#starting) {
      const worker: GpuWorker = new GpuWorker((error) => this.#replace(worker, error.message));
      this.#starting = worker.init().then(
        () => {
          this.#worker = worker;
          this.state = "ready";
          this.error = undefined;
          return worker;
        },
        (error) => {
          worker.terminate();
          this.state = "unavailable";
          this.error = (error as Error).message;
          this.#log(`the GPU worker could not start: ${this.error}`);
          throw error;
        },
      ).finally(() => (this.#starting = null));
    }
    return this.#starting;
  }
}

/** Whether `p` settles within `ms` (the timer is cleared either way, so it never holds the process open). */
export async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([p.then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
