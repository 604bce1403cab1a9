/**
 * The viewer page (`GET /`) and the NiiVue module it loads (`GET /niivue.js`). NiiVue comes from the
 * `@niivue/niivue` npm package — its `./min` entry is the self-contained ES module build, URL-encoded in a
 * string — so the page works offline and never touches a CDN.
 *
 * @module
 */

import { readText } from "../io/read.ts";

let page: Promise<string> | null = null;
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
