/**
 * The shared queue across processes: a private redis-server (with a password, given in the URL), two API
 * servers (`serve --queue`) and two GPU worker hosts (`worker`), all on loopback. Queued jobs survive an API
 * server restart; results are served by either API server; a cancel sent to one API server stops the job on
 * whichever host runs it; a crashed GPU worker fails its job and is replaced; a host SIGKILLed mid-job has
 * its job finished by the other host, and every job completes exactly once; a restarted host takes jobs
 * again, and one stopped (SIGTERM) mid-job puts its job back for the other; with Redis gone, /healthz
 * answers 503. Short lock and stall intervals keep the recovery to a few seconds.
 */

import { deepStrictEqual, equal, match, ok } from "node:assert";
import { readNifti } from "../../io/nifti.ts";
import {
  makeTinyModel,
  readEvents,
  type ServerProcess,
  startServer,
  submit,
  waitForJob,
  waitUntilRunning,
} from "./helpers.ts";
import { type HostProcess, logsOf, startHost, startRedis } from "./queue_helpers.ts";

const TOKEN = "queue-test-token";
const AUTH = { authorization: `Bearer ${TOKEN}` };
const CRASH_SEED = 667;
/** Jobs with this seed crash their host's GPU worker after the first step (server/worker.ts's test hook). */
const FAULTS = { VOXGEN_TEST_FAULTS: `${CRASH_SEED}:crash` };

Deno.test({
  name: "shared queue: two API servers, two worker hosts, restart, cross-host cancel, SIGKILL mid-job",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const dir = await Deno.makeTempDir();
    const model = `${dir}/tiny.safetensors`;
    await makeTinyModel(model);
    const redis = await startRedis("s3cret/&pass");
    const apiArgs = (name: string) => [
      ...["--queue", redis.url, "--token", TOKEN, "--data-dir", `${dir}/${name}`, "--default-model", model],
      ...["--queue-size", "20"],
    ];
    const hostArgs = (name: string) => [
      ...["--queue", redis.url, "--data-dir", `${dir}/${name}`, "--default-model", model],
      ...["--lock-duration", "2000", "--stalled-interval", "1000", "--shutdown-grace", "0"],
    ];
    const servers: ServerProcess[] = [];
    const hosts: HostProcess[] = [];
    const get = async (url: string, path: string) =>
      await (await fetch(`${url}${path}`, { headers: AUTH })).json();
    const result = async (url: string, id: string) =>
      new Uint8Array(await (await fetch(`${url}/v1/jobs/${id}/result`, { headers: AUTH })).arrayBuffer());
    try {
      let a = await startServer(apiArgs("api-a"));
      const b = await startServer(apiArgs("api-b"));
      servers.push(a, b);

      const queued: string[] = [];
      await t.step("without worker hosts, jobs wait and /healthz says so (200)", async () => {
        for (const seed of [1, 2, 3]) {
          const res = await submit(a.url, { steps: 3, seed }, AUTH);
          equal(res.status, 202);
          queued.push(res.body.id as string);
        }
        const res = await fetch(`${b.url}/healthz`);
        equal(res.status, 200);
        const health = await res.json();
        deepStrictEqual([health.status, health.queue, health.depth, health.workers], [
          "no_workers",
          "redis",
          3,
          [],
        ]);
        equal(health.device, null);
      });

      await t.step("queued jobs survive an API server restart", async () => {
        equal((await a.stop("SIGTERM")).code, 0, a.log());
        a = await startServer(apiArgs("api-a"));
        servers[0] = a;
        match(a.log(), /3 job\(s\) waiting/);
        for (const id of queued) equal((await get(a.url, `/v1/jobs/${id}`)).status, "queued");
      });

      await t.step("two worker hosts run them; either API server serves the results", async () => {
        hosts.push(await startHost(hostArgs("host-1"), FAULTS), await startHost(hostArgs("host-2"), FAULTS));
        for (const id of queued) equal((await waitForJob(a.url, id, AUTH)).status, "done");
        for (const id of queued) {
          const bytes = await result(b.url, id);
          deepStrictEqual(bytes, await result(a.url, id));
          deepStrictEqual((await readNifti(bytes)).shape, [8, 8, 8]);
        }
        const health = await (await fetch(`${a.url}/healthz`)).json();
        equal(health.status, "ok");
        deepStrictEqual(health.workers.map((w: { state: string }) => w.state), ["ready", "ready"]);
      });

      await t.step("a cancel sent to one API server stops the job on the host that runs it", async () => {
        const id = (await submit(a.url, { steps: 1000, seed: 4 }, AUTH)).body.id as string;
        const events = readEvents(a.url, id, AUTH);
        await waitUntilRunning(b.url, id, AUTH);
        const res = await fetch(`${b.url}/v1/jobs/${id}`, { method: "DELETE", headers: AUTH });
        // 200 when it stopped within 5 s, 202 when it is still stopping (a loaded machine).
        ok([200, 202].includes(res.status), `${res.status} ${JSON.stringify(await res.json())}`);
        const last = (await events).at(-1)?.data;
        deepStrictEqual([last?.status, last?.error], ["cancelled", "cancelled by request"]);
        const holder = hosts.filter((h) => h.log().includes(`job ${id}: cancel requested`));
        equal(holder.length, 1, "exactly one host held the job");
        equal((await get(a.url, `/v1/jobs/${id}`)).status, "cancelled");
      });

      await t.step(
        "a crashed GPU worker fails its job; its host replaces it and takes the next",
        async () => {
          const id = (await submit(a.url, { steps: 5, seed: CRASH_SEED }, AUTH)).body.id as string;
          const failed = await waitForJob(b.url, id, AUTH);
          equal(failed.status, "failed");
          match(failed.error as string, /the GPU worker crashed/);
          const next = (await submit(a.url, { steps: 2, seed: 5 }, AUTH)).body.id as string;
          equal((await waitForJob(a.url, next, AUTH)).status, "done");
          const health = await (await fetch(`${a.url}/healthz`)).json();
          ok(health.workerRestarts >= 1, JSON.stringify(health));
        },
      );

      await t.step(
        "a host SIGKILLed mid-job: its job runs on the other host; every job completes once",
        async () => {
          const ids: string[] = [];
          for (const seed of [10, 11, 12, 13]) {
            ids.push((await submit(a.url, { steps: 40, seed }, AUTH)).body.id as string);
          }
          // Wait until both hosts run a job, then kill the first.
          let victim: { running: string } | undefined;
          for (let i = 0; i < 600 && !victim; i++) {
            const { workers } = await (await fetch(`${a.url}/healthz`)).json();
            if (workers.every((w: { running: string | null }) => w.running)) {
              victim = workers.find((w: { id: string }) => hosts[0].log().includes(w.id));
            } else await new Promise((r) => setTimeout(r, 50));
          }
          ok(victim, "both hosts were seen running a job");
          const killed = await hosts[0].stop("SIGKILL");
          equal(killed.signal, "SIGKILL");
          for (const id of ids) {
            const done = await waitForJob(b.url, id, AUTH);
            equal(done.status, "done", JSON.stringify(done));
            ok(Number.isFinite((await readNifti(await result(a.url, id))).data[0]));
          }
          match(hosts[1].log(), new RegExp(`job ${victim.running} started again`));
          for (const id of [...queued, ...ids]) {
            const logs = await logsOf(hosts, `job ${id} done in`);
            equal(logs.split(`job ${id} done in`).length - 1, 1, `job ${id} completed exactly once`);
          }
        },
      );

      await t.step(
        "the killed host restarts; a host stopped mid-job puts its job back for the other",
        async () => {
          hosts[0] = await startHost(hostArgs("host-1"), FAULTS);
          const id = (await submit(b.url, { steps: 60, seed: 20 }, AUTH)).body.id as string;
          await waitUntilRunning(a.url, id, AUTH);
          const { workers } = await (await fetch(`${a.url}/healthz`)).json();
          const holder = workers.find((w: { running: string | null }) => w.running === id);
          const [stopped, other] = hosts[0].log().includes(holder.id)
            ? [hosts[0], hosts[1]]
            : [hosts[1], hosts[0]];
          // --shutdown-grace 0: back to the queue at once; then the host exits 0 (not 139: server/README.md).
          equal((await stopped.stop("SIGTERM")).code, 0, stopped.log());
          const log = stopped.log();
          match(log, new RegExp(`job ${id} did not finish within the grace period: back to the queue`));
          const back = log.indexOf(`job ${id} is back in the queue`);
          ok(
            back >= 0 && back < log.lastIndexOf("stopped"),
            `the job went back before the host stopped:\n${log}`,
          );
          equal((await waitForJob(a.url, id, AUTH)).status, "done");
          match(other.log(), new RegExp(`job ${id} started again`));
          const logs = await logsOf([stopped, other], `job ${id} done in`);
          equal(logs.split(`job ${id} done in`).length - 1, 1, `job ${id} completed exactly once`);
        },
      );

      await t.step("/metrics counts the cluster's jobs (behind the token)", async () => {
        equal((await fetch(`${a.url}/metrics`)).status, 401);
        const text = await (await fetch(`${b.url}/metrics`, { headers: AUTH })).text();
        const value = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1]);
        deepStrictEqual(
          [
            value("voxgen_jobs_completed_total"),
            value("voxgen_jobs_cancelled_total"),
            value("voxgen_queue_depth"),
          ],
          [9, 1, 0],
        );
        equal(value("voxgen_jobs_failed_total"), 1);
        equal(value("voxgen_job_seconds_count"), 9);
        match(text, /^voxgen_job_seconds_bucket\{le="\+Inf"\} 9$/m);
      });

      await t.step(
        "a wrong Redis password is refused; with Redis gone, /healthz is 503 and says why",
        async () => {
          const wrong = redis.url.replace(/password=[^&]*/, "password=wrong");
          const res = await startServer(["--queue", wrong, "--data-dir", `${dir}/api-c`]).catch((e) => e);
          match(String(res), /cannot reach the queue's Redis.*(WRONGPASS|invalid username-password)/s);
          await redis.stop();
          const health = await fetch(`${a.url}/healthz`);
          equal(health.status, 503);
          match((await health.json()).workerError, /the queue's Redis cannot be reached/);
        },
      );
    } finally {
      // SIGKILL: with Redis gone a graceful stop would wait for reconnections.
      for (const p of [...hosts, ...servers]) await p.stop("SIGKILL").catch(() => {});
      await redis.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
