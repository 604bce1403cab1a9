/**
 * `deno task serve`: the sampling server. By default HTTP on the main thread, the GPU in a worker, jobs in
 * SQLite and result files in the data directory:
 *
 * ```
 * <data>/models/<name>.safetensors     models offered besides the embedded default
 * <data>/adapters/<name>.safetensors   adapters
 * <data>/results/<job id>.nii.gz|.png  results
 * <data>/jobs.db                       the job store (also the lock: one server per data directory)
 * ```
 *
 * With `--queue redis://…` it is an API server without a GPU: jobs go to a shared BullMQ queue on Redis,
 * run on GPU worker hosts (`deno task worker`, server/host.ts), and results come back through Redis; any
 * number of API servers can share the queue (docs/deploy.md).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { numberOption } from "../io/options.ts";
import { DEFAULT_MODEL } from "../pipelines/modelfile.ts";
import { createApi, isLoopbackHost } from "./api.ts";
import { Catalog } from "./catalog.ts";
import { catalogFiles } from "./gpu.ts";
import type { WorkerDevice } from "./protocol.ts";
import type { JobQueue } from "./queue.ts";
import { LocalQueue } from "./queue_local.ts";
import { JobStore } from "./store.ts";
import { runUntilStopped } from "./signals.ts";

/** Options of {@linkcode startServer}. */
export interface ServerOptions {
  /** Address to listen on (default 127.0.0.1). A non-loopback address requires `token`. */
  host?: string;
  /** Port (default 8080; 0 picks a free one). */
  port?: number;
  /** Bearer token every `/v1` request must carry; required on a non-loopback host. */
  token?: string;
  /** Data directory (created if missing). */
  dataDir: string;
  /** Model file used when a request names none (default: the embedded model). */
  defaultModel?: string;
  /** Most jobs that may wait (default 32). */
  queueSize?: number;
  /** Most volumes per request (default 8). */
  maxBatch?: number;
  /** Most steps per request (default 1000). */
  maxSteps?: number;
  /** Largest request body in bytes (default 16 KiB). */
  maxBodyBytes?: number;
  /** Seconds a running job may take to finish on shutdown before it is requeued (default 30). */
  shutdownGraceSeconds?: number;
  /** Log sink (default console.error). */
  log?: (message: string) => void;
  /**
   * A shared queue's Redis URL (`redis://[user:password@]host:port[/db]`, `rediss://…`, or
   * `unix:///path/redis.sock[?password=…&db=N]`): this server then runs no GPU worker.
   */
  queueUrl?: string;
  /** Name of the shared queue (default "voxgen"); API servers and worker hosts must agree. */
  queueName?: string;
  /** With a shared queue: seconds finished jobs and their results are kept (default 86400). */
  retentionSeconds?: number;
  /**
   * The process exits (`Deno.exit`) right after `shutdown()`: the GPU worker's thread is then left idle,
   * its device destroyed, instead of being terminated (`GpuRunnerOptions.exitAfterClose`, gpu.ts).
   */
  exitAfterShutdown?: boolean;
}

/** A server that is up. */
export interface RunningServer {
  /** Base URL, e.g. "http://127.0.0.1:8080". */
  url: string;
  /** The port it listens on. */
  port: number;
  /** The worker's GPU adapter (null with a shared queue: the GPUs are on the worker hosts). */
  device: WorkerDevice | null;
  /**
   * Graceful shutdown: stops accepting requests, ends event streams, lets the running job finish (or
   * requeues it after the grace period), stops the worker and closes the store. Safe to call twice.
   */
  shutdown(): Promise<void>;
}

/** Starts the server; rejects when the configuration is unsafe, the data directory is busy or there is no GPU. */
export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const host = options.host ?? "127.0.0.1";
  const log = options.log ?? ((m: string) => console.error(m));
  if (!isLoopbackHost(host) && !options.token) {
    throw new Error(
      `refusing to listen on ${host} without a token: anyone who can reach it could use the GPU. ` +
        "Pass --token (or set VOXGEN_TOKEN), or listen on 127.0.0.1.",
    );
  }
  await Deno.mkdir(options.dataDir, { recursive: true });
  const dataDir = await Deno.realPath(options.dataDir);
  const resultsDir = `${dataDir}/results`;
  // With a shared queue the results live in Redis, not here.
  for (const dir of ["models", "adapters", ...(options.queueUrl ? [] : ["results"])]) {
    await Deno.mkdir(`${dataDir}/${dir}`, { recursive: true });
  }

  const catalog = new Catalog(dataDir, options.defaultModel ?? DEFAULT_MODEL);
  const capacity = options.queueSize ?? 32;
  let queue: JobQueue;
  let device: WorkerDevice | null = null;
  let closeStore = () => {};
  if (options.queueUrl) {
    // Loaded only here, so a server without --queue never loads BullMQ.
    const { RedisQueue } = await import("./queue_redis.ts");
    queue = await RedisQueue.open(options.queueUrl, {
      name: options.queueName,
      capacity,
      retentionSeconds: options.retentionSeconds,
      log,
    });
  } else {
    const store = new JobStore(`${dataDir}/jobs.db`);
    const local = new LocalQueue(store, {
      capacity,
      resultsDir,
      log,
      resolve: catalogFiles(catalog),
      exitAfterStop: options.exitAfterShutdown,
    });
    try {
      device = await local.start();
    } catch (error) {
      await local.stop(0);
      store.close();
      throw new Error(`the GPU worker could not start: ${(error as Error).message}`);
    }
    queue = local;
    closeStore = () => store.close();
  }
  const api = createApi({
    queue,
    catalog,
    token: options.token,
    maxBodyBytes: options.maxBodyBytes ?? 16 * 1024,
    maxSteps: options.maxSteps ?? 1000,
    maxBatch: options.maxBatch ?? 8,
  });
  const listening = Promise.withResolvers<number>();
  const server = Deno.serve({
    hostname: host,
    port: options.port ?? 8080,
    onListen: ({ port }) => listening.resolve(port),
    onError: (error) => {
      log(`request failed: ${(error as Error).stack ?? error}`);
      return new Response(JSON.stringify({ error: { code: "internal_error", message: String(error) } }), {
        status: 500,
        headers: { "content-type": "application/json" },
      });
    },
  }, api.handle);
  server.finished.catch(() => {});
  const port = await listening.promise;

  let closing: Promise<void> | null = null;
  const shutdown = (): Promise<void> => {
    closing ??= (async () => {
      api.closeStreams();
      await server.shutdown();
      await queue.stop((options.shutdownGraceSeconds ?? 30) * 1000);
      closeStore();
    })();
    return closing;
  };
  const shown = host.includes(":") ? `[${host}]` : host;
  return { url: `http://${shown}:${port}`, port, device, shutdown };
}

const HELP = `Usage: deno task serve [options]

  --host ADDR            address to listen on (default 127.0.0.1; others need a token)
  --port N               port (default 8080; 0 = any free port)
  --token T              require "Authorization: Bearer T" on /v1 (or set VOXGEN_TOKEN)
  --data-dir DIR         models/, adapters/, results/ and the job store (default ./voxgen-data)
  --default-model FILE   model used when a request names none (default: the embedded model)
  --queue-size N         most waiting jobs before 429 (default 32)
  --max-batch N          most volumes per request (default 8)
  --max-steps N          most steps per request (default 1000)
  --shutdown-grace S     seconds the running job may finish on SIGINT/SIGTERM before it is requeued (default 30)
  --queue URL            use a shared queue on Redis instead of a local GPU (redis://[user:pass@]host:port[/db],
                         rediss://…, unix:///path/redis.sock[?password=…&db=N]; or set VOXGEN_QUEUE)
  --queue-name NAME      name of the shared queue (default voxgen)
  --retention S          shared queue: seconds finished jobs and their results are kept (default 86400)
`;

/** Runs the command with `args` until SIGINT or SIGTERM. */
export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      host: { type: "string", default: "127.0.0.1" },
      port: { type: "string" },
      token: { type: "string" },
      "data-dir": { type: "string", default: "voxgen-data" },
      "default-model": { type: "string" },
      "queue-size": { type: "string" },
      "max-batch": { type: "string" },
      "max-steps": { type: "string" },
      "shutdown-grace": { type: "string" },
      queue: { type: "string" },
      "queue-name": { type: "string" },
      retention: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
    strict: true,
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  const server = await startServer({
    host: values.host,
    port: numberOption("port", values.port, 8080, 0, 65535, true),
    token: values.token ?? (Deno.env.get("VOXGEN_TOKEN") || undefined),
    dataDir: values["data-dir"]!,
    defaultModel: values["default-model"],
    queueSize: numberOption("queue-size", values["queue-size"], 32, 1, 100000, true),
    maxBatch: numberOption("max-batch", values["max-batch"], 8, 1, 256, true),
    maxSteps: numberOption("max-steps", values["max-steps"], 1000, 1, 100000, true),
    shutdownGraceSeconds: numberOption("shutdown-grace", values["shutdown-grace"], 30, 0, 86400),
    queueUrl: values.queue ?? (Deno.env.get("VOXGEN_QUEUE") || undefined),
    queueName: values["queue-name"],
    retentionSeconds: numberOption("retention", values.retention, 86400, 60, 365 * 86400, true),
    exitAfterShutdown: true,
  });
  const backend = server.device ? `GPU: ${server.device.adapter}` : "shared queue, GPUs on the worker hosts";
  console.log(`voxgen server listening on ${server.url}/ (${backend})`);
  await runUntilStopped(() => server.shutdown());
  console.error("stopped");
  // Not a natural exit: the idle GPU worker keeps the process alive (exitAfterShutdown says why).
  Deno.exit(0);
}

if (import.meta.main) {
  try {
    await main(Deno.args);
  } catch (error) {
    console.error(`serve: ${(error as Error).message}`);
    Deno.exit(1);
  }
}
