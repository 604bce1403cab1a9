/**
 * Headless Chromium for the browser tests, driven over the DevTools protocol from Deno: Debian's
 * `chromium` (never a downloaded browser), a fresh profile per launch, software WebGL2 and WebGPU through
 * SwiftShader. A missing Chromium is an error, not a reason to skip.
 *
 * @module
 */

/** Debian's Chromium; throws (saying how to install it) when there is none. */
export function chromiumPath(): string {
  const path = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => {
    try {
      return Deno.statSync(p).isFile;
    } catch {
      return false;
    }
  });
  if (!path) {
    throw new Error("Chromium is not installed: `apt-get install chromium` (.ci/run and scripts/voxgen do).");
  }
  return path;
}

/** A decoded image, 4 bytes per pixel. */
export interface Rgba {
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
export class Session {
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
export class Browser {
  private constructor(readonly child: Deno.ChildProcess, readonly page: Session) {}

  /** Starts Chromium with a fresh profile in `profile`; `webgpu` adds SwiftShader's WebGPU. */
  static async launch(profile: string, opts: { webgpu?: boolean } = {}): Promise<Browser> {
    const webgpu = opts.webgpu ? ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"] : [];
    const child = new Deno.Command(chromiumPath(), {
      args: [
        "--headless",
        "--no-sandbox",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        ...webgpu,
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
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
