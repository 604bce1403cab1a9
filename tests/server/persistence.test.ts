/**
 * The server across restarts, on loopback without a token: finished results are still served, queued jobs
 * resume, a job running at SIGTERM is requeued (grace 0) or finished (grace 30), a job running when the
 * server was killed runs again, and a second server cannot take the same data directory.
 */

import { deepStrictEqual, equal, match, ok } from "node:assert";
import { readNifti } from "../../io/nifti.ts";
import { JobStore } from "../../server/store.ts";
import {
  makeTinyModel,
  rawHttp,
  spawnServer,
  startServer,
  submit,
  waitForJob,
  waitUntilRunning,
} from "./helpers.ts";

Deno.test({
  name: "restart persistence, graceful shutdown and crash recovery",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn(t) {
    const dir = await Deno.makeTempDir();
    const model = `${dir}/tiny.safetensors`;
    await makeTinyModel(model);
    const args = ["--data-dir", dir, "--default-model", model];
    const result = async (url: string, id: string) =>
      new Uint8Array(await (await fetch(`${url}/v1/jobs/${id}/result`)).arrayBuffer());
    const stored = (id: string) => {
      const store = new JobStore(`${dir}/jobs.db`);
      try {
        return store.get(id)!;
      } finally {
        store.close();
      }
    };

    // First server: no token needed on loopback.
    let server = await startServer([...args, "--shutdown-grace", "0"]);
    const a = (await submit(server.url, { steps: 2, seed: 11 })).body.id as string;
    equal((await waitForJob(server.url, a)).status, "done");
    const bytesA = await result(server.url, a);
    const b = (await submit(server.url, { steps: 40, seed: 12 })).body.id as string;
    const c = (await submit(server.url, { steps: 2, seed: 13 })).body.id as string;

    await t.step("without a token, a foreign Host header is refused (DNS rebinding)", async () => {
      const response = await rawHttp(
        server.port,
        `GET /v1/jobs HTTP/1.1\r\nHost: evil.example:${server.port}\r\nConnection: close\r\n\r\n`,
      );
      match(response, /^HTTP\/1\.1 403/);
      match(response, /"code":"forbidden_host"/);
      // The same request with a loopback Host works.
      match(
        await rawHttp(
          server.port,
          `GET /v1/jobs HTTP/1.1\r\nHost: localhost:${server.port}\r\nConnection: close\r\n\r\n`,
        ),
        /^HTTP\/1\.1 200/,
      );
    });

    await t.step("SIGTERM with grace 0 requeues the running job and leaves the queue as it was", async () => {
      await waitUntilRunning(server.url, b);
      const status = await server.stop("SIGTERM");
      equal(status.code, 0, server.log());
      match(server.log(), /did not finish within the grace period: requeued/);
      const jb = stored(b);
      deepStrictEqual([jb.status, jb.progress, jb.startedAt], ["queued", 0, undefined]);
      equal(stored(c).status, "queued");
    });

    await t.step("after a restart, finished results are served and queued jobs resume", async () => {
      server = await startServer(args);
      match(server.log(), /resuming 2 queued job\(s\)/);
      const job = await (await fetch(`${server.url}/v1/jobs/${a}`)).json();
      equal(job.status, "done");
      deepStrictEqual(await result(server.url, a), bytesA);
      deepStrictEqual([(await waitForJob(server.url, b)).status, (await waitForJob(server.url, c)).status], [
        "done",
        "done",
      ]);
      deepStrictEqual((await readNifti(await result(server.url, b))).shape, [8, 8, 8]);
    });

    await t.step("a second server cannot use the same data directory", async () => {
      const { code, stderr } = await spawnServer(["--port", "0", ...args]).output();
      equal(code, 1);
      match(new TextDecoder().decode(stderr), /in use by another voxgen server/);
    });

    await t.step("a job running when the server is killed runs again after the restart", async () => {
      const d = (await submit(server.url, { steps: 30, seed: 14 })).body.id as string;
      await waitUntilRunning(server.url, d);
      await server.stop("SIGKILL");
      equal(stored(d).status, "running");
      server = await startServer([...args, "--shutdown-grace", "30"]);
      const done = await waitForJob(server.url, d);
      equal(done.status, "done");
      ok(Number.isFinite((await readNifti(await result(server.url, d))).data[0]));
    });

    await t.step("SIGTERM with a grace period lets the running job finish", async () => {
      const e = (await submit(server.url, { steps: 20, seed: 15 })).body.id as string;
      await waitUntilRunning(server.url, e);
      const status = await server.stop("SIGTERM");
      equal(status.code, 0, server.log());
      const je = stored(e);
      equal(je.status, "done");
      ok((await Deno.stat(`${dir}/results/${je.result!.nifti}`)).size > 0);
    });

    await Deno.remove(dir, { recursive: true });
  },
});
