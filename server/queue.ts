/**
 * The job queue and the GPU worker that runs it. Jobs run one at a time, in submission order, from a
 * bounded queue; their state lives in the {@linkcode JobStore}, and listeners (the SSE streams) hear every
 * change. A job that fails takes its worker with it: the worker is replaced by a fresh one (a new GPU
 * device, no state left over from the failure) and the next job runs there.
 *
 * @module
 */

import * as Comlink from "comlink";
import { ApiError } from "./errors.ts";
import type {
  JobResult,
  SampleRequest,
  WorkerApi,
  WorkerDevice,
  WorkerJob,
  WorkerProgress,
} from "./protocol.ts";
import { FINAL_STATES, type Job, type JobStore } from "./store.ts";

/** A change to a job, as SSE listeners receive it. */
export type JobEvent =
  | { type: "state"; job: Job }
  | { type: "progress"; job: Job; step: number; total: number };

/** State of the GPU worker, as `/healthz` reports it. */
export type WorkerState = "starting" | "ready" | "restarting" | "unavailable";

/** What `/healthz` shows about the queue and the worker. */
export interface QueueHealth {
  /** Worker state. */
  worker: WorkerState;
  /** The worker's GPU adapter, once known. */
  device: WorkerDevice | null;
  /** Why the worker is unavailable. */
  workerError?: string;
  /** Times the worker was replaced after a failure. */
  workerRestarts: number;
  /** Jobs waiting. */
  depth: number;
  /** Most jobs that may wait. */
  capacity: number;
  /** Id of the running job, or null. */
  running: string | null;
}

/** Options of {@linkcode JobQueue}. */
export interface QueueOptions {
  /** Most jobs that may wait (the running one not counted). */
  capacity: number;
  /** Where workers write result files. */
  resultsDir: string;
  /** Turns a request's names into files (fails when a model or adapter has gone). */
  resolve: (request: SampleRequest) => Promise<Pick<WorkerJob, "modelPath" | "adapters">>;
  /** After a cancel or shutdown request, how long a job may take to stop before its worker is killed. */
  stopTimeoutMs?: number;
  /** Log sink (default console.error). */
  log?: (message: string) => void;
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

  /** Starts the worker and its GPU device. */
  async init(): Promise<WorkerDevice> {
    this.device = await this.#race(this.#api.init());
    return this.device;
  }

  /** Runs a job; rejects when the job fails or the worker dies. */
  run(job: WorkerJob, onProgress: (p: WorkerProgress) => void): Promise<JobResult> {
    return this.#race(this.#api.run(job, Comlink.proxy(onProgress)));
  }

  /** Asks the running job to stop at its next step. */
  cancel(id: string): void {
    this.#api.cancel(id).catch(() => {});
  }

  /** Lets an idle worker free its GPU device (for at most `ms`), then terminates it. */
  async close(ms: number): Promise<void> {
    if (!this.#terminated) await within(this.#race(this.#api.close()).catch(() => {}), ms);
    this.terminate();
  }

  /** Stops the worker at once; a running job rejects. */
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

interface Running {
  job: Job;
  worker: GpuWorker;
  cancel: boolean;
  requeue: boolean;
  settled: Promise<void>;
}

const nowIso = (): string => new Date().toISOString();

/** The bounded job queue with its GPU worker. */
export class JobQueue {
  readonly #store: JobStore;
  readonly #opts: Required<QueueOptions>;
  readonly #pending: string[] = [];
  readonly #listeners = new Map<string, Set<(e: JobEvent) => void>>();
  #running: Running | null = null;
  #worker: GpuWorker | null = null;
  #starting: Promise<GpuWorker> | null = null;
  #workerState: WorkerState = "starting";
  #workerError: string | undefined;
  #restarts = 0;
  #stopping = false;
  #wake: (() => void) | null = null;
  #loop: Promise<void> | null = null;
  /** Recent job duration (exponential average), for Retry-After. */
  #averageSeconds = 10;

  /** A queue over `store` (call {@linkcode JobQueue.start} to start running jobs). */
  constructor(store: JobStore, opts: QueueOptions) {
    this.#store = store;
    this.#opts = { stopTimeoutMs: 10_000, log: (m) => console.error(m), ...opts };
  }

  /**
   * Starts the worker (rejecting when there is no GPU), then runs the jobs left queued — or interrupted —
   * by the previous server, and everything submitted from now on.
   */
  async start(): Promise<WorkerDevice> {
    const worker = await this.#ensureWorker();
    for (const job of this.#store.unfinished()) this.#pending.push(job.id);
    if (this.#pending.length > 0) this.#opts.log(`resuming ${this.#pending.length} queued job(s)`);
    this.#loop = this.#run();
    return worker.device!;
  }

  /** Queues a request; 429 with Retry-After when the queue is full, 503 while shutting down. */
  submit(request: SampleRequest): Job {
    if (this.#stopping) throw new ApiError(503, "shutting_down", "The server is shutting down.");
    if (this.#pending.length >= this.#opts.capacity) {
      const wait = Math.max(1, Math.ceil(this.#averageSeconds * (this.#pending.length + 1)));
      throw new ApiError(
        429,
        "queue_full",
        `The queue is full (${this.#opts.capacity} jobs waiting); try again in about ${wait} s.`,
        { "Retry-After": String(wait) },
      );
    }
    const job: Job = { id: crypto.randomUUID(), status: "queued", progress: 0, createdAt: nowIso(), request };
    this.#store.insert(job);
    this.#pending.push(job.id);
    this.#wake?.();
    return job;
  }

  /**
   * Cancels a job. A queued job is cancelled at once; a running one stops at its next step (its worker is
   * killed if it takes longer than the stop timeout). 404 for an unknown job, 409 for a finished one.
   * Resolves to the job as it is afterwards, with `settled` false when a running job has not stopped yet.
   */
  async cancel(id: string, waitMs = 5_000): Promise<{ job: Job; settled: boolean }> {
    const job = this.get(id);
    if (job.status === "queued") {
      const at = this.#pending.indexOf(id);
      if (at >= 0) this.#pending.splice(at, 1);
      this.#finish(job, "cancelled", "cancelled by request");
      return { job, settled: true };
    }
    const running = this.#running;
    if (job.status === "running" && running?.job.id === id) {
      running.cancel = true;
      this.#stopRunning(running);
      const settled = await within(running.settled, waitMs);
      const after = this.get(id);
      if (settled && after.status !== "cancelled") {
        throw new ApiError(
          409,
          "job_finished",
          `Job ${id} finished (${after.status}) before it could be cancelled.`,
        );
      }
      return { job: after, settled };
    }
    throw new ApiError(
      409,
      "job_finished",
      `Job ${id} is ${job.status}; only queued or running jobs can be cancelled.`,
    );
  }

  /** The job `id`; 404 when there is none. */
  get(id: string): Job {
    const job = this.#store.get(id);
    if (!job) throw new ApiError(404, "job_not_found", `No job ${id}.`);
    return job;
  }

  /** The most recent jobs first, optionally only those in `status`. */
  list(limit: number, status?: Job["status"]): Job[] {
    return this.#store.list(limit, status);
  }

  /** Listens to the changes of job `id`; returns the function that stops listening. */
  subscribe(id: string, listener: (e: JobEvent) => void): () => void {
    let set = this.#listeners.get(id);
    if (!set) this.#listeners.set(id, set = new Set());
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.#listeners.delete(id);
    };
  }

  /** Queue depth and worker state. */
  health(): QueueHealth {
    return {
      worker: this.#workerState,
      device: this.#worker?.device ?? null,
      ...(this.#workerError ? { workerError: this.#workerError } : {}),
      workerRestarts: this.#restarts,
      depth: this.#pending.length,
      capacity: this.#opts.capacity,
      running: this.#running?.job.id ?? null,
    };
  }

  /**
   * Stops taking jobs. The running job gets `graceMs` to finish; after that it is stopped and goes back to
   * the queue (it runs again after a restart), as do all waiting jobs. Then the worker is terminated.
   */
  async stop(graceMs: number): Promise<void> {
    this.#stopping = true;
    this.#wake?.();
    const running = this.#running;
    if (running) {
      const finished = await within(running.settled, graceMs);
      if (!finished) {
        this.#opts.log(`job ${running.job.id} did not finish within the grace period: requeued`);
        running.requeue = true;
        this.#stopRunning(running);
        await running.settled;
      }
    }
    await this.#loop;
    await this.#worker?.close(2_000);
    this.#worker = null;
    await this.#starting?.then((w) => w.terminate(), () => {});
  }

  async #run(): Promise<void> {
    let backoff = 1_000;
    while (!this.#stopping) {
      const id = this.#pending.shift();
      if (!id) {
        await new Promise<void>((resolve) => (this.#wake = resolve));
        this.#wake = null;
        continue;
      }
      let worker: GpuWorker;
      try {
        worker = await this.#ensureWorker();
        backoff = 1_000;
      } catch {
        // No GPU right now: keep the job and try again later.
        this.#pending.unshift(id);
        await within(new Promise<void>((resolve) => (this.#wake = resolve)), backoff);
        this.#wake = null;
        backoff = Math.min(2 * backoff, 30_000);
        continue;
      }
      await this.#execute(id, worker);
    }
  }

  async #execute(id: string, worker: GpuWorker): Promise<void> {
    const job = this.#store.get(id);
    if (!job || job.status !== "queued") return;
    let settle!: () => void;
    const running: Running = {
      job,
      worker,
      cancel: false,
      requeue: false,
      settled: new Promise<void>((resolve) => (settle = resolve)),
    };
    this.#running = running;
    job.status = "running";
    job.progress = 0;
    job.startedAt = nowIso();
    this.#save(job);
    try {
      const files = await this.#opts.resolve(job.request);
      const result = await worker.run({
        id,
        request: job.request,
        resultsDir: this.#opts.resultsDir,
        ...files,
      }, (p) => {
        if (job.status !== "running") return;
        job.progress = p.step / p.total;
        this.#store.save(job);
        this.#emit({ type: "progress", job, step: p.step, total: p.total });
      });
      job.result = result;
      job.progress = 1;
      this.#averageSeconds = 0.7 * this.#averageSeconds + 0.3 * result.seconds;
      this.#finish(job, "done");
    } catch (error) {
      const message = (error as Error).message;
      if (running.requeue) {
        job.status = "queued";
        job.progress = 0;
        delete job.startedAt;
        this.#save(job);
      } else if (running.cancel) {
        this.#finish(job, "cancelled", "cancelled by request");
      } else {
        this.#opts.log(`job ${id} failed: ${message}`);
        this.#finish(job, "failed", message);
      }
      // A worker that stopped a job on request stays, and so does one that never got the job (its model or
      // adapter had gone); after anything else it is replaced.
      if (!(error instanceof ApiError) && (error as Error).name !== "CancelledError") {
        this.#replaceWorker(worker, message);
      }
    } finally {
      this.#running = null;
      settle();
    }
  }

  /** Asks the running job to stop; kills its worker if it has not stopped after the stop timeout. */
  #stopRunning(running: Running): void {
    running.worker.cancel(running.job.id);
    const timer = setTimeout(() => {
      if (this.#running !== running) return;
      this.#opts.log(`job ${running.job.id} did not stop: killing its worker`);
      this.#replaceWorker(running.worker, "killed after a cancel timeout");
    }, this.#opts.stopTimeoutMs);
    running.settled.then(() => clearTimeout(timer));
  }

  #replaceWorker(worker: GpuWorker, reason: string): void {
    worker.terminate(`the GPU worker was replaced (${reason})`);
    if (this.#worker !== worker) return;
    this.#worker = null;
    this.#restarts++;
    this.#workerState = "restarting";
    if (!this.#stopping) this.#ensureWorker().catch(() => {});
  }

  #ensureWorker(): Promise<GpuWorker> {
    if (this.#worker) return Promise.resolve(this.#worker);
    if (!this.#starting) {
      const worker: GpuWorker = new GpuWorker((error) => this.#replaceWorker(worker, error.message));
      this.#starting = worker.init().then(
        () => {
          this.#worker = worker;
          this.#workerState = "ready";
          this.#workerError = undefined;
          return worker;
        },
        (error) => {
          worker.terminate();
          this.#workerState = "unavailable";
          this.#workerError = (error as Error).message;
          this.#opts.log(`the GPU worker could not start: ${this.#workerError}`);
          throw error;
        },
      ).finally(() => (this.#starting = null));
    }
    return this.#starting;
  }

  #finish(job: Job, status: Job["status"], error?: string): void {
    job.status = status;
    job.finishedAt = nowIso();
    if (error) job.error = error;
    this.#save(job);
  }

  #save(job: Job): void {
    this.#store.save(job);
    this.#emit({ type: "state", job });
  }

  #emit(event: JobEvent): void {
    const listeners = this.#listeners.get(event.job.id);
    if (!listeners) return;
    for (const listener of [...listeners]) listener(event);
    if (event.type === "state" && FINAL_STATES.includes(event.job.status)) {
      this.#listeners.delete(event.job.id);
    }
  }
}

/** Whether `p` settles within `ms` (the timer is cleared either way, so it never holds the process open). */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([p.then(() => true as const), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
