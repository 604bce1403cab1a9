/**
 * The progress reporter's two renderers, on a fake clock and a fake writer (no sleeping).
 *
 * @module
 */

import { deepStrictEqual, ok } from "node:assert";
import { duration, Progress, type ProgressOptions } from "../../io/progress.ts";

/** A Progress whose clock is `clock.now` (seconds) and whose output lands in `out`. */
function fake(total: number, opts: ProgressOptions = {}) {
  const clock = { now: 1000 };
  const out: string[] = [];
  const progress = new Progress("step", total, {
    now: () => clock.now,
    write: (text) => out.push(text),
    ...opts,
  });
  return { clock, out, progress };
}

Deno.test("log renderer: the first step, then one line per 30 s, and the last step", () => {
  const { clock, out, progress } = fake(100, { mode: "log" });
  // 2 s per step: lines at steps 1 (first), 16 (30 s after step 1), 31, …, and 100 (last).
  for (let step = 1; step <= 100; step++) {
    clock.now += 2;
    progress.update(step, `loss ${(1 / step).toFixed(4)} (avg 0.5000)`);
  }
  deepStrictEqual(
    out.map((line) => Number(line.match(/^step (\d+)\/100 /)![1])),
    [1, 16, 31, 46, 61, 76, 91, 100],
  );
  deepStrictEqual(out[0], "step 1/100 (1%) loss 1.0000 (avg 0.5000), 2.00 s/step, 2s elapsed, ETA 3m18s\n");
  deepStrictEqual(
    out[1],
    "step 16/100 (16%) loss 0.0625 (avg 0.5000), 2.00 s/step, 32s elapsed, ETA 2m48s\n",
  );
  deepStrictEqual(
    out.at(-1),
    "step 100/100 (100%) loss 0.0100 (avg 0.5000), 2.00 s/step, 3m20s elapsed, ETA 0s\n",
  );
  // One line per write, nothing redrawn.
  ok(out.every((line) => line.endsWith("\n") && line.indexOf("\n") === line.length - 1), out.join(""));
  ok(out.every((line) => !line.includes("\r") && !line.includes("\x1b")), JSON.stringify(out));
});

Deno.test("log renderer: a resumed run counts speed and ETA from where it resumed", () => {
  const { clock, out, progress } = fake(650, { mode: "log", start: 600, logEvery: 60 });
  clock.now += 40; // the first step after resuming took 40 s (e.g. compiling pipelines)
  progress.update(601);
  for (let step = 602; step <= 650; step++) {
    clock.now += 20;
    progress.update(step);
  }
  deepStrictEqual(out, [
    "step 601/650 (92%), 40.00 s/step, 40s elapsed, ETA 32m40s\n",
    // 60 s after the first line: 100 s for 4 steps, 46 to go.
    "step 604/650 (92%), 25.00 s/step, 1m40s elapsed, ETA 19m10s\n",
    "step 607/650 (93%), 22.86 s/step, 2m40s elapsed, ETA 16m23s\n",
    ...out.slice(3, -1),
    "step 650/650 (100%), 20.40 s/step, 17m00s elapsed, ETA 0s\n",
  ]);
  // Steps 601, 604, …, 649 (every 60 s), then 650.
  deepStrictEqual(out.length, 18);
});

Deno.test("terminal renderer: one line redrawn every update, ended when done; fast loops in steps/s", () => {
  const { clock, out, progress } = fake(4, { mode: "terminal", unit: "step" });
  for (let step = 1; step <= 4; step++) {
    clock.now += 0.25;
    progress.update(step, "loss 0.1000");
  }
  deepStrictEqual(out.length, 4);
  deepStrictEqual(
    out[0],
    `\rstep 1/4 [${"=".repeat(6)}${" ".repeat(18)}] loss 0.1000, 4.00 step/s, 0s elapsed, ETA 1s\x1b[K`,
  );
  deepStrictEqual(
    out[3],
    `\rstep 4/4 [${"=".repeat(24)}] loss 0.1000, 4.00 step/s, 1s elapsed, ETA 0s\x1b[K\n`,
  );
  ok(out.slice(0, 3).every((line) => !line.includes("\n")), JSON.stringify(out));
});

Deno.test("durations read as seconds, minutes or hours", () => {
  deepStrictEqual(
    [0, 42.4, 59.6, 187, 3599, 3600, 7500].map(duration),
    ["0s", "42s", "1m00s", "3m07s", "59m59s", "1h00m", "2h05m"],
  );
});

Deno.test("a reporter made at the first report counts from when the work began (startedAt)", () => {
  const { clock, out, progress } = fake(10, { mode: "log", startedAt: 996 });
  clock.now += 0.001; // made just before its first update, 4 s after the work began
  progress.update(1);
  deepStrictEqual(out, ["step 1/10 (10%), 4.00 s/step, 4s elapsed, ETA 36s\n"]);
});
