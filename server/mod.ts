/**
 * The sampling server (Deno): an HTTP API with a job queue (local SQLite, or BullMQ on Redis with GPU
 * worker hosts) and the NiiVue viewer page, which can also sample with the browser's own WebGPU. Start it
 * with `deno task serve`, or from code:
 *
 * @example
 * ```ts
 * import { startServer } from "@voxgen/voxgen/server";
 * const server = await startServer({ port: 8080, dataDir: "./voxgen-data" });
 * console.log(`listening on ${server.url}`);
 * ```
 *
 * @module
 */

export { main, type RunningServer, type ServerOptions, startServer } from "./main.ts";
export { type HostOptions, type RunningHost, startHost } from "./host.ts";
export type { WorkerDevice } from "./protocol.ts";
export { type GeneratedVolume, type GenerateOptions, generateVolume } from "./browser.ts";
