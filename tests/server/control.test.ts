/**
 * The server samples under control: a condition volume is uploaded (PUT /v1/conditions/:name), a request
 * names a control module of the data directory and its conditions, and the job writes controlled volumes; a
 * condition on the wrong grid fails the job with a clear error, and malformed control requests are refused.
 * The condition travels inside the request, so a Redis worker host without the upload runs it too.
 */

import { deepStrictEqual, equal, match, notDeepStrictEqual, ok } from "node:assert";
import { encodeNifti, readNifti } from "../../io/nifti.ts";
import {
  makeTinyControl,
  makeTinyLatentModel,
  makeTinyModel,
  type ServerProcess,
  startServer,
  submit,
  TINY_AFFINE,
  waitForJob,
} from "./helpers.ts";
import { type HostProcess, startHost, startRedis } from "./queue_helpers.ts";

/** A 0/1 ball on an n³ grid. */
function ball(n: number): Float32Array {
  const c = (n - 1) / 2;
  return Float32Array.from({ length: n ** 3 }, (_, i) => {
    const x = i % n, y = Math.floor(i / n) % n, z = Math.floor(i / (n * n));
    return (x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2 < (n / 3) ** 2 ? 1 : 0;
  });
}

Deno.test({
  name: "server: upload a condition volume and sample under a control module",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-server-control-" });
    await Deno.mkdir(`${dir}/controls`);
    await makeTinyModel(`${dir}/default.safetensors`);
    await makeTinyControl(`${dir}/default.safetensors`, `${dir}/controls/vcm.safetensors`);
    const server = await startServer(["--data-dir", dir, "--default-model", `${dir}/default.safetensors`]);
    try {
      const put = (name: string, body: Uint8Array) =>
        fetch(`${server.url}/v1/conditions/${name}`, {
          method: "PUT",
          body: new Blob([body as Uint8Array<ArrayBuffer>]),
        });
      const up = await put("mask", encodeNifti({ data: ball(8), shape: [8, 8, 8] }));
      equal(up.status, 201);
      deepStrictEqual(await up.json(), { name: "mask", shape: [8, 8, 8] });
      equal((await put("big", encodeNifti({ data: ball(16), shape: [16, 16, 16] }))).status, 201);
      const junk = await put("junk", new TextEncoder().encode("not a volume"));
      equal(junk.status, 422);
      equal((await junk.json()).error.code, "invalid_condition");

      const models = await (await fetch(`${server.url}/v1/models`)).json();
      deepStrictEqual(models.controls.map((c: { name: string }) => c.name), ["vcm"]);

      const base = { steps: 3, seed: 5 };
      const plain = await submit(server.url, base);
      const steered = await submit(server.url, { ...base, control: { name: "vcm", conditions: ["mask"] } });
      equal(steered.status, 202, JSON.stringify(steered.body));
      const volumes = [];
      for (const id of [plain.body.id, steered.body.id] as string[]) {
        const job = await waitForJob(server.url, id);
        equal(job.status, "done", JSON.stringify(job));
        const res = await fetch(`${server.url}/v1/jobs/${id}/result`);
        volumes.push((await readNifti(new Uint8Array(await res.arrayBuffer()))).data);
      }
      notDeepStrictEqual(volumes[1], volumes[0]);
      // The condition travels inside the stored request (so any worker host can run it), shown by its size.
      const shown = await (await fetch(`${server.url}/v1/jobs/${steered.body.id}`)).json();
      match(JSON.stringify(shown.request.control.volumes), /^\["<\d+ bytes of NIfTI>"\]$/);
      // The job links its condition volume; it comes back as uploaded, on the result's grid and affine (the
      // upload had none), so a viewer overlays it voxel for voxel. A job without a condition: 404.
      const link = `/v1/jobs/${steered.body.id}/condition?index=0`;
      deepStrictEqual(shown.conditions, [{ name: "mask", kind: "control", nifti: link }]);
      const served = await fetch(`${server.url}${link}`);
      equal(served.status, 200);
      equal(served.headers.get("content-type"), "application/gzip");
      const condition = await readNifti(new Uint8Array(await served.arrayBuffer()));
      deepStrictEqual(condition.shape, [8, 8, 8]);
      deepStrictEqual(condition.data, ball(8));
      deepStrictEqual(condition.affine, TINY_AFFINE);
      const none = await fetch(`${server.url}/v1/jobs/${plain.body.id}/condition`);
      equal(none.status, 404);
      match(
        (await none.json()).error.message,
        /was made without a condition volume \(no control condition, model condition or inpainting mask\)/,
      );
      const beyond = await fetch(`${server.url}/v1/jobs/${steered.body.id}/condition?index=1`);
      equal(beyond.status, 404);
      match((await beyond.json()).error.message, /has 1 condition volume\(s\) \(mask\); index 0\.\.0/);
      // A request copies the upload as it is when submitted: replaced by a wrong-grid volume, the next one fails.
      equal((await put("mask", encodeNifti({ data: ball(16), shape: [16, 16, 16] }))).status, 201);
      const again = await waitForJob(
        server.url,
        (await submit(server.url, { ...base, control: { name: "vcm", conditions: ["mask"] } })).body
          .id as string,
      );
      equal(again.status, "failed", "a new request takes the replaced (wrong-grid) upload");
      match(again.error as string, /is 16×16×16; this control module takes it on the grid 8×8×8/);

      const wrongGrid = await submit(server.url, { ...base, control: { name: "vcm", conditions: ["big"] } });
      const failed = await waitForJob(server.url, wrongGrid.body.id as string);
      equal(failed.status, "failed");
      match(
        failed.error as string,
        /condition "mask" \(big\) is 16×16×16; this control module takes it on the grid 8×8×8/,
      );

      for (
        const [control, status, pattern] of [
          [{ name: "vcm", conditions: [] }, 422, /takes 1 condition\(s\) \(mask\); 0 given/],
          [{ name: "vcm", conditions: ["absent"] }, 404, /No condition named "absent"/],
          [{ name: "nope", conditions: ["mask"] }, 404, /No control named "nope"/],
          [{ name: "vcm", conditions: ["mask"], scale: 99 }, 422, /control\.scale 99 is outside/],
          [{ name: "vcm", conditions: "mask" }, 400, /control\.conditions must be an array/],
        ] as const
      ) {
        const r = await submit(server.url, { ...base, control });
        equal(r.status, status, JSON.stringify(r.body));
        match((r.body.error as { message: string }).message, pattern);
      }
    } finally {
      await server.stop();
      await Deno.remove(dir, { recursive: true });
    }
    ok(true);
  },
});

Deno.test({
  name: "server: a latent model samples under a control module whose condition is on the image grid",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-server-control-latent-" });
    for (const sub of ["models", "controls"]) await Deno.mkdir(`${dir}/${sub}`);
    await makeTinyModel(`${dir}/default.safetensors`);
    await makeTinyLatentModel(`${dir}/models/latent.safetensors`);
    await makeTinyControl(`${dir}/models/latent.safetensors`, `${dir}/controls/lvcm.safetensors`);
    const server = await startServer(["--data-dir", dir, "--default-model", `${dir}/default.safetensors`]);
    try {
      const put = await fetch(`${server.url}/v1/conditions/mask`, {
        method: "PUT",
        body: new Blob([encodeNifti({ data: ball(8), shape: [8, 8, 8] }) as Uint8Array<ArrayBuffer>]),
      });
      equal(put.status, 201);
      const base = { model: "latent", steps: 3, seed: 5 };
      const volumes = [];
      for (const body of [base, { ...base, control: { name: "lvcm", conditions: ["mask"] } }]) {
        const job = await waitForJob(server.url, (await submit(server.url, body)).body.id as string);
        equal(job.status, "done", JSON.stringify(job));
        const res = await fetch(`${server.url}/v1/jobs/${job.id}/result`);
        const volume = await readNifti(new Uint8Array(await res.arrayBuffer()));
        deepStrictEqual(volume.shape, [8, 8, 8], "decoded to the image grid");
        volumes.push(volume.data);
      }
      notDeepStrictEqual(volumes[1], volumes[0]);
    } finally {
      await server.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "server: a control request runs on a Redis worker host, which has the module but not the upload",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-server-control-queue-" });
    const model = `${dir}/tiny.safetensors`;
    await makeTinyModel(model);
    for (const side of ["api", "host"]) await Deno.mkdir(`${dir}/${side}/controls`, { recursive: true });
    await makeTinyControl(model, `${dir}/api/controls/vcm.safetensors`);
    await Deno.copyFile(`${dir}/api/controls/vcm.safetensors`, `${dir}/host/controls/vcm.safetensors`);
    const redis = await startRedis();
    let server: ServerProcess | null = null;
    let host: HostProcess | null = null;
    try {
      server = await startServer([
        "--queue",
        redis.url,
        "--data-dir",
        `${dir}/api`,
        "--default-model",
        model,
      ]);
      host = await startHost(["--queue", redis.url, "--data-dir", `${dir}/host`, "--default-model", model]);
      const put = await fetch(`${server.url}/v1/conditions/mask`, {
        method: "PUT",
        body: new Blob([encodeNifti({ data: ball(8), shape: [8, 8, 8] }) as Uint8Array<ArrayBuffer>]),
      });
      equal(put.status, 201);
      const base = { steps: 3, seed: 5 };
      const volumes = [];
      for (const request of [base, { ...base, control: { name: "vcm", conditions: ["mask"] } }]) {
        const { body } = await submit(server.url, request);
        const job = await waitForJob(server.url, body.id as string);
        equal(job.status, "done", JSON.stringify(job));
        const res = await fetch(`${server.url}/v1/jobs/${body.id}/result`);
        volumes.push((await readNifti(new Uint8Array(await res.arrayBuffer()))).data);
      }
      notDeepStrictEqual(volumes[1], volumes[0]);
    } finally {
      await host?.stop();
      await server?.stop();
      await redis.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
