/**
 * The viewer page in Debian's headless Chromium (software WebGL2 through SwiftShader), driven over the
 * DevTools protocol: the page loads with an empty canvas, runs a sample through the API, and NiiVue draws
 * the volume — checked on the screenshot's pixels, before and after, and again after a colormap change.
 * Fails when Chromium is not installed (`.ci/run` and `scripts/voxgen` install it).
 */

import { deepStrictEqual, equal, ok } from "node:assert";
import { encodeNifti } from "../../io/nifti.ts";
import { sphereMask } from "../../pipelines/inpaint.ts";
import { Browser, type Rgba } from "../helpers/chromium.ts";
import {
  makeTinyControl,
  makeTinyModel,
  type ServerProcess,
  startServer,
  submit,
  waitForJob,
} from "./helpers.ts";

Deno.test({
  name: "viewer page: runs a sample and NiiVue renders it (headless Chromium)",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir();
    await makeTinyModel(`${dir}/tiny.safetensors`);
    let server: ServerProcess | undefined;
    let browser: Browser | undefined;
    try {
      server = await startServer(["--data-dir", dir, "--default-model", `${dir}/tiny.safetensors`]);
      browser = await Browser.launch(`${dir}/chromium-profile`);
      const page = browser.page;
      await page.send("Page.enable");
      await page.send("Page.navigate", { url: `${server.url}/?steps=8&seed=3` });
      await page.waitFor(`document.body.dataset.state`, (s) => s === "ready", 60_000);

      // The canvas before any volume: NiiVue's background only.
      const rect = await page.eval(
        `(() => { const r = document.getElementById("gl").getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()`,
      ) as number[];
      const before = await page.screenshot(rect);
      const background = [17, 19, 23]; // backColor [0.067, 0.075, 0.09] × 255
      const emptyStats = pixelStats(before, background);
      ok(emptyStats.foreground < 0.02, `empty canvas: ${JSON.stringify(emptyStats)}`);

      await page.eval(`document.getElementById("run").click()`);
      const state = await page.waitFor(
        `document.body.dataset.state`,
        (s) => s !== "ready" && s !== "running",
        90_000,
      );
      equal(
        state,
        "rendered",
        `page state ${state}: ${await page.eval(`document.getElementById("status").textContent`)}`,
      );
      const status = await page.eval(`document.getElementById("status").textContent`) as string;
      ok(/8 steps, seed 3 — 8×8×8/.test(status), status);

      // Three slice views and a 3-D render of a noisy 8³ volume in grey: much of the canvas is drawn, in
      // many grey levels.
      const after = pixelStats(await page.screenshot(rect), background);
      ok(after.foreground > 0.25, `rendered canvas: ${JSON.stringify(after)}`);
      ok(after.greyLevels > 40, `rendered canvas: ${JSON.stringify(after)}`);

      // The colormap control recolours the volume: now most drawn pixels have colour.
      await page.eval(`(() => { const s = document.getElementById("colormap"); s.value = "hot";
        s.dispatchEvent(new Event("change")); })()`);
      await new Promise((r) => setTimeout(r, 500));
      const hot = pixelStats(await page.screenshot(rect), background);
      ok(hot.coloured > 0.5 * hot.foreground, `hot colormap: ${JSON.stringify(hot)}`);
      const saveTo = Deno.env.get("VOXGEN_SAVE_SCREENSHOTS");
      if (saveTo) {
        const { data } = await page.send("Page.captureScreenshot", { format: "png" });
        await Deno.writeFile(
          `${saveTo}/viewer-page.png`,
          Uint8Array.from(atob(data as string), (c) => c.charCodeAt(0)),
        );
      }
    } finally {
      await browser?.close();
      const status = await server?.stop();
      await Deno.remove(dir, { recursive: true });
      equal(status?.code, 0, `the server did not stop cleanly:\n${server?.log()}`);
    }
  },
});

Deno.test({
  name: "viewer page: overlays the condition a controlled job was made with (headless Chromium)",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir();
    await Deno.mkdir(`${dir}/controls`);
    await makeTinyModel(`${dir}/tiny.safetensors`);
    await makeTinyControl(`${dir}/tiny.safetensors`, `${dir}/controls/vcm.safetensors`);
    let server: ServerProcess | undefined;
    let browser: Browser | undefined;
    try {
      server = await startServer(["--data-dir", dir, "--default-model", `${dir}/tiny.safetensors`]);
      const mask = encodeNifti({ data: sphereMask([8, 8, 8], [3.5, 3.5, 3.5], 2.6), shape: [8, 8, 8] });
      const put = await fetch(`${server.url}/v1/conditions/mask`, {
        method: "PUT",
        body: new Blob([mask as Uint8Array<ArrayBuffer>]),
      });
      equal(put.status, 201);
      const post = await submit(server.url, {
        steps: 4,
        seed: 3,
        control: { name: "vcm", conditions: ["mask"] },
      });
      equal(post.status, 202, JSON.stringify(post.body));
      const job = await waitForJob(server.url, post.body.id as string);
      equal(job.status, "done", JSON.stringify(job));

      browser = await Browser.launch(`${dir}/chromium-profile`);
      const page = browser.page;
      await page.send("Page.enable");
      await page.send("Page.navigate", { url: `${server.url}/?job=${post.body.id}` });
      const state = await page.waitFor(
        `document.body.dataset.state`,
        // Only the page's end states: before the navigation lands the old page has no state at all.
        (s) => s === "rendered" || s === "error",
        60_000,
      );
      equal(state, "rendered", `${await page.eval(`document.getElementById("status").textContent`)}`);
      deepStrictEqual(
        await page.eval(`JSON.stringify(window.voxgen.overlay)`),
        JSON.stringify({ name: "mask", kind: "control", opacity: 0.6 }),
      );
      equal(await page.eval(`document.getElementById("overlayControls").hidden`), false);
      const rect = await page.eval(
        `(() => { const r = document.getElementById("gl").getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; })()`,
      ) as number[];
      const background = [17, 19, 23];
      // The result in grey with the mask in red over it: coloured pixels where the ball is.
      const shown = pixelStats(await page.screenshot(rect), background);
      ok(shown.coloured > 0.01, `with the overlay: ${JSON.stringify(shown)}`);
      const saveTo = Deno.env.get("VOXGEN_SAVE_SCREENSHOTS");
      if (saveTo) {
        const { data } = await page.send("Page.captureScreenshot", { format: "png" });
        await Deno.writeFile(
          `${saveTo}/viewer-overlay.png`,
          Uint8Array.from(atob(data as string), (c) => c.charCodeAt(0)),
        );
      }
      // The toggle hides it: the grey result alone.
      await page.eval(`(() => { const c = document.getElementById("overlayShow"); c.checked = false;
        c.dispatchEvent(new Event("change")); })()`);
      await page.waitFor(`String(window.voxgen.overlay)`, (s) => s === "null", 10_000);
      await new Promise((r) => setTimeout(r, 500));
      const hidden = pixelStats(await page.screenshot(rect), background);
      ok(hidden.coloured < 0.2 * shown.coloured, `overlay hidden: ${JSON.stringify(hidden)}`);
      ok(hidden.foreground > 0.25, `the result is still drawn: ${JSON.stringify(hidden)}`);
    } finally {
      await browser?.close();
      const status = await server?.stop();
      await Deno.remove(dir, { recursive: true });
      equal(status?.code, 0, `the server did not stop cleanly:\n${server?.log()}`);
    }
  },
});

/** Share of pixels unlike the background, of clearly coloured pixels, and the number of grey levels. */
function pixelStats(
  image: Rgba,
  background: number[],
): { foreground: number; coloured: number; greyLevels: number } {
  let foreground = 0;
  let coloured = 0;
  const greys = new Set<number>();
  const n = image.width * image.height;
  for (let i = 0; i < n; i++) {
    const [r, g, b] = image.pixels.subarray(4 * i, 4 * i + 3);
    if (Math.abs(r - background[0]) + Math.abs(g - background[1]) + Math.abs(b - background[2]) <= 6) {
      continue;
    }
    foreground++;
    if (Math.max(r, g, b) - Math.min(r, g, b) > 40) coloured++;
    else if (Math.max(r, g, b) - Math.min(r, g, b) <= 4) greys.add(r);
  }
  return { foreground: foreground / n, coloured: coloured / n, greyLevels: greys.size };
}
