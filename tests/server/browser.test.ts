/**
 * Sampling in the browser: the viewer page, opened in Debian's headless Chromium with SwiftShader's WebGPU
 * as `/?generate=browser&steps=N&seed=S`, loads the voxgen bundle and the server's default model, samples on
 * the page's own GPU and sets `document.title` to "voxgen: done"; its volume equals the one
 * `deno task sample` makes with the same model, steps and seed (on lavapipe) within the tolerance stated
 * below. The server runs no job. Fails when Chromium is not installed.
 *
 * The default model is a tiny one with self-attention (8³): SwiftShader compiles each of the ~40 kernels a
 * sample needs through LLVM, which alone takes about a minute on this machine, and the embedded 32³ model
 * adds minutes of compute on a software GPU. The code path is the same.
 *
 * @module
 */

import { deepStrictEqual, equal, ok, strictEqual } from "node:assert";
import { main as sample } from "../../cli/sample.ts";
import { readNifti } from "../../io/nifti.ts";
import { Browser } from "../helpers/chromium.ts";
import { capture } from "../cli/helpers.ts";
import { makeTinyModel, type ServerProcess, startServer } from "./helpers.ts";

const STEPS = 3;
const SEED = 7;

/**
 * Largest |browser − Deno| allowed, in the model's intensity units (its range is [-1, 1]). Two different
 * software GPUs (SwiftShader in the page, lavapipe for Deno) draw the same Philox noise bits but round
 * transcendental functions (log and cos in the noise, exp in attention and SiLU) and fused multiply-adds
 * differently, by a few float32 ulps per op; through the U-Net and three sampler steps this came to 6.4e-6
 * when measured. 1e-4 leaves 15× headroom and is still far below what a different seed, step count or
 * weight changes (voxels move by O(0.1–1)).
 */
const TOLERANCE = 1e-4;

Deno.test({
  name: "browser: the page samples the default model with its own WebGPU, equal to deno task sample",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-browser-" });
    let server: ServerProcess | undefined;
    let browser: Browser | undefined;
    try {
      const model = `${dir}/tiny.safetensors`;
      await makeTinyModel(model, { attentionLevels: [false, true], numHeadChannels: 4 });
      server = await startServer(["--data-dir", dir, "--default-model", model]);
      browser = await Browser.launch(`${dir}/chromium-profile`, { webgpu: true });
      const page = browser.page;
      await page.send("Page.enable");
      await page.send("Page.navigate", {
        url: `${server.url}/?generate=browser&steps=${STEPS}&seed=${SEED}`,
      });
      const title = await page.waitFor(
        "document.title",
        (t) => typeof t === "string" && (t === "voxgen: done" || t.startsWith("voxgen: error")),
        600_000,
      );
      strictEqual(title, "voxgen: done");
      const status = await page.eval(`document.getElementById("status").textContent`) as string;
      ok(/In this browser \(.*\): default, ddim, 3 steps, seed 7 — 8×8×8/.test(status), status);
      strictEqual(await page.eval(`document.getElementById("progress").value`), 1);
      const browserVolume = Float32Array.from(
        await page.eval(`Array.from(window.voxgen.browserResult.data)`) as number[],
      );
      const jobs = await (await fetch(`${server.url}/v1/jobs`)).json();
      deepStrictEqual(jobs.jobs, [], "the server ran no job");

      await capture(() =>
        sample([
          "--model",
          model,
          "--steps",
          String(STEPS),
          "--seed",
          String(SEED),
          "--out",
          `${dir}/deno.nii.gz`,
        ])
      );
      const denoVolume = (await readNifti(`${dir}/deno.nii.gz`)).data;
      strictEqual(browserVolume.length, denoVolume.length);
      let worst = 0;
      for (let i = 0; i < denoVolume.length; i++) {
        worst = Math.max(worst, Math.abs(browserVolume[i] - denoVolume[i]));
      }
      console.log(`max |browser − deno| = ${worst.toExponential(2)} over ${denoVolume.length} voxels`);
      ok(worst <= TOLERANCE, `max |browser − deno| = ${worst}`);
      ok(new Set(browserVolume).size > 256, "a varied volume");
    } finally {
      await browser?.close();
      const stopped = await server?.stop();
      await Deno.remove(dir, { recursive: true });
      equal(stopped?.code, 0, `the server did not stop cleanly:\n${server?.log()}`);
    }
  },
});
