/**
 * The package's public surface (deno.json `exports`): every subpath has a module doc and imports cleanly,
 * and the browser-safe ones bundle for the browser (`deno bundle --platform browser`) into code with no
 * `Deno.*` and no `node:` import, so they run in any page with WebGPU.
 *
 * @module
 */

import { deepStrictEqual, ok } from "node:assert";

const ROOT = new URL("../", import.meta.url);
const config = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT))) as {
  exports: Record<string, string>;
};

/** The exports a web page can use; the others read files, spawn processes or serve HTTP (Deno). */
const BROWSER_SAFE = [".", "./engine", "./nn", "./models", "./samplers", "./io"];

Deno.test("exports: one subpath per layer, each with a module doc, each importable", async () => {
  deepStrictEqual(Object.keys(config.exports), [
    ".",
    "./engine",
    "./nn",
    "./models",
    "./samplers",
    "./adapters",
    "./metrics",
    "./io",
    "./files",
    "./pipelines",
    "./cli",
    "./server",
  ]);
  for (const [name, file] of Object.entries(config.exports)) {
    const source = await Deno.readTextFile(new URL(file, ROOT));
    ok(source.startsWith("/**") && /\n \* @module\n/.test(source), `${name} (${file}) has a module doc`);
    const module = await import(new URL(file, ROOT).href);
    ok(Object.keys(module).length > 0, `${name} exports something`);
  }
});

Deno.test("exports: the browser-safe subpaths bundle without Deno APIs or node: modules", async () => {
  const dir = await Deno.makeTempDir({ prefix: "voxgen-bundle-" });
  try {
    for (const name of BROWSER_SAFE) {
      const out = `${dir}/${name === "." ? "root" : name.slice(2)}.js`;
      const { code, stderr } = await new Deno.Command(Deno.execPath(), {
        args: [
          "bundle",
          "--quiet",
          "--platform",
          "browser",
          "--format",
          "esm",
          "--output",
          out,
          config.exports[name],
        ],
        cwd: new URL(".", ROOT),
        stderr: "piped",
      }).output();
      ok(code === 0, `${name}: ${new TextDecoder().decode(stderr)}`);
      const bundle = await Deno.readTextFile(out);
      deepStrictEqual(bundle.match(/\bDeno\.\w+/g) ?? [], [], `${name} uses Deno APIs`);
      deepStrictEqual(bundle.match(/from\s*["']node:[^"']+["']/g) ?? [], [], `${name} imports node: modules`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
