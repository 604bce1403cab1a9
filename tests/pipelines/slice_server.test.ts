/**
 * The sampling server serves slice models (cDPM) through the shared generation pipeline: a job on a tiny
 * random slice model finishes with a whole volume, its progress counting the steps of every stage.
 */

import { deepStrictEqual, equal, ok } from "node:assert";
import { ready } from "../../engine/device.ts";
import { readNifti } from "../../io/nifti.ts";
import { SliceDiffusionUNet } from "../../models/slice_unet.ts";
import { saveSliceModelFile } from "../../pipelines/slice_model.ts";
import { loadRandom } from "../models/slice_helpers.ts";
import { readEvents, startServer, submit } from "../server/helpers.ts";

const AFFINE = [[2, 0, 0, -8], [0, 2, 0, -8], [0, 0, 2, -8], [0, 0, 0, 1]];

Deno.test({
  name: "the server samples a slice model: whole volumes, progress over all stages",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    await ready();
    const dir = await Deno.makeTempDir({ prefix: "voxgen-slice-server-" });
    await Deno.mkdir(`${dir}/models`);
    const net = new SliceDiffusionUNet({
      channels: [8, 16],
      attentionLevels: [false, true],
      numHeadChannels: 8,
      normNumGroups: 4,
    });
    loadRandom(net, 6, 0.3);
    await saveSliceModelFile(`${dir}/models/slices.safetensors`, net.stateDict(), {
      network: net.config,
      slots: 4,
      scheduler: { predictionType: "v_prediction" },
      volume: { shape: [8, 8, 6], affine: AFFINE, range: [-1, 1] },
      description: "tiny random slice model",
    });
    net.dispose();
    const server = await startServer(["--data-dir", dir]);
    try {
      const models = await (await fetch(`${server.url}/v1/models`)).json();
      const listed = models.models.find((m: { name: string }) => m.name === "slices");
      ok(listed && !listed.error, JSON.stringify(models));
      deepStrictEqual(listed.shape, [8, 8, 6]);

      const { status, body } = await submit(server.url, { model: "slices", steps: 2, seed: 3 });
      equal(status, 202, JSON.stringify(body));
      const events = await readEvents(server.url, body.id as string);
      const final = events.at(-1)!;
      deepStrictEqual([final.event, final.data.status], ["state", "done"], JSON.stringify(final.data));
      // 6 slices, 4 slots: stages of 2 slices → 3 stages × 2 steps.
      const progress = events.filter((e) => e.event === "progress").map((e) =>
        `${e.data.step}/${e.data.total}`
      );
      deepStrictEqual(progress, ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"]);
      const job = await (await fetch(`${server.url}/v1/jobs/${body.id}`)).json();
      deepStrictEqual(job.result.shape, [8, 8, 6]);
      const volume = await readNifti(
        new Uint8Array(await (await fetch(`${server.url}${job.result.nifti}`)).arrayBuffer()),
      );
      deepStrictEqual(volume.shape.slice(0, 3), [8, 8, 6]);
      ok(volume.data.every((v) => Number.isFinite(v) && v >= -1 && v <= 1));
    } finally {
      await server.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
