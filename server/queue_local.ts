/**
 * The single-machine job queue (the default): jobs in SQLite ({@linkcode JobStore}), one GPU worker in this
 * process ({@linkcode GpuRunner}), result files in the data directory. Jobs run one at a time, highest
 * priority first; a restart resumes the queued jobs and reruns an interrupted one.
 *
 * @module
 */

import { ApiError } from "./errors.ts";
import { GpuRunner, type ResolveFiles, within } from "./gpu.ts";
import { countJob, emptyCounters, type QueueMetrics } from "./metrics.ts";
import type { SampleRequest, WorkerDevice } from "./protocol.ts";
import {
  alreadyFinished,
  type JobEvent,
  type JobQueue,
  noSuchJob,
  queueFull,
  type QueueHealth,
  type ResultFile,
  retryAfterSeconds,
} from "./queue.ts";
import { FINAL_STATES, type Job, type JobStatus, type JobStore } from "./store.ts";

/** Options of {@linkcode LocalQueue}. */
export interface LocalQueueOptions {
  /** Most jobs that may wait (the running one not counted). */
  capacity: number;
  /** Where the worker writes result files. */
  resultsDir: string;
  /** Turns a request's names into files (fails when a model or adapter has gone). */
  resolve: ResolveFiles;
  /** After a cancel or shutdown request, how long a job may take to stop before its worker is killed. */
  stopTimeoutMs?: number;
  /** Log sink (default console.error). */
  log?: (message: string) => void;
  /** The process exits right after {@linkcode LocalQueue.stop} (see `GpuRunnerOptions.exitAfterClose`, gpu.ts). */
  exitAfterStop?: boolean;
}

interface Running {
  job: Job;
  cancel: boolean;
  requeue: boolean;
  settled: Promise<void>;
}

interface Pending {
  id: string;
  priority: number;
}

const nowIso = (): string => new Date().toISOString();

/** The bounded job queue with its GPU worker. */
export class LocalQueue implements JobQueue {
  readonly #store: JobStore;
  readonly #opts: Required<LocalQueueOptions>;
  readonly #gpu: GpuRunner;
  /** Waiting jobs in the order they run: priority (high first), then submission. */
  readonly #pending: Pending[] = [];
  readonly #listeners = new Map<string, Set<(e: JobEvent) => void>>();
  readonly #counters = emptyCounters();
  #running: Running | null = null;
  #stopping = false;
  #wake: (() => void) | null = null;
  #loop: Promise<void> | null = null;
  /** Recent job duration (exponential average), for Retry-After. */
  #averageSeconds = 10;

  /** A queue over `store` (call {@linkcode LocalQueue.start} to start running jobs). */
  constructor(store: JobStore, opts: LocalQueueOptions) {
    this.#store = store;
    this.#opts = { stopTimeoutMs: 10_000, log: (m) => console.error(m), exitAfterStop: false, ...opts };
    this.#gpu = new GpuRunner({
      stopTimeoutMs: this.#opts.stopTimeoutMs,
      log: this.#opts.log,
      exitAfterClose: this.#opts.exitAfterStop,
    });
  }

  /**
   * Starts the worker (rejecting when there is no GPU), then runs the jobs left queued — or interrupted —
   * by the previous server, and everything submitted from now on.
   */
  async start(): Promise<WorkerDevice> {
    const device = await this.#gpu.ready();
    for (const job of this.#store.unfinished()) this.#enqueue(job);
    if (this.#pending.length > 0) this.#opts.log(`resuming ${this.#pending.length} queued job(s)`);
    this.#loop = this.#run();
    return device;
  }

  // deno-lint-ignore require-await
  async submit(request: SampleRequest): Promise<Job> {
    if (this.#stopping) throw new ApiError(503, "shutting_down", "The server is shutting down.");
    if (this.#pending.length >= this.#opts.capacity) {
      throw queueFull(this.#opts.capacity, retryAfterSeconds(this.#averageSeconds, this.#pending.length, 1));
    }
    const job: Job = { id: crypto.randomUUID(), status: "queued", progress: 0, createdAt: nowIso(), request };
    this.#store.insert(job);
    this.#enqueue(job);
    this.#wake?.();
    return job;
  }

  async cancel(id: string, waitMs = 5_000): Promise<{ job: Job; settled: boolean }> {
    const job = this.#get(id);
    if (job.status === "queued") {
      const at = this.#pending.findIndex((p) => p.id === id);
      if (at >= 0) this.#pending.splice(at, 1);
      this.#finish(job, "cancelled", "cancelled by request");
      return { job, settled: true };
    }
    const running = this.#running;
    if (job.status === "running" && running?.job.id === id) {
      running.cancel = true;
      this.#gpu.stop(id);
      const settled = await within(running.settled, waitMs);
      const after = this.#get(id);
      if (settled && after.status !== "cancelled") {
        throw new ApiError(
          409,
          "job_finished",
          `Job ${id} finished (${after.status}) before it could be cancelled.`,
        );
      }
      return { job: after, settled };
    }
    throw alreadyFinished(job);
  }

  // deno-lint-ignore require-await
  async get(id: string): Promise<Job> {
    return this.#get(id);
  }

  // deno-lint-ignore require-await
  async list(limit: number, status?: JobStatus): Promise<Job[]> {
    return this.#store.list(limit, status);
  }

  subscribe(id: string, listener: (e: JobEvent) => void): () => void {
    let set = this.#listeners.get(id);
    if (!set) this.#listeners.set(id, set = new Set());
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.#listeners.delete(id);
    };
  }

  health(): Promise<QueueHealth> {
    const gpu = this.#gpu;
    return Promise.resolve({
      queue: "sqlite",
      worker: gpu.state,
      device: gpu.device,
      ...(gpu.error ? { workerError: gpu.error } : {}),
      workerRestarts: gpu.restarts,
      depth: this.#pending.length,
      capacity: this.#opts.capacity,
      running: this.#running?.job.id ?? null,
      active: this.#running ? 1 : 0,
    });
  }

  metrics(): Promise<QueueMetrics> {
    return Promise.resolve({
      ...this.#counters,
      depth: this.#pending.length,
      running: this.#running ? 1 : 0,
      workers: this.#gpu.state === "ready" ? 1 : 0,
    });
  }

  async openResult(job: Job, format: "nifti" | "png"): Promise<ResultFile | null> {
    if (!job.result) return null;
    try {
      const file = await Deno.open(`${this.#opts.resultsDir}/${job.result[format]}`);
      return { body: file.readable, size: (await file.stat()).size };
    } catch {
      return null;
    }
  }

  /**
   * Stops taking jobs. The running job gets `graceMs` to finish; after that it is stopped and goes back to
   * the queue (it runs again after a restart), as do all waiting jobs. Then the worker frees its device and
   * is terminated (left idle with {@linkcode LocalQueueOptions.exitAfterStop}).
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
        this.#gpu.stop(running.job.id);
        await running.settled;
      }
    }
    await this.#loop;
    await this.#gpu.close(2_000);
  }

  #get(id: string): Job {
    const job = this.#store.get(id);
    if (!job) throw noSuchJob(id);
    return job;
  }

  #enqueue(job: Job): void {
    const priority = job.request.priority ?? 0;
    const at = this.#pending.findIndex((p) => p.priority < priority);
    this.#pending.splice(at < 0 ? this.#pending.length : at, 0, { id: job.id, priority });
  }

  async #run(): Promise<void> {
    let backoff = 1_000;
    while (!this.#stopping) {
      const next = this.#pending[0];
      if (!next) {
        await new Promise<void>((resolve) => (this.#wake = resolve));
        this.#wake = null;
        continue;
      }
      try {
        await this.#gpu.ready();
        backoff = 1_000;
      } catch {
        // No GPU right now: keep the job and try again later.
        await within(new Promise<void>((resolve) => (this.#wake = resolve)), backoff);
        this.#wake = null;
        backoff = Math.min(2 * backoff, 30_000);
        continue;
      }
      this.#pending.shift();
      await this.#execute(next.id);
    }
  }

  async #execute(id: string): Promise<void> {
    const job = this.#store.get(id);
    if (!job || job.status !== "queued") return;
    let settle!: () => void;
    const running: Running = {
      job,
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
      const result = await this.#gpu.run({
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
    } finally {
      this.#running = null;
      settle();
    }
  }

  #finish(job: Job, status: "done" | "failed" | "cancelled", error?: string): void {
    job.status = status;
    job.finishedAt = nowIso();
    if (error) job.error = error;
    countJob(this.#counters, status, job.result?.seconds);
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
