/**
 * Stopping the server the way systemd and `docker stop` do: SIGTERM to the whole process group of
 * `deno task serve`. The server then hears it twice (directly, and forwarded by `deno task`); that must
 * still be one graceful stop — the running job finishes, the server exits 0 — not "again: force".
 *
 * @module
 */

import { equal, ok } from "node:assert";
import { makeTinyModel } from "./helpers.ts";

const ROOT = new URL("../../", import.meta.url);

Deno.test({
  name: "server: SIGTERM to the process group of `deno task serve` stops it gracefully, once",
  sanitizeResources: false,
  sanitizeOps: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "voxgen-signals-" });
    const model = `${dir}/tiny.safetensors`;
    await makeTinyModel(model);
    const deno = Deno.execPath();
    // setsid: the task runs as the leader of a new process group, which the test can signal as a whole.
    const child = new Deno.Command("setsid", {
      args: [deno, "task", "serve", "--port", "0", "--data-dir", dir, "--default-model", model],
      cwd: ROOT,
      env: {
        PATH: `${deno.slice(0, deno.lastIndexOf("/"))}:${Deno.env.get("PATH")}`,
        XDG_RUNTIME_DIR: "/tmp",
        NO_COLOR: "1",
      },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    let stderr = "";
    const stderrDone = child.stderr.pipeThrough(new TextDecoderStream()).pipeTo(
      new WritableStream({ write: (s) => void (stderr += s) }),
    );
    const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let stdout = "";
    let url: string | undefined;
    try {
      while (!url) {
        const { value, done } = await lines.read();
        if (done) throw new Error(`the server exited before listening:\n${stdout}\n${stderr}`);
        stdout += value;
        url = /listening on (http:\/\/\S+?)\/? /.exec(stdout)?.[1];
      }
      (async () => {
        while (!(await lines.read()).done) { /* drain */ }
      })();
      // A job long enough to be running when the signal comes.
      const submitted = await fetch(`${url}/v1/samples`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ steps: 300, seed: 1 }),
      });
      const { id } = await submitted.json();
      let status = "queued";
      while (status === "queued") {
        status = (await (await fetch(`${url}/v1/jobs/${id}`)).json()).status;
        await new Promise((r) => setTimeout(r, 100));
      }
      equal(status, "running");

      const kill = await new Deno.Command("kill", { args: ["-TERM", "--", `-${child.pid}`] }).output();
      equal(kill.code, 0, "kill -TERM -PGID");
      const exit = await child.status;
      await stderrDone;
      equal(exit.code, 0, stderr);
      equal(stderr.match(/shutting down/g)?.length, 1, stderr);
      ok(!/again: exiting without waiting/.test(stderr), stderr);
      ok(/stopped/.test(stderr), stderr);

      // The job was allowed to finish within the grace period: a new server on the same data finds it done.
      const again = new Deno.Command(deno, {
        args: ["run", "-A", "server/main.ts", "--port", "0", "--data-dir", dir, "--default-model", model],
        cwd: ROOT,
        env: { XDG_RUNTIME_DIR: "/tmp", NO_COLOR: "1" },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const reader = again.stdout.pipeThrough(new TextDecoderStream()).getReader();
      let out = "";
      let second: string | undefined;
      while (!second) {
        const { value, done } = await reader.read();
        if (done) break;
        out += value;
        second = /listening on (http:\/\/\S+?)\/? /.exec(out)?.[1];
      }
      const job = second ? await (await fetch(`${second}/v1/jobs/${id}`)).json() : null;
      again.kill("SIGINT");
      await again.status;
      await reader.cancel();
      await again.stderr.cancel();
      equal(job?.status, "done", JSON.stringify(job));
    } finally {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      await Deno.remove(dir, { recursive: true });
    }
  },
});
