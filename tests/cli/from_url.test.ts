/**
 * voxgen runs from a URL: the repository served over HTTP on loopback, `deno run http://…/cli/sample.ts`
 * (in a folder with no deno.json, so no import map helps) fetches the default model from next to the
 * module and samples the same volume as a local run; the viewer page is fetched the same way, and NiiVue
 * (an npm package) loads.
 *
 * The served default model is replaced by a tiny one (8³, two levels) to keep the test fast: what is tested
 * is that the file is found through `import.meta.url` and fetched, not the model.
 *
 * @module
 */

import { deepStrictEqual, ok, strictEqual } from "node:assert";
import { fileURLToPath } from "node:url";
import { main as sample } from "../../cli/sample.ts";
import { readNifti } from "../../io/nifti.ts";
import { capture, makeTinyModel } from "./helpers.ts";

const ROOT = fileURLToPath(new URL("../../", import.meta.url));
const DENO = Deno.execPath();

/** Serves the repository read-only on a free loopback port; `overrides` replace files by path. */
function serveRepository(overrides: Record<string, Uint8Array>) {
  const requested: string[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, async (request) => {
    const path = decodeURIComponent(new URL(request.url).pathname);
    requested.push(path);
    if (path.includes("..")) return new Response("bad path", { status: 400 });
    const body = overrides[path] ?? await Deno.readFile(`${ROOT}${path.slice(1)}`).catch(() => null);
    return body ? new Response(body as Uint8Array<ArrayBuffer>) : new Response("not found", { status: 404 });
  });
  return { server, requested, base: `http://127.0.0.1:${server.addr.port}` };
}

/**
 * An empty Deno cache for the run (so no module from an earlier run is reused), sharing the machine's npm
 * package cache (so no package is downloaded again).
 */
async function freshDenoDir(dir: string): Promise<string> {
  const info = new Deno.Command(DENO, { args: ["info", "--json"], stdout: "piped" }).outputSync();
  const shared = JSON.parse(new TextDecoder().decode(info.stdout)).denoDir as string;
  const denoDir = `${dir}/deno_dir`;
  await Deno.mkdir(denoDir);
  await Deno.symlink(`${shared}/npm`, `${denoDir}/npm`);
  return denoDir;
}

Deno.test({
  name: "from a URL: deno run http://…/cli/sample.ts fetches the default model next to it and samples",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-url-" });
    const tiny = `${dir}/tiny.safetensors`;
    await makeTinyModel(tiny);
    const { server, requested, base } = serveRepository({
      "/models/default/brain32.safetensors": await Deno.readFile(tiny),
    });
    try {
      const run = await new Deno.Command(DENO, {
        args: ["run", "-A", `${base}/cli/sample.ts`, "--steps", "2", "--seed", "5", "--out", "remote.nii.gz"],
        cwd: dir,
        env: {
          DENO_DIR: await freshDenoDir(dir),
          XDG_RUNTIME_DIR: Deno.env.get("XDG_RUNTIME_DIR") ?? "/tmp",
        },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(run.stderr);
      strictEqual(run.code, 0, stderr);
      ok(stderr.includes(`model ${base}/models/default/brain32.safetensors`), stderr);
      ok(requested.includes("/models/default/brain32.safetensors"), "the model was fetched over HTTP");

      // The same model and seed, run locally in this process: the same volume.
      await capture(() =>
        sample(["--model", tiny, "--steps", "2", "--seed", "5", "--out", `${dir}/local.nii.gz`])
      );
      const remote = await readNifti(`${dir}/remote.nii.gz`);
      const local = await readNifti(`${dir}/local.nii.gz`);
      deepStrictEqual(remote.shape, [8, 8, 8]);
      deepStrictEqual(remote.data, local.data);

      // The viewer page, read next to server/viewer.ts.
      const page = await new Deno.Command(DENO, {
        args: [
          "eval",
          `const v = await import("${base}/server/viewer.ts");
           console.log((await v.viewerPage()).length, (await v.niivueModule()).length);`,
        ],
        cwd: dir,
        env: { DENO_DIR: `${dir}/deno_dir` },
        stdout: "piped",
        stderr: "piped",
      }).output();
      strictEqual(page.code, 0, new TextDecoder().decode(page.stderr));
      const [pageLength, niivueLength] = new TextDecoder().decode(page.stdout).trim().split(" ").map(Number);
      strictEqual(pageLength, (await Deno.readTextFile(`${ROOT}server/viewer.html`)).length);
      ok(niivueLength > 1_000_000, `NiiVue's module (${niivueLength} characters) loads from a URL too`);
      ok(requested.includes("/server/viewer.html"), "the page was fetched over HTTP");
    } finally {
      await server.shutdown();
      await Deno.remove(dir, { recursive: true });
    }
  },
});
