/**
 * Helpers of the shared-queue tests and of bench/queue.ts: a private `redis-server` on a unix socket
 * (TCP off, so parallel test files cannot collide), GPU worker host processes, and waiting for a job's
 * final state in-process.
 *
 * A missing `redis-server` is an error, never a skip: CI installs it (`apt-get install redis-server`, done
 * by scripts/voxgen for `test`).
 *
 * @module
 */

import type { JobEvent, JobQueue } from "../../server/queue.ts";
import { FINAL_STATES, type Job } from "../../server/store.ts";

const HOST = new URL("../../server/host.ts", import.meta.url).pathname;
const CONFIG = new URL("../../deno.json", import.meta.url).pathname;

/** A private Redis server. */
export interface RedisServer {
  /** Queue URL of its socket, e.g. "unix:///tmp/x/redis.sock". */
  url: string;
  /** Stops it and removes its directory. */
  stop(): Promise<void>;
}

/**
 * Starts `redis-server` on a fresh unix socket with TCP off and no persistence; resolves once it accepts
 * connections. With `password`, clients must authenticate (the URL carries it).
 */
export async function startRedis(password?: string): Promise<RedisServer> {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-redis-" });
  const sock = `${dir}/redis.sock`;
  let child: Deno.ChildProcess;
  try {
    child = new Deno.Command("redis-server", {
      args: [
        ...["--port", "0", "--unixsocket", sock, "--unixsocketperm", "700"],
        ...["--save", "", "--appendonly", "no", "--dir", dir, "--maxmemory-policy", "noeviction"],
        ...(password ? ["--requirepass", password] : []),
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
  } catch (error) {
    await Deno.remove(dir, { recursive: true });
    throw new Error(
      `redis-server could not be started (${(error as Error).message}); the shared-queue tests need it: ` +
        "apt-get install redis-server (scripts/voxgen test installs it when apt is usable).",
    );
  }
  const stop = async () => {
    try {
      child.kill("SIGTERM");
    } catch { /* already gone */ }
    await child.status;
    await child.stderr.cancel().catch(() => {});
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  const deadline = Date.now() + 10_000;
  while (true) {
    try {
      (await Deno.connect({ transport: "unix", path: sock })).close();
      break;
    } catch {
      if (Date.now() > deadline) {
        await stop();
        throw new Error("redis-server did not open its socket within 10 s");
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }
  const query = password ? `?password=${encodeURIComponent(password)}` : "";
  return { url: `unix://${sock}${query}`, stop };
}

/** A GPU worker host process (`server/host.ts`). */
export interface HostProcess {
  /** The process. */
  child: Deno.ChildProcess;
  /** Everything it wrote to stderr so far (its log). */
  log(): string;
  /** Sends `signal` and waits for the exit status. */
  stop(signal?: Deno.Signal): Promise<Deno.CommandStatus>;
}

/** Starts `deno run server/host.ts` with `args` and waits for its "ready" line. */
export async function startHost(args: string[], env: Record<string, string> = {}): Promise<HostProcess> {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--config", CONFIG, HOST, ...args],
    env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1", ...env },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let stderr = "";
  const stderrDone = child.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
    new WritableStream({ write: (s) => void (stderr += s) }),
  );
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let stdout = "";
  while (!/voxgen worker \S+ ready/.test(stdout)) {
    const { value, done } = await lines.read();
    if (done) {
      await stderrDone;
      throw new Error(`the worker host exited before it was ready:\n${stdout}\n${stderr}`);
    }
    stdout += value;
  }
  (async () => {
    while (!(await lines.read()).done) { /* discard */ }
  })();
  const status = child.status;
  return {
    child,
    log: () => stderr,
    async stop(signal: Deno.Signal = "SIGTERM") {
      try {
        child.kill(signal);
      } catch { /* already gone */ }
      const s = await status;
      await stderrDone;
      return s;
    },
  };
}

/**
 * Waits until the hosts' logs together contain `text` (or `timeoutMs` passes, and the caller's assertion then
 * reports it). A host logs "job … done in" on BullMQ's `completed` event, which comes after the job is
 * marked done in Redis, so an API server can report a job done a moment before its host's line is written.
 */
export async function logsOf(
  hosts: readonly HostProcess[],
  text: string,
  timeoutMs = 15_000,
): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let logs = hosts.map((h) => h.log()).join("");
  while (!logs.includes(text) && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    logs = hosts.map((h) => h.log()).join("");
  }
  return logs;
}

/** Resolves with job `id` once it is in a final state (done, failed, cancelled). */
export async function finalState(queue: JobQueue, id: string, timeoutMs = 60_000): Promise<Job> {
  const job = await queue.get(id);
  if (FINAL_STATES.includes(job.status)) return job;
  const done = Promise.withResolvers<Job>();
  const unsubscribe = queue.subscribe(id, (e: JobEvent) => {
    if (e.type === "state" && FINAL_STATES.includes(e.job.status)) done.resolve(e.job);
  }, job.status);
  const timer = setTimeout(
    () => done.reject(new Error(`job ${id} not finished after ${timeoutMs} ms`)),
    timeoutMs,
  );
  try {
    return await done.promise;
  } finally {
    clearTimeout(timer);
    unsubscribe();
  }
}

/** Resolves once job `id` reports progress (it is running on a GPU worker). */
export async function runningState(queue: JobQueue, id: string, timeoutMs = 60_000): Promise<void> {
  const started = Promise.withResolvers<void>();
  const unsubscribe = queue.subscribe(id, (e: JobEvent) => {
    if (e.type === "progress") started.resolve();
    if (e.type === "state" && FINAL_STATES.includes(e.job.status)) {
      started.reject(new Error(`job ${id} finished (${e.job.status}) before it was seen running`));
    }
  }, "queued");
  const timer = setTimeout(
    () => started.reject(new Error(`job ${id} not running after ${timeoutMs} ms`)),
    timeoutMs,
  );
  try {
    await started.promise;
  } finally {
    clearTimeout(timer);
    unsubscribe();
  }
}
