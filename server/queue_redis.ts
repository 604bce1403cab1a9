/**
 * The shared job queue: BullMQ on Redis, for any number of API servers and GPU worker hosts
 * (`host.ts`). This module imports BullMQ, so only `--queue redis://…` loads it (through a dynamic import).
 *
 * What lives where in Redis (one queue name, default "voxgen"):
 *
 * ```
 * bull:<name>:*                       BullMQ's own keys: the jobs (request, progress, result description,
 *                                     failure reason), their states, locks and the event stream
 * voxgen:<name>:result:<id>:nifti|png result bytes, written by the worker host, expiring with the job
 * voxgen:<name>:cancel:<id>           "cancel this job" (kept for the job's lifetime, so a host that picks
 *                                     the job up later, after a stall, still sees it)
 * voxgen:<name>:cancelled:<id>        a job cancelled while queued (BullMQ removes it; this is its record)
 * voxgen:<name>:cancelled             those jobs by submission time (for listing)
 * voxgen:<name>:stats                 counters of finished jobs and the job-seconds histogram (/metrics)
 * voxgen:<name>:counted:<id>          the job is in those counters (so it is counted once)
 * voxgen:<name>:host:<id>             each worker host's heartbeat (state, GPU, running job), expiring
 * ```
 *
 * Job states map as: waiting, prioritized, delayed → queued; active → running; completed → done; failed →
 * failed, or cancelled when the reason is {@linkcode CANCELLED}.
 *
 * @module
 */

import {
  type Job as BullJob,
  type JobState,
  Queue,
  QueueEvents,
  QueueEventsProducer,
  type RedisOptions,
} from "bullmq";
import { Redis } from "ioredis";
import { ApiError } from "./errors.ts";
import { within, type WorkerState } from "./gpu.ts";
import { emptyCounters, JOB_SECONDS_BUCKETS, type JobCounters, type QueueMetrics } from "./metrics.ts";
import { type JobResult, MAX_PRIORITY, type SampleRequest, type WorkerProgress } from "./protocol.ts";
import {
  alreadyFinished,
  type JobEvent,
  type JobQueue,
  noSuchJob,
  queueFull,
  type QueueHealth,
  type ResultFile,
  retryAfterSeconds,
  type WorkerHostInfo,
} from "./queue.ts";
import { FINAL_STATES, type Job, type JobStatus } from "./store.ts";

/** The failure reason of a cancelled job. */
export const CANCELLED = "cancelled by request";
/** The custom queue event an API server publishes to stop a running job on whichever host holds it. */
export const CANCEL_EVENT = "voxgen-cancel";
/** Queue name used when none is given. */
export const DEFAULT_QUEUE_NAME = "voxgen";

/** A job's data in BullMQ. */
export interface QueuedJob {
  /** The validated request. */
  request: SampleRequest;
  /** Submission time (ISO 8601). */
  createdAt: string;
  /** Seconds the job and its result are kept after it finished. */
  retentionSeconds: number;
}

/** A BullMQ job of this queue. */
export type SampleJob = BullJob<QueuedJob, JobResult, string, WorkerProgress>;

/** The BullMQ queue of sample jobs. */
type SampleQueue = Queue<QueuedJob, JobResult, string, QueuedJob, JobResult, string>;

/**
 * ioredis options from a queue URL: `redis://[user:password@]host[:port][/db]`, `rediss://…` (TLS), or
 * `unix:///path/redis.sock[?user=…&password=…&db=N]`. Credentials come from the URL (percent-encoded).
 */
export function redisOptions(url: string): RedisOptions {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(
      `--queue "${redact(url)}" is not a URL; expected redis://host:port, rediss://… or unix:///path.`,
    );
  }
  const dbText = u.protocol === "unix:" ? u.searchParams.get("db") : u.pathname.replace(/^\//, "");
  const db = dbText ? Number(dbText) : 0;
  if (!Number.isInteger(db) || db < 0) throw new Error(`--queue: database "${dbText}" is not a number ≥ 0.`);
  const options: RedisOptions = { db, maxRetriesPerRequest: null };
  const user = u.protocol === "unix:" ? u.searchParams.get("user") : decodeURIComponent(u.username);
  const password = u.protocol === "unix:" ? u.searchParams.get("password") : decodeURIComponent(u.password);
  if (user) options.username = user;
  if (password) options.password = password;
  if (u.protocol === "unix:") {
    if (!u.pathname || u.pathname === "/") {
      throw new Error("--queue unix:///path: the socket path is missing.");
    }
    options.path = decodeURIComponent(u.pathname);
  } else if (u.protocol === "redis:" || u.protocol === "rediss:") {
    options.host = u.hostname.replace(/^\[|\]$/g, "");
    options.port = u.port ? Number(u.port) : 6379;
    if (u.protocol === "rediss:") options.tls = { servername: options.host };
  } else {
    throw new Error(`--queue: "${u.protocol}" is not supported; use redis://, rediss:// or unix://.`);
  }
  return options;
}

/** The URL with its password replaced by "***" (for logs). */
export function redact(url: string): string {
  return url.replace(/(\/\/[^:/@]*:)[^@]*@/, "$1***@").replace(/([?&]password=)[^&]*/, "$1***");
}

/** Names of the keys a queue keeps besides BullMQ's. */
export interface QueueKeys {
  /** A job's result bytes. */
  result(id: string, format: "nifti" | "png"): string;
  /** A job's cancel request. */
  cancel(id: string): string;
  /** The record of a job cancelled while queued. */
  tombstone(id: string): string;
  /** Jobs cancelled while queued, by submission time. */
  tombstones: string;
  /** Counters of finished jobs. */
  stats: string;
  /** Set once job `id` is counted in `stats`. */
  counted(id: string): string;
  /** A worker host's heartbeat. */
  host(id: string): string;
  /** Pattern of every host's heartbeat. */
  hostPattern: string;
}

/** The keys of queue `name`. */
export function queueKeys(name: string): QueueKeys {
  const base = `voxgen:${name}`;
  return {
    result: (id, format) => `${base}:result:${id}:${format}`,
    cancel: (id) => `${base}:cancel:${id}`,
    tombstone: (id) => `${base}:cancelled:${id}`,
    tombstones: `${base}:cancelled`,
    stats: `${base}:stats`,
    counted: (id) => `${base}:counted:${id}`,
    host: (id) => `${base}:host:${id}`,
    hostPattern: `${base}:host:*`,
  };
}

/** BullMQ priority of a request: 1 is BullMQ's highest, and a request's higher priority runs first. */
export function bullPriority(priority = 0): number {
  return 1 + MAX_PRIORITY - priority;
}

/**
 * Adds finished job `id` to the shared counters, once: whoever reports it first (the host that finished
 * it, or any host that saw BullMQ fail it after too many stalls) counts it; later reports are ignored.
 */
export async function recordFinished(
  redis: Redis,
  keys: QueueKeys,
  id: string,
  status: "done" | "failed" | "cancelled",
  seconds = 0,
  ttlSeconds = 86400,
): Promise<void> {
  if (await redis.set(keys.counted(id), "1", "EX", ttlSeconds, "NX") === null) return;
  const tx = redis.multi();
  if (status === "done") {
    tx.hincrby(keys.stats, "completed", 1);
    tx.hincrbyfloat(keys.stats, "seconds_sum", seconds);
    const bucket = JOB_SECONDS_BUCKETS.findIndex((le) => seconds <= le);
    tx.hincrby(keys.stats, `bucket_${bucket < 0 ? "inf" : bucket}`, 1);
  } else {
    tx.hincrby(keys.stats, status, 1);
  }
  await tx.exec();
}

/** The shared counters as {@linkcode JobCounters}. */
export async function readCounters(redis: Redis, keys: QueueKeys): Promise<JobCounters> {
  const h = await redis.hgetall(keys.stats);
  const n = (field: string) => Number(h[field] ?? 0);
  const counters = emptyCounters();
  counters.completed = n("completed");
  counters.failed = n("failed");
  counters.cancelled = n("cancelled");
  counters.secondsSum = n("seconds_sum");
  counters.secondsBuckets = counters.secondsBuckets.map((_, i) =>
    n(i < JOB_SECONDS_BUCKETS.length ? `bucket_${i}` : "bucket_inf")
  );
  return counters;
}

/** The worker hosts that reported within their heartbeat's lifetime. */
export async function readHosts(redis: Redis, keys: QueueKeys): Promise<WorkerHostInfo[]> {
  const found: string[] = [];
  let cursor = "0";
  do {
    const [next, batch] = await redis.scan(cursor, "MATCH", keys.hostPattern, "COUNT", 100);
    found.push(...batch);
    cursor = next;
  } while (cursor !== "0");
  if (found.length === 0) return [];
  const values = await redis.mget(...found);
  return values.filter((v): v is string => v !== null).map((v) => JSON.parse(v) as WorkerHostInfo)
    .sort((a, b) => a.id.localeCompare(b.id));
}

/** A BullMQ job as the API shows it. */
export function toJob(b: SampleJob, state: JobState | "unknown"): Job {
  const status: JobStatus = state === "active"
    ? "running"
    : state === "completed"
    ? "done"
    : state === "failed"
    ? (b.failedReason === CANCELLED ? "cancelled" : "failed")
    : "queued";
  const p = b.progress as WorkerProgress | number | undefined;
  const progress = status === "done"
    ? 1
    : status === "queued"
    ? 0
    : typeof p === "object" && p && p.total > 0
    ? p.step / p.total
    : 0;
  const job: Job = {
    id: b.id!,
    status,
    progress,
    createdAt: b.data.createdAt,
    request: b.data.request,
  };
  if (status !== "queued" && b.processedOn) job.startedAt = new Date(b.processedOn).toISOString();
  if (FINAL_STATES.includes(status) && b.finishedOn) job.finishedAt = new Date(b.finishedOn).toISOString();
  if ((status === "failed" || status === "cancelled") && b.failedReason) job.error = b.failedReason;
  if (status === "done") {
    job.result = typeof b.returnvalue === "string" ? JSON.parse(b.returnvalue) : b.returnvalue;
  }
  return job;
}

/** Options of {@linkcode RedisQueue.open}. */
export interface RedisQueueOptions {
  /** Queue name (default "voxgen"). */
  name?: string;
  /** Most jobs that may wait. */
  capacity: number;
  /** Seconds finished jobs and their results are kept (default 86400). */
  retentionSeconds?: number;
  /** Log sink (default console.error). */
  log?: (message: string) => void;
}

/** The API server's side of the shared queue: submits, watches and cancels jobs; runs none. */
export class RedisQueue implements JobQueue {
  readonly #queue: SampleQueue;
  readonly #events: QueueEvents;
  readonly #producer: QueueEventsProducer;
  readonly #redis: Redis;
  readonly #keys: QueueKeys;
  readonly #capacity: number;
  readonly #retention: number;
  readonly #log: (message: string) => void;
  readonly #listeners = new Map<string, Set<(e: JobEvent) => void>>();
  /** Per job, the chain its events are handled on (so they reach listeners in order). */
  readonly #chains = new Map<string, Promise<void>>();
  #stopping = false;
  /** Recent job duration (exponential average), for Retry-After. */
  #averageSeconds = 10;

  private constructor(
    queue: SampleQueue,
    events: QueueEvents,
    producer: QueueEventsProducer,
    redis: Redis,
    name: string,
    opts: RedisQueueOptions,
  ) {
    this.#queue = queue;
    this.#events = events;
    this.#producer = producer;
    this.#redis = redis;
    this.#keys = queueKeys(name);
    this.#capacity = opts.capacity;
    this.#retention = opts.retentionSeconds ?? 86400;
    this.#log = opts.log ?? ((m) => console.error(m));
    for (const event of ["waiting", "active", "completed", "failed", "removed"] as const) {
      events.on(event, ({ jobId }: { jobId: string }) => this.#later(jobId, () => this.#refresh(jobId)));
    }
    events.on("progress", ({ jobId, data }) => {
      this.#later(jobId, () => this.#progress(jobId, data as unknown as WorkerProgress));
    });
    events.on("completed", ({ returnvalue }) => {
      const r = (typeof returnvalue === "string" ? JSON.parse(returnvalue) : returnvalue) as JobResult;
      if (Number.isFinite(r?.seconds)) this.#averageSeconds = 0.7 * this.#averageSeconds + 0.3 * r.seconds;
    });
    events.on("error", (error) => this.#log(`queue events: ${error.message}`));
  }

  /** Connects to the queue at `url`; rejects when Redis cannot be reached. */
  static async open(url: string, opts: RedisQueueOptions): Promise<RedisQueue> {
    // An API server's commands fail fast while Redis is away (an error answer, not a request that hangs);
    // only QueueEvents, which blocks on the event stream, must retry for ever.
    const connection = { ...redisOptions(url), maxRetriesPerRequest: 2 };
    const name = opts.name ?? DEFAULT_QUEUE_NAME;
    const redis = new Redis({ ...connection, lazyConnect: true });
    // Errors surface where a command fails (ioredis reconnects by itself); the last one explains a failed start.
    let lastError: Error | undefined;
    redis.on("error", (error: Error) => (lastError = error));
    try {
      await redis.connect();
      await redis.ping();
    } catch (error) {
      redis.disconnect();
      throw new Error(
        `cannot reach the queue's Redis at ${redact(url)}: ${(lastError ?? error as Error).message}`,
      );
    }
    const queue: SampleQueue = new Queue(name, { connection });
    const events = new QueueEvents(name, { connection: { ...connection, maxRetriesPerRequest: null } });
    const producer = new QueueEventsProducer(name, { connection });
    await Promise.all([queue.waitUntilReady(), events.waitUntilReady(), producer.waitUntilReady()]);
    const self = new RedisQueue(queue, events, producer, redis, name, opts);
    const waiting = await self.#depth();
    (opts.log ?? console.error)(`shared queue "${name}" at ${redact(url)}: ${waiting} job(s) waiting`);
    return self;
  }

  async submit(request: SampleRequest): Promise<Job> {
    if (this.#stopping) throw new ApiError(503, "shutting_down", "The server is shutting down.");
    // Counted, then added: API servers submitting at the same moment may overshoot by a few jobs.
    const depth = await this.#depth();
    if (depth >= this.#capacity) {
      const ready = (await readHosts(this.#redis, this.#keys)).filter((h) => h.state === "ready").length;
      throw queueFull(this.#capacity, retryAfterSeconds(this.#averageSeconds, depth, ready));
    }
    const job: Job = {
      id: crypto.randomUUID(),
      status: "queued",
      progress: 0,
      createdAt: new Date().toISOString(),
      request,
    };
    const keep = { age: this.#retention };
    await this.#queue.add(
      "sample",
      { request, createdAt: job.createdAt, retentionSeconds: this.#retention },
      {
        jobId: job.id,
        priority: bullPriority(request.priority),
        attempts: 1,
        removeOnComplete: keep,
        removeOnFail: keep,
      },
    );
    return job;
  }

  async cancel(id: string, waitMs = 5_000): Promise<{ job: Job; settled: boolean }> {
    const found = await this.#find(id);
    if (!found) throw noSuchJob(id);
    const { job, bull } = found;
    if (FINAL_STATES.includes(job.status)) throw alreadyFinished(job);
    if (job.status === "queued" && bull && await this.#removeQueued(job, bull)) {
      return { job: (await this.#find(id))!.job, settled: true };
    }
    // Running (or just taken by a host): flag it, then tell every host; the one holding it stops it.
    const finished = Promise.withResolvers<void>();
    const unsubscribe = this.subscribe(id, (e) => {
      if (e.type === "state" && FINAL_STATES.includes(e.job.status)) finished.resolve();
    }, "running");
    try {
      await this.#redis.set(this.#keys.cancel(id), "1", "EX", this.#retention);
      await this.#producer.publishEvent({ eventName: CANCEL_EVENT, jobId: id });
      const settled = await within(finished.promise, waitMs);
      const after = (await this.#find(id))?.job ?? job;
      if (settled && after.status !== "cancelled") {
        throw new ApiError(
          409,
          "job_finished",
          `Job ${id} finished (${after.status}) before it could be cancelled.`,
        );
      }
      return { job: after, settled };
    } finally {
      unsubscribe();
    }
  }

  async get(id: string): Promise<Job> {
    const found = await this.#find(id);
    if (!found) throw noSuchJob(id);
    return found.job;
  }

  async list(limit: number, status?: JobStatus): Promise<Job[]> {
    const groups: Array<[JobState, JobStatus]> = [
      ["waiting", "queued"],
      ["prioritized", "queued"],
      ["delayed", "queued"],
      ["active", "running"],
      ["completed", "done"],
      ["failed", "failed"],
      ["failed", "cancelled"],
    ];
    const wanted = groups.filter(([, s]) => !status || s === status).map(([type]) => type);
    const jobs: Job[] = [];
    for (const type of new Set(wanted)) {
      // Queued jobs are few (bounded by the capacity); finished ones newest first.
      const end = type === "completed" || type === "failed" ? limit * 2 - 1 : -1;
      for (const b of await this.#queue.getJobs([type], 0, end, false) as SampleJob[]) {
        if (b?.data) jobs.push(toJob(b, type));
      }
    }
    if (!status || status === "cancelled") jobs.push(...await this.#tombstones(limit));
    return jobs.filter((j) => !status || j.status === status)
      .sort((a, b) => b.createdAt.localeCompare(a.createdAt)).slice(0, limit);
  }

  subscribe(id: string, listener: (e: JobEvent) => void, seen?: JobStatus): () => void {
    // Events reach every API server, some twice (a job's "active" and a fresh read); pass each state once.
    let last = seen;
    const once = (e: JobEvent) => {
      if (e.type === "state" && e.job.status === last) return;
      if (e.type === "state") last = e.job.status;
      listener(e);
    };
    let set = this.#listeners.get(id);
    if (!set) this.#listeners.set(id, set = new Set());
    set.add(once);
    if (seen) {
      // Whatever happened between the caller's read and now.
      this.#later(id, async () => {
        const job = (await this.#find(id))?.job;
        if (job && set.has(once)) this.#emit({ type: "state", job }, once);
      });
    }
    return () => {
      set.delete(once);
      if (set.size === 0 && this.#listeners.get(id) === set) this.#listeners.delete(id);
    };
  }

  async health(): Promise<QueueHealth> {
    let counts: Record<string, number>;
    let hosts: WorkerHostInfo[];
    try {
      [counts, hosts] = await Promise.all([
        this.#queue.getJobCounts("waiting", "prioritized", "delayed", "active"),
        readHosts(this.#redis, this.#keys),
      ]);
    } catch (error) {
      return {
        queue: "redis",
        worker: "unavailable",
        device: null,
        workerError: `the queue's Redis cannot be reached: ${(error as Error).message}`,
        workerRestarts: 0,
        depth: 0,
        capacity: this.#capacity,
        running: null,
        active: 0,
      };
    }
    const order: WorkerState[] = ["ready", "restarting", "starting", "unavailable"];
    const best = order.find((s) => hosts.some((h) => h.state === s));
    const ready = hosts.find((h) => h.state === "ready");
    const errors = hosts.filter((h) => h.error).map((h) => `${h.hostname}: ${h.error}`);
    return {
      queue: "redis",
      worker: best ?? "no_workers",
      device: ready?.device ?? null,
      ...(errors.length > 0 && !ready ? { workerError: errors.join("; ") } : {}),
      workerRestarts: hosts.reduce((n, h) => n + h.restarts, 0),
      depth: counts.waiting + counts.prioritized + counts.delayed,
      capacity: this.#capacity,
      running: null,
      active: counts.active,
      workers: hosts,
    };
  }

  async metrics(): Promise<QueueMetrics> {
    const [counts, hosts, counters] = await Promise.all([
      this.#queue.getJobCounts("waiting", "prioritized", "delayed", "active"),
      readHosts(this.#redis, this.#keys),
      readCounters(this.#redis, this.#keys),
    ]);
    return {
      ...counters,
      depth: counts.waiting + counts.prioritized + counts.delayed,
      running: counts.active,
      workers: hosts.filter((h) => h.state === "ready").length,
    };
  }

  async openResult(job: Job, format: "nifti" | "png"): Promise<ResultFile | null> {
    const bytes = await this.#redis.getBuffer(this.#keys.result(job.id, format));
    return bytes ? { body: new Uint8Array(bytes), size: bytes.byteLength } : null;
  }

  /** Closes the connections; jobs stay in Redis (nothing runs in this process). */
  async stop(_graceMs: number): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    await Promise.allSettled([...this.#chains.values()]);
    await this.#events.close();
    await this.#producer.close();
    await this.#queue.close();
    await this.#redis.quit().catch(() => this.#redis.disconnect());
  }

  async #depth(): Promise<number> {
    return await this.#queue.getJobCountByTypes("waiting", "prioritized", "delayed");
  }

  /** The job `id` from BullMQ, or from its record when it was cancelled while queued. */
  async #find(id: string): Promise<{ job: Job; bull?: SampleJob } | undefined> {
    const bull = await this.#queue.getJob(id) as SampleJob | undefined;
    if (bull?.data) return { job: toJob(bull, await bull.getState()), bull };
    const tomb = await this.#redis.get(this.#keys.tombstone(id));
    return tomb ? { job: JSON.parse(tomb) as Job } : undefined;
  }

  /**
   * Removes a queued job, leaving its "cancelled" record; false when a host took it in the meantime (BullMQ
   * refuses to remove a locked job).
   */
  async #removeQueued(job: Job, bull: SampleJob): Promise<boolean> {
    const cancelled: Job = {
      ...job,
      status: "cancelled",
      finishedAt: new Date().toISOString(),
      error: CANCELLED,
    };
    const key = this.#keys.tombstone(job.id);
    // The record goes first, so that other API servers find it when they see the "removed" event.
    await this.#redis.multi()
      .set(key, JSON.stringify(cancelled), "EX", this.#retention)
      .zadd(this.#keys.tombstones, Date.parse(job.createdAt), job.id)
      .zremrangebyscore(this.#keys.tombstones, 0, Date.now() - this.#retention * 1000)
      .exec();
    try {
      await bull.remove();
    } catch {
      await this.#redis.multi().del(key).zrem(this.#keys.tombstones, job.id).exec();
      return false;
    }
    await recordFinished(this.#redis, this.#keys, job.id, "cancelled", 0, this.#retention);
    return true;
  }

  async #tombstones(limit: number): Promise<Job[]> {
    const ids = await this.#redis.zrevrange(this.#keys.tombstones, 0, limit - 1);
    if (ids.length === 0) return [];
    const values = await this.#redis.mget(...ids.map((id) => this.#keys.tombstone(id)));
    return values.filter((v): v is string => v !== null).map((v) => JSON.parse(v) as Job);
  }

  /** Runs `task` after the job's earlier event handlers (only for jobs someone listens to). */
  #later(id: string, task: () => Promise<void>): void {
    if (!this.#listeners.has(id)) return;
    const next = (this.#chains.get(id) ?? Promise.resolve()).then(task).catch((error) =>
      this.#log(`events of job ${id}: ${(error as Error).message}`)
    );
    this.#chains.set(id, next);
    next.then(() => {
      if (this.#chains.get(id) === next) this.#chains.delete(id);
    });
  }

  async #refresh(id: string): Promise<void> {
    const job = (await this.#find(id))?.job;
    if (job) this.#emit({ type: "state", job });
  }

  async #progress(id: string, p: WorkerProgress): Promise<void> {
    const job = (await this.#find(id))?.job;
    if (!job || job.status !== "running" || !(p?.total > 0)) return;
    job.progress = p.step / p.total;
    this.#emit({ type: "progress", job, step: p.step, total: p.total });
  }

  /** Sends `event` to the job's listeners (or only to `only`); a final state ends the subscriptions. */
  #emit(event: JobEvent, only?: (e: JobEvent) => void): void {
    const listeners = this.#listeners.get(event.job.id);
    if (!listeners) return;
    for (const listener of only ? [only] : [...listeners]) listener(event);
    if (!only && event.type === "state" && FINAL_STATES.includes(event.job.status)) {
      this.#listeners.delete(event.job.id);
    }
  }
}
