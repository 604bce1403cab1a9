/**
 * The viewer page in Debian's headless Chromium (software WebGL2 through SwiftShader), driven over the
 * DevTools protocol: the page loads with an empty canvas, runs a sample through the API, and NiiVue draws
 * the volume — checked on the screenshot's pixels, before and after, and again after a colormap change.
 * Skipped when Chromium is not installed (`apt-get install chromium`).
 */

import { equal, ok } from "node:assert";
import { makeTinyModel, type ServerProcess, startServer } from "./helpers.ts";

const CHROMIUM = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => {
  try {
    return Deno.statSync(p).isFile;
  } catch {
    return false;
  }
});

Deno.test({
  name: "viewer page: runs a sample and NiiVue renders it (headless Chromium)",
  ignore: !CHROMIUM,
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

/** A decoded image, 4 bytes per pixel. */
interface Rgba {
  width: number;
  height: number;
  pixels: Uint8Array;
}

/** Decodes an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium's screenshots are). */
async function decodePng(bytes: Uint8Array): Promise<Rgba> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 8;
  let width = 0, height = 0, colorType = 0;
  const idat: Uint8Array[] = [];
  while (at < bytes.length) {
    const length = view.getUint32(at);
    const type = new TextDecoder().decode(bytes.subarray(at + 4, at + 8));
    const data = bytes.subarray(at + 8, at + 8 + length);
    if (type === "IHDR") {
      width = view.getUint32(at + 8);
      height = view.getUint32(at + 12);
      if (data[8] !== 8 || data[12] !== 0) {
        throw new Error(`PNG: bit depth ${data[8]}, interlace ${data[12]}`);
      }
      colorType = data[9];
    } else if (type === "IDAT") idat.push(data);
    at += 12 + length;
  }
  const channels = colorType === 6 ? 4 : colorType === 2 ? 3 : 0;
  if (!channels) throw new Error(`PNG: colour type ${colorType} not handled`);
  const raw = new Uint8Array(
    await new Response(
      new Blob(idat as Uint8Array<ArrayBuffer>[]).stream().pipeThrough(new DecompressionStream("deflate")),
    )
      .arrayBuffer(),
  );
  const stride = width * channels;
  const out = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    for (let x = 0; x < stride; x++) {
      const a = x >= channels ? out[y * stride + x - channels] : 0;
      const b = y > 0 ? out[(y - 1) * stride + x] : 0;
      const c = x >= channels && y > 0 ? out[(y - 1) * stride + x - channels] : 0;
      const p = a + b - c;
      const paeth = Math.abs(p - a) <= Math.abs(p - b) && Math.abs(p - a) <= Math.abs(p - c)
        ? a
        : Math.abs(p - b) <= Math.abs(p - c)
        ? b
        : c;
      const predictor = [0, a, b, (a + b) >> 1, paeth][filter];
      out[y * stride + x] = (line[x] + predictor) & 0xff;
    }
  }
  if (channels === 4) return { width, height, pixels: out };
  const rgba = new Uint8Array(width * height * 4);
  for (let i = 0; i < width * height; i++) rgba.set([out[3 * i], out[3 * i + 1], out[3 * i + 2], 255], 4 * i);
  return { width, height, pixels: rgba };
}

/** A DevTools protocol session over a WebSocket. */
class Session {
  readonly #ws: WebSocket;
  readonly #pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  #next = 1;

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    ws.onmessage = (event) => {
      const msg = JSON.parse(event.data);
      const waiter = msg.id ? this.#pending.get(msg.id) : undefined;
      if (!waiter) return;
      this.#pending.delete(msg.id);
      if (msg.error) waiter.reject(new Error(`${msg.error.message} (${msg.error.code})`));
      else waiter.resolve(msg.result);
    };
  }

  static async open(url: string): Promise<Session> {
    const ws = new WebSocket(url);
    await new Promise((resolve, reject) => {
      ws.onopen = resolve;
      ws.onerror = () => reject(new Error(`cannot connect to ${url}`));
    });
    return new Session(ws);
  }

  send(method: string, params: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const id = this.#next++;
    this.#ws.send(JSON.stringify({ id, method, params }));
    return new Promise((resolve, reject) =>
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject })
    );
  }

  async eval(expression: string): Promise<unknown> {
    const r = await this.send("Runtime.evaluate", { expression, returnByValue: true, awaitPromise: true });
    if (r.exceptionDetails) throw new Error(`page: ${JSON.stringify(r.exceptionDetails)}`);
    return (r.result as { value: unknown }).value;
  }

  /** Polls `expression` until `done(value)`; returns the value. */
  async waitFor(expression: string, done: (v: unknown) => boolean, timeoutMs: number): Promise<unknown> {
    const end = Date.now() + timeoutMs;
    while (true) {
      const value = await this.eval(expression).catch(() => undefined);
      if (done(value)) return value;
      if (Date.now() > end) throw new Error(`timed out waiting for ${expression} (last value ${value})`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }

  async screenshot([x, y, width, height]: number[]): Promise<Rgba> {
    const { data } = await this.send("Page.captureScreenshot", {
      format: "png",
      clip: { x, y, width, height, scale: 1 },
    });
    const bytes = Uint8Array.from(atob(data as string), (c) => c.charCodeAt(0));
    if (Deno.env.get("VOXGEN_SAVE_SCREENSHOTS")) {
      await Deno.writeFile(`${Deno.env.get("VOXGEN_SAVE_SCREENSHOTS")}/viewer-${Date.now()}.png`, bytes);
    }
    return await decodePng(bytes);
  }

  close(): void {
    this.#ws.close();
  }
}

/** Headless Chromium with remote debugging, and a session on its first page. */
class Browser {
  private constructor(readonly child: Deno.ChildProcess, readonly page: Session) {}

  static async launch(profile: string): Promise<Browser> {
    const child = new Deno.Command(CHROMIUM!, {
      args: [
        "--headless",
        "--no-sandbox",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--no-first-run",
        "--remote-debugging-port=0",
        `--user-data-dir=${profile}`,
        "--window-size=1200,800",
        "about:blank",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    // Chromium prints "DevTools listening on ws://127.0.0.1:PORT/…" once it is ready.
    const reader = child.stderr.pipeThrough(new TextDecoderStream()).getReader();
    let text = "";
    let port: string | undefined;
    while (!port) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`chromium exited:\n${text}`);
      text += value;
      port = /DevTools listening on ws:\/\/[^:]+:(\d+)\//.exec(text)?.[1];
    }
    (async () => {
      while (!(await reader.read()).done) { /* drain */ }
    })();
    const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
    const target = targets.find((t: { type: string }) => t.type === "page");
    return new Browser(child, await Session.open(target.webSocketDebuggerUrl));
  }

  async close(): Promise<void> {
    this.page.close();
    try {
      this.child.kill("SIGTERM");
    } catch { /* gone */ }
    await this.child.status;
  }
}
