/**
 * The job queue as the HTTP API sees it: {@linkcode JobQueue}. Two implementations pass one contract test
 * suite (tests/server/queue_contract.test.ts):
 *
 * - `queue_local.ts` (the default): jobs in SQLite in the data directory, one GPU worker in this process.
 * - `queue_redis.ts`: BullMQ on Redis, shared by any number of API servers and GPU worker hosts
 *   (`host.ts`). It is imported only when a server is started with `--queue redis://…`, so a plain
 *   `deno task serve` never loads BullMQ.
 *
 * @module
 */

import { ApiError } from "./errors.ts";
import type { WorkerState } from "./gpu.ts";
import type { QueueMetrics } from "./metrics.ts";
import type { SampleRequest, WorkerDevice } from "./protocol.ts";
import type { Job, JobStatus } from "./store.ts";

export type { WorkerState } from "./gpu.ts";

/** A change to a job, as SSE listeners receive it. */
export type JobEvent =
  | { type: "state"; job: Job }
  | { type: "progress"; job: Job; step: number; total: number };

/** A GPU worker host of a shared queue, as it last reported itself. */
export interface WorkerHostInfo {
  /** Unique id of the host process. */
  id: string;
  /** Host name. */
  hostname: string;
  /** Its GPU worker's state. */
  state: WorkerState;
  /** Its GPU adapter, once known. */
  device: WorkerDevice | null;
  /** Why its GPU worker is unavailable. */
  error?: string;
  /** The job it runs, or null. */
  running: string | null;
  /** Times its GPU worker was replaced after a failure. */
  restarts: number;
  /** When it last reported (ISO 8601). */
  seenAt: string;
}

/** What `/healthz` shows about the queue and its workers. */
export interface QueueHealth {
  /** The queue's backend. */
  queue: "sqlite" | "redis";
  /** State of the GPU worker (local queue), or the best state among the worker hosts (Redis queue). */
  worker: WorkerState;
  /** The GPU adapter of the local worker, or of the first ready worker host. */
  device: WorkerDevice | null;
  /** Why the worker is unavailable. */
  workerError?: string;
  /** Times a GPU worker was replaced after a failure (all hosts together). */
  workerRestarts: number;
  /** Jobs waiting. */
  depth: number;
  /** Most jobs that may wait. */
  capacity: number;
  /** The running job of the local queue (null with Redis: see `workers[].running`). */
  running: string | null;
  /** Jobs running, on every worker. */
  active: number;
  /** The worker hosts (Redis queue only). */
  workers?: WorkerHostInfo[];
}

/** A result file as the API serves it. */
export interface ResultFile {
  /** Its bytes. */
  body: ReadableStream<Uint8Array<ArrayBuffer>> | Uint8Array<ArrayBuffer>;
  /** Its size in bytes. */
  size: number;
}

/** The bounded job queue behind the HTTP API. */
export interface JobQueue {
  /**
   * Queues a request (higher `request.priority` runs first; equal priorities in order of submission);
   * 429 with Retry-After when the queue is full, 503 while shutting down.
   */
  submit(request: SampleRequest): Promise<Job>;
  /**
   * Cancels a job: a queued one at once, a running one at its next step, wherever it runs. 404 for an
   * unknown job, 409 for a finished one. Resolves to the job as it is afterwards, with `settled` false when
   * a running job has not stopped within `waitMs`.
   */
  cancel(id: string, waitMs?: number): Promise<{ job: Job; settled: boolean }>;
  /** The job `id`; 404 when there is none. */
  get(id: string): Promise<Job>;
  /** The most recent jobs first, optionally only those in `status`. */
  list(limit: number, status?: JobStatus): Promise<Job[]>;
  /**
   * Listens to the changes of job `id`; returns the function that stops listening. `seen` is the status
   * the caller already knows: a queue whose events arrive from elsewhere sends the current state when it
   * differs, so nothing that happened just before subscribing is missed.
   */
  subscribe(id: string, listener: (e: JobEvent) => void, seen?: JobStatus): () => void;
  /** Queue depth and worker state. */
  health(): Promise<QueueHealth>;
  /** Counters and gauges for `/metrics`. */
  metrics(): Promise<QueueMetrics>;
  /** A done job's NIfTI or PNG result, or null when it is gone. */
  openResult(job: Job, format: "nifti" | "png"): Promise<ResultFile | null>;
  /**
   * Stops taking jobs and releases everything. Queued jobs stay queued; a job running in this process
   * gets `graceMs` to finish, then goes back to the queue.
   */
  stop(graceMs: number): Promise<void>;
}

/** Retry-After seconds for a full queue: the wait for the jobs ahead, from recent job durations. */
export function retryAfterSeconds(averageJobSeconds: number, depth: number, workers: number): number {
  return Math.max(1, Math.ceil((averageJobSeconds * (depth + 1)) / Math.max(1, workers)));
}

/** The 429 answer to a submission when `capacity` jobs are already waiting. */
export function queueFull(capacity: number, retryAfter: number): ApiError {
  return new ApiError(
    429,
    "queue_full",
    `The queue is full (${capacity} jobs waiting); try again in about ${retryAfter} s.`,
    { "Retry-After": String(retryAfter) },
  );
}

/** The 409 answer to cancelling a job that has finished. */
export function alreadyFinished(job: Job): ApiError {
  return new ApiError(
    409,
    "job_finished",
    `Job ${job.id} is ${job.status}; only queued or running jobs can be cancelled.`,
  );
}

/** The 404 answer for an unknown job. */
export function noSuchJob(id: string): ApiError {
  return new ApiError(404, "job_not_found", `No job ${id}.`);
}

/** Where queued jobs go, in order: higher priority first, then older first. */
export function comparePriority(
  a: { priority: number; seq: number },
  b: { priority: number; seq: number },
): number {
  return b.priority - a.priority || a.seq - b.seq;
}
