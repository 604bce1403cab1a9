/**
 * `deno task worker --queue URL`: a GPU worker host of the shared queue. It takes one job at a time from
 * BullMQ, runs it on its GPU worker ({@linkcode GpuRunner}: the same Web Worker `deno task serve` uses),
 * reports every step as the job's progress, stores the result files in Redis (expiring with the job), and
 * stops a job when any API server asks (a {@linkcode CANCEL_EVENT}).
 *
 * A host that dies leaves its job locked until the lock expires (`--lock-duration`); the next stalled-job
 * check on any live host (every `--stalled-interval`) puts it back in the queue and another host runs it
 * from the start. BullMQ completes a job only with the lock of the host that holds it, so a job completes
 * once even when two hosts ran it. On SIGINT/SIGTERM the running job gets `--shutdown-grace` seconds to
 * finish and is then put back in the queue.
 *
 * ```
 * <data>/results/   scratch: the GPU worker writes result files here before they go to Redis
 * <models>/models/<name>.safetensors, <models>/adapters/<name>.safetensors   (default <models> = <data>)
 * ```
 *
 * @module
 */

import { QueueEvents, UnrecoverableError, WaitingError, Worker } from "bullmq";
import { Redis } from "ioredis";
import { Buffer } from "node:buffer";
import { parseArgs } from "node:util";
import { DEFAULT_MODEL } from "../pipelines/modelfile.ts";
import { numberOption } from "../io/options.ts";
import { Catalog } from "./catalog.ts";
import { catalogFiles, GpuRunner, isCancelled, within } from "./gpu.ts";
import type { JobResult, WorkerDevice, WorkerProgress } from "./protocol.ts";
import type { WorkerHostInfo } from "./queue.ts";
import {
  CANCEL_EVENT,
  CANCELLED,
  DEFAULT_QUEUE_NAME,
  type QueuedJob,
  type QueueKeys,
  queueKeys,
  recordFinished,
  redact,
  redisOptions,
  type SampleJob,
} from "./queue_redis.ts";
import { runUntilStopped } from "./signals.ts";

/** Options of {@linkcode startHost}. */
export interface HostOptions {
  /** The queue's Redis URL (see {@linkcode redisOptions}). */
  queueUrl: string;
  /** Queue name (default "voxgen"). */
  queueName?: string;
  /** Scratch directory for result files (created if missing). */
  dataDir: string;
  /** Directory with `models/` and `adapters/` (default `dataDir`). */
  modelsDir?: string;
  /** Model used when a request names none (default: the embedded model). */
  defaultModel?: string;
  /** Milliseconds a job's lock lasts without renewal (default 30000); a dead host's job waits this long. */
  lockDurationMs?: number;
  /** Milliseconds between checks for jobs whose host died (default 15000). */
  stalledIntervalMs?: number;
  /** Times a job may be recovered from a dead host before it fails (default 2). */
  maxStalledCount?: number;
  /** Milliseconds between heartbeats in Redis (default 5000); a host is gone after 3 missed ones. */
  heartbeatMs?: number;
  /** Log sink (default console.error). */
  log?: (message: string) => void;
  /**
   * The process exits (`Deno.exit`) right after `shutdown()`: the GPU worker's thread is then left idle,
   * its device destroyed, instead of being terminated (`GpuRunnerOptions.exitAfterClose`, gpu.ts).
   */
  exitAfterShutdown?: boolean;
}

/** A worker host that is taking jobs. */
export interface RunningHost {
  /** The host's id (as `/healthz` lists it). */
  id: string;
  /** Its GPU adapter. */
  device: WorkerDevice;
  /** Stops taking jobs; the running one gets `graceMs` to finish, then goes back to the queue. */
  shutdown(graceMs: number): Promise<void>;
}

interface Current {
  id: string;
  cancel: boolean;
  requeue: boolean;
}

/** Starts a worker host; rejects when there is no GPU or Redis cannot be reached. */
export async function startHost(opts: HostOptions): Promise<RunningHost> {
  const log = opts.log ?? ((m: string) => console.error(m));
  const name = opts.queueName ?? DEFAULT_QUEUE_NAME;
  const keys = queueKeys(name);
  const connection = redisOptions(opts.queueUrl);
  await Deno.mkdir(`${opts.dataDir}/results`, { recursive: true });
  const dataDir = await Deno.realPath(opts.dataDir);
  const resultsDir = `${dataDir}/results`;
  const catalog = new Catalog(
    opts.modelsDir ? await Deno.realPath(opts.modelsDir) : dataDir,
    opts.defaultModel ?? DEFAULT_MODEL,
  );
  const resolve = catalogFiles(catalog);

  const redis = new Redis({ ...connection, lazyConnect: true });
  // Errors surface where a command fails (ioredis reconnects by itself); the last one explains a failed start.
  let lastError: Error | undefined;
  redis.on("error", (error: Error) => (lastError = error));
  try {
    await redis.connect();
  } catch (error) {
    redis.disconnect();
    throw new Error(
      `cannot reach the queue's Redis at ${redact(opts.queueUrl)}: ${(lastError ?? error as Error).message}`,
    );
  }
  const gpu = new GpuRunner({ log, exitAfterClose: opts.exitAfterShutdown });
  let device: WorkerDevice;
  try {
    device = await gpu.ready();
  } catch (error) {
    await gpu.close();
    redis.disconnect();
    throw new Error(`the GPU worker could not start: ${(error as Error).message}`);
  }

  const id = `${Deno.hostname()}-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  const startedAt = new Date().toISOString();
  let current: Current | null = null;
  const heartbeatMs = opts.heartbeatMs ?? 5_000;
  const beat = async () => {
    const info: WorkerHostInfo & { startedAt: string } = {
      id,
      hostname: Deno.hostname(),
      state: gpu.state,
      device: gpu.device ?? device,
      ...(gpu.error ? { error: gpu.error } : {}),
      running: current?.id ?? null,
      restarts: gpu.restarts,
      seenAt: new Date().toISOString(),
      startedAt,
    };
    await redis.set(keys.host(id), JSON.stringify(info), "PX", 3 * heartbeatMs).catch((error) =>
      log(`heartbeat: ${(error as Error).message}`)
    );
  };

  /** Back-off while this host's GPU worker cannot start (doubles up to a minute; reset on success). */
  let noGpuWaitMs = 0;
  const processJob = async (job: SampleJob, token?: string): Promise<JobResult> => {
    const { request, retentionSeconds } = job.data;
    const mine: Current = { id: job.id!, cancel: false, requeue: false };
    current = mine;
    void beat();
    try {
      if (await redis.exists(keys.cancel(mine.id))) throw new UnrecoverableError(CANCELLED);
      try {
        await gpu.ready();
        noGpuWaitMs = 0;
      } catch (error) {
        // No GPU here (lost for good?): the job goes back for another host, and this one waits before it
        // takes the next, instead of failing every job in the queue.
        noGpuWaitMs = Math.min(60_000, Math.max(2 * noGpuWaitMs, 5_000));
        log(
          `no GPU (${(error as Error).message}): job ${mine.id} goes back to the queue; next try in ${
            noGpuWaitMs / 1000
          } s`,
        );
        await job.moveToWait(token);
        await new Promise((r) => setTimeout(r, noGpuWaitMs));
        throw new WaitingError();
      }
      let files;
      try {
        files = await resolve(request);
      } catch (error) {
        // This host does not have the model or adapter: retrying here cannot help.
        throw new UnrecoverableError((error as Error).message);
      }
      if (job.attemptsStarted > 1 || job.stalledCounter > 0) {
        log(
          `job ${mine.id} started again (attempt ${job.attemptsStarted}, recovered ${job.stalledCounter}×)`,
        );
      }
      const result = await gpu.run(
        { id: mine.id, request, resultsDir, ...files },
        (p: WorkerProgress) => void job.updateProgress(p).catch(() => {}),
      );
      await storeResult(redis, keys, mine.id, resultsDir, result, retentionSeconds);
      return result;
    } catch (error) {
      if (mine.requeue && token) {
        // Shutting down: back to the queue for another host (or this one after its restart), before the GPU
        // worker is closed and the process exits.
        await job.moveToWait(token);
        log(`job ${mine.id} is back in the queue`);
        throw new WaitingError();
      }
      if (mine.cancel || isCancelled(error)) throw new UnrecoverableError(CANCELLED);
      throw error;
    } finally {
      current = null;
      void beat();
    }
  };

  const worker = new Worker<QueuedJob, JobResult>(name, processJob as never, {
    connection,
    concurrency: 1,
    lockDuration: opts.lockDurationMs ?? 30_000,
    stalledInterval: opts.stalledIntervalMs ?? 15_000,
    maxStalledCount: opts.maxStalledCount ?? 2,
    autorun: false,
  });
  worker.on("completed", (job, result) => {
    log(`job ${job.id} done in ${result.seconds.toFixed(2)} s`);
    void recordFinished(redis, keys, job.id!, "done", result.seconds, job.data.retentionSeconds).catch(
      () => {},
    );
  });
  worker.on("failed", (job, error) => {
    if (!job || error.name === "WaitingError") return;
    const cancelled = error.message === CANCELLED;
    log(`job ${job.id} ${cancelled ? "cancelled" : `failed: ${error.message}`}`);
    const status = cancelled ? "cancelled" : "failed";
    void recordFinished(redis, keys, job.id!, status, 0, job.data.retentionSeconds).catch(() => {});
  });
  worker.on("error", (error) => log(`queue: ${error.message}`));

  const events = new QueueEvents(name, { connection });
  // A custom event (published by an API server's cancel): BullMQ's typings know only its own events.
  (events as unknown as { on(event: string, f: (args: { jobId: string }) => void): void }).on(
    CANCEL_EVENT,
    ({ jobId }) => {
      if (current?.id !== jobId) return;
      log(`job ${jobId}: cancel requested`);
      current.cancel = true;
      gpu.stop(jobId);
    },
  );
  // A job BullMQ fails itself (recovered from dead hosts too often) has no host to report it: count it here.
  events.on("failed", ({ jobId, failedReason }) => {
    if (!/stalled/i.test(failedReason)) return;
    log(`job ${jobId} failed: ${failedReason}`);
    void recordFinished(redis, keys, jobId, "failed").catch(() => {});
  });
  await Promise.all([events.waitUntilReady(), worker.waitUntilReady()]);
  await beat();
  const heartbeat = setInterval(beat, heartbeatMs);
  const running = worker.run();
  log(`worker host ${id} taking jobs from "${name}" at ${redact(opts.queueUrl)} (GPU: ${device.adapter})`);

  let closing: Promise<void> | null = null;
  const shutdown = (graceMs: number): Promise<void> => {
    closing ??= (async () => {
      const closed = worker.close();
      const job = current;
      if (job && !(await within(closed, graceMs))) {
        log(`job ${job.id} did not finish within the grace period: back to the queue`);
        job.requeue = true;
        gpu.stop(job.id);
      }
      await closed;
      await running.catch(() => {});
      clearInterval(heartbeat);
      await events.close();
      await redis.del(keys.host(id)).catch(() => {});
      await redis.quit().catch(() => redis.disconnect());
      await gpu.close();
    })();
    return closing;
  };
  return { id, device, shutdown };
}

/** Moves a job's result files from the scratch directory into Redis, expiring after `ttlSeconds`. */
async function storeResult(
  redis: Redis,
  keys: QueueKeys,
  id: string,
  dir: string,
  result: JobResult,
  ttlSeconds: number,
): Promise<void> {
  const formats = ["nifti", "png"] as const;
  const files = await Promise.all(formats.map((f) => Deno.readFile(`${dir}/${result[f]}`)));
  const tx = redis.multi();
  formats.forEach((f, i) => tx.set(keys.result(id, f), Buffer.from(files[i]), "EX", ttlSeconds));
  const replies = await tx.exec();
  const failed = replies?.find(([error]) => error);
  if (!replies || failed) throw new Error(`storing the result in Redis failed: ${failed?.[0]?.message}`);
  await Promise.all(formats.map((f) => Deno.remove(`${dir}/${result[f]}`).catch(() => {})));
}

const HELP = `Usage: deno task worker --queue URL [options]

  --queue URL              the shared queue's Redis (redis://[user:pass@]host:port[/db], rediss://…,
                           unix:///path/redis.sock[?password=…]; or set VOXGEN_QUEUE)
  --queue-name NAME        name of the shared queue (default voxgen)
  --data-dir DIR           scratch space for results before they go to Redis (default ./voxgen-worker)
  --models DIR             directory with models/ and adapters/ (default: the data directory)
  --default-model FILE     model used when a request names none (default: the embedded model)
  --lock-duration MS       job lock lifetime; a dead host's job is recovered after about this (default 30000)
  --stalled-interval MS    how often hosts look for jobs of dead hosts (default 15000)
  --shutdown-grace S       seconds the running job may finish on SIGINT/SIGTERM before it is requeued (default 30)
`;

/** Runs the worker host with `args` until SIGINT or SIGTERM. */
export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      queue: { type: "string" },
      "queue-name": { type: "string" },
      "data-dir": { type: "string", default: "voxgen-worker" },
      models: { type: "string" },
      "default-model": { type: "string" },
      "lock-duration": { type: "string" },
      "stalled-interval": { type: "string" },
      "shutdown-grace": { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  const queueUrl = values.queue ?? Deno.env.get("VOXGEN_QUEUE");
  if (!queueUrl) throw new Error("--queue URL is required (or set VOXGEN_QUEUE); see --help.");
  const graceMs = numberOption("shutdown-grace", values["shutdown-grace"], 30, 0, 86400) * 1000;
  const host = await startHost({
    queueUrl,
    queueName: values["queue-name"],
    dataDir: values["data-dir"]!,
    modelsDir: values.models,
    defaultModel: values["default-model"],
    lockDurationMs: numberOption("lock-duration", values["lock-duration"], 30_000, 500, 3_600_000, true),
    stalledIntervalMs: numberOption(
      "stalled-interval",
      values["stalled-interval"],
      15_000,
      250,
      3_600_000,
      true,
    ),
    exitAfterShutdown: true,
  });
  console.log(`voxgen worker ${host.id} ready (GPU: ${host.device.adapter})`);
  await runUntilStopped(() => host.shutdown(graceMs));
  console.error("stopped");
  // Not a natural exit: the idle GPU worker keeps the process alive (exitAfterShutdown says why).
  Deno.exit(0);
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    console.error(`worker: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
