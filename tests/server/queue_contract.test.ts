/**
 * One contract, two job queues: the same steps run against the SQLite queue (one GPU worker in this
 * process) and against the Redis queue (BullMQ on a private redis-server, with a worker host in this
 * process). Results, progress, priorities, the bounded queue, cancelling queued and running jobs, a queue
 * restart with jobs waiting, listing, and the metrics. A tiny model (8³) keeps the GPU time small.
 */

import { deepStrictEqual, equal, match, ok, rejects } from "node:assert";
import { readNifti } from "../../io/nifti.ts";
import { Catalog } from "../../server/catalog.ts";
import type { ApiError } from "../../server/errors.ts";
import { catalogFiles } from "../../server/gpu.ts";
import { startHost } from "../../server/host.ts";
import type { SampleRequest } from "../../server/protocol.ts";
import type { JobQueue } from "../../server/queue.ts";
import { LocalQueue } from "../../server/queue_local.ts";
import { RedisQueue } from "../../server/queue_redis.ts";
import { JobStore } from "../../server/store.ts";
import { makeTinyModel } from "./helpers.ts";
import { finalState, runningState, startRedis } from "./queue_helpers.ts";

const CAPACITY = 3;
const quiet = () => {};

/** A queue under test, with a way to restart it (a new queue object over the same jobs). */
interface Fixture {
  queue: JobQueue;
  restart(): Promise<void>;
  close(): Promise<void>;
}

const request = (seed: number, steps = 2, priority = 0): SampleRequest => ({
  model: "default",
  adapters: [],
  sampler: "ddim",
  steps,
  seed,
  guidanceScale: 1,
  batch: 1,
  priority,
});

async function readAll(body: ReadableStream<Uint8Array> | Uint8Array): Promise<Uint8Array> {
  return body instanceof Uint8Array ? body : new Uint8Array(await new Response(body).arrayBuffer());
}

async function contract(t: Deno.TestContext, fx: Fixture): Promise<void> {
  const q = () => fx.queue;
  let restartedAt = "";
  let doneSinceRestart = 0;

  await t.step("a job runs to done with progress, and its result files are served", async () => {
    const job = await q().submit(request(1, 3));
    deepStrictEqual([job.status, job.progress], ["queued", 0]);
    const steps: number[] = [];
    const states: string[] = [];
    const done = Promise.withResolvers<void>();
    q().subscribe(job.id, (e) => {
      if (e.type === "progress") steps.push(e.step);
      else states.push(e.job.status);
      if (e.type === "state" && e.job.status === "done") done.resolve();
    }, "queued");
    await done.promise;
    deepStrictEqual(steps, [1, 2, 3]);
    deepStrictEqual(states.filter((s) => s !== "queued"), ["running", "done"]);
    const after = await q().get(job.id);
    equal(after.status, "done");
    equal(after.progress, 1);
    ok(after.startedAt && after.finishedAt && after.startedAt <= after.finishedAt);
    const nifti = (await q().openResult(after, "nifti"))!;
    const bytes = await readAll(nifti.body);
    equal(bytes.byteLength, nifti.size);
    deepStrictEqual((await readNifti(bytes)).shape, [8, 8, 8]);
    const png = await readAll((await q().openResult(after, "png"))!.body);
    deepStrictEqual([...png.subarray(1, 4)], [0x50, 0x4e, 0x47]); // "PNG"
  });

  await t.step("unknown jobs are 404; finished ones cannot be cancelled (409)", async () => {
    await rejects(q().get("no-such-job"), (e: ApiError) => e.status === 404 && e.code === "job_not_found");
    const [done] = await q().list(1, "done");
    await rejects(q().cancel(done.id), (e: ApiError) => e.status === 409 && e.code === "job_finished");
  });

  await t.step(
    "higher priority runs first; a queued job is cancelled at once; the queue is bounded",
    async () => {
      const long = await q().submit(request(2, 400));
      await runningState(q(), long.id);
      const a = await q().submit(request(3, 1, 0));
      const b = await q().submit(request(4, 1, 0));
      const h = await q().submit(request(5, 1, 50));
      await rejects(q().submit(request(6)), (e: ApiError) => {
        deepStrictEqual([e.status, e.code], [429, "queue_full"]);
        ok(Number(e.headers["Retry-After"]) >= 1, JSON.stringify(e.headers));
        return true;
      });
      const cancelled = await q().cancel(b.id);
      deepStrictEqual([cancelled.settled, cancelled.job.status], [true, "cancelled"]);
      equal((await q().get(b.id)).status, "cancelled");
      // Cancelling the running job lets the others run, the high-priority one first.
      const stopped = await q().cancel(long.id, 30_000);
      deepStrictEqual([stopped.settled, stopped.job.status], [true, "cancelled"]);
      const [ja, jh] = [await finalState(q(), a.id), await finalState(q(), h.id)];
      deepStrictEqual([ja.status, jh.status], ["done", "done"]);
      ok(jh.startedAt! <= ja.startedAt!, `high ${jh.startedAt} before low ${ja.startedAt}`);
      const cancelledList = await q().list(10, "cancelled");
      deepStrictEqual(cancelledList.map((j) => j.id).sort(), [b.id, long.id].sort());
      equal((await q().list(50)).filter((j) => j.status === "cancelled").length, 2);
    },
  );

  await t.step("queued jobs survive a restart of the queue", async () => {
    const long = await q().submit(request(7, 400));
    await runningState(q(), long.id);
    const waiting = [await q().submit(request(8)), await q().submit(request(9))];
    await q().cancel(long.id, 30_000);
    await fx.restart();
    // Jobs finished before this were counted by the queue that was closed (it may finish one while closing).
    restartedAt = new Date().toISOString();
    for (const job of waiting) {
      const finished = await finalState(q(), job.id);
      equal(finished.status, "done");
      if (finished.finishedAt! >= restartedAt) doneSinceRestart++;
    }
    const listed = (await q().list(3)).map((j) => j.id);
    deepStrictEqual(listed.slice(0, 2), [waiting[1].id, waiting[0].id], "newest first");
  });

  await t.step("health and metrics count what happened", async () => {
    const health = await q().health();
    deepStrictEqual([health.worker, health.depth, health.capacity, health.active], ["ready", 0, CAPACITY, 0]);
    ok(health.device?.adapter);
    const m = await q().metrics();
    // Since the (last) start: the local queue counts in memory, Redis keeps them across restarts.
    ok(m.completed >= Math.max(1, doneSinceRestart), `${doneSinceRestart}: ${JSON.stringify(m)}`);
    equal(m.secondsBuckets.reduce((a, b) => a + b, 0), m.completed);
    ok(m.secondsSum > 0);
    deepStrictEqual([m.depth, m.running, m.workers], [0, 0, 1]);
  });
}

Deno.test({
  name: "job queue contract: SQLite (default)",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const dir = await Deno.makeTempDir();
    await makeTinyModel(`${dir}/tiny.safetensors`);
    await Deno.mkdir(`${dir}/results`);
    const resolve = catalogFiles(new Catalog(dir, `${dir}/tiny.safetensors`));
    const open = async () => {
      const store = new JobStore(`${dir}/jobs.db`);
      const queue = new LocalQueue(store, {
        capacity: CAPACITY,
        resultsDir: `${dir}/results`,
        resolve,
        log: quiet,
      });
      await queue.start();
      return { queue, store };
    };
    let current = await open();
    const fx: Fixture = {
      get queue() {
        return current.queue;
      },
      async restart() {
        await this.close();
        current = await open();
      },
      async close() {
        await current.queue.stop(0);
        current.store.close();
      },
    };
    try {
      await contract(t, fx);
    } finally {
      await fx.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "job queue contract: Redis (BullMQ) with a worker host",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const dir = await Deno.makeTempDir();
    await makeTinyModel(`${dir}/tiny.safetensors`);
    const redis = await startRedis();
    const open = () => RedisQueue.open(redis.url, { capacity: CAPACITY, log: quiet });
    let queue = await open();
    const host = await startHost({
      queueUrl: redis.url,
      dataDir: `${dir}/host`,
      defaultModel: `${dir}/tiny.safetensors`,
      lockDurationMs: 3000,
      stalledIntervalMs: 1000,
      heartbeatMs: 500,
      log: quiet,
    });
    const fx: Fixture = {
      get queue() {
        return queue;
      },
      async restart() {
        await queue.stop(0);
        queue = await open();
      },
      close: () => queue.stop(0),
    };
    try {
      await t.step("a bad queue URL is refused with what is accepted", async () => {
        await rejects(
          RedisQueue.open("http://x", { capacity: 1 }),
          /use redis:\/\/, rediss:\/\/ or unix:\/\//,
        );
        await rejects(
          RedisQueue.open(`unix://${dir}/no.sock`, { capacity: 1, log: quiet }),
          (e: Error) => {
            match(e.message, /cannot reach the queue's Redis/);
            return true;
          },
        );
      });
      await contract(t, fx);
      await t.step("the host is listed in health with its GPU and leaves no scratch files", async () => {
        const health = await queue.health();
        equal(health.workers?.length, 1);
        equal(health.workers![0].state, "ready");
        equal(health.workers![0].running, null);
        deepStrictEqual([...Deno.readDirSync(`${dir}/host/results`)], []);
      });
    } finally {
      await fx.close();
      await host.shutdown(0);
      await redis.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
