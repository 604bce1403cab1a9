/**
 * The viewer page (`GET /`), the NiiVue module it loads (`GET /niivue.js`) and the browser bundle with
 * which it samples on its own GPU (`GET /voxgen.js`). NiiVue comes from the
 * `@niivue/niivue` npm package — its `./min` entry is the self-contained ES module build, URL-encoded in a
 * string — so the page works offline and never touches a CDN.
 *
 * @module
 */

import { readText } from "../io/read.ts";

let page: Promise<string> | null = null;
let bundle: Promise<string> | null = null;
let niivue: Promise<string> | null = null;

/** The viewer page's HTML. */
export function viewerPage(): Promise<string> {
  // Next to this module, read from disk or fetched, whichever way the server was started.
  page ??= readText(new URL("./viewer.html", import.meta.url));
  return page;
}

/** NiiVue's self-contained ES module source (loaded on first use: it is 2.5 MB). */
export function niivueModule(): Promise<string> {
  // A full npm: specifier keeps this one file self-sufficient (no import-map entry needed).
  // deno-lint-ignore no-import-prefix
  niivue ??= import("npm:@niivue/niivue@^0.69.0/min").then((m: { esm: string }) => decodeURIComponent(m.esm));
  return niivue;
}

/**
 * The browser bundle of server/browser.ts (engine, U-Net, samplers: what a page needs to sample with its
 * own WebGPU), built by `deno bundle` on first use and kept for the life of the server.
 */
export function browserBundle(): Promise<string> {
  bundle ??= buildBrowserBundle().catch((error) => {
    bundle = null; // a later request tries again
    throw error;
  });
  return bundle;
}

async function buildBrowserBundle(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-bundle-" });
  try {
    const out = `${dir}/voxgen.js`;
    const entry = new URL("./browser.ts", import.meta.url).href;
    const { code, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["bundle", "--quiet", "--platform", "browser", "--format", "esm", "--output", out, entry],
      stdout: "null",
      stderr: "piped",
    }).output();
    if (code !== 0) {
      throw new Error(`deno bundle ${entry} failed: ${new TextDecoder().decode(stderr).trim()}`);
    }
    return await Deno.readTextFile(out);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
