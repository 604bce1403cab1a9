/**
 * Timing of GPU work: warm up, then time batches of repetitions between two `sync()` calls (which waits
 * for the queue with `onSubmittedWorkDone`), with the batch size chosen so that one batch takes at least
 * `minSeconds`. The result is the median over `samples` batches.
 *
 * Besides wall-clock time, each batch records the CPU time the process consumed (`process.cpuUsage`). On a
 * software adapter (lavapipe) the "GPU" is the process's own worker threads, so CPU seconds measure the work
 * independently of other programs competing for the cores; wall time does not.
 *
 * @module
 */

import process from "node:process";
import { sync } from "../mod.ts";

/** Options of {@linkcode measure}. */
export interface MeasureOptions {
  /** Minimum wall duration of one timed batch in seconds (default 1). */
  minSeconds?: number;
  /** Number of timed batches; the median is reported (default 3). */
  samples?: number;
}

/** Result of {@linkcode measure}. */
export interface Measurement {
  /** Median wall-clock seconds per repetition. */
  seconds: number;
  /** Median process CPU seconds (user + system) per repetition. */
  cpuSeconds: number;
  /** Repetitions per timed batch. */
  reps: number;
  /** Wall seconds per repetition of every batch. */
  all: number[];
}

/** Wall-clock and process CPU seconds of one timed batch. */
export interface Batch {
  /** Wall-clock seconds. */
  wall: number;
  /** Process CPU seconds (user + system). */
  cpu: number;
}

/** Runs `run` `reps` times between two `sync()` calls and returns the batch's wall and CPU seconds. */
export async function timeBatch(run: () => void, reps: number): Promise<Batch> {
  await sync();
  const c0 = process.cpuUsage();
  const t0 = performance.now();
  for (let i = 0; i < reps; i++) run();
  await sync();
  const wall = (performance.now() - t0) / 1000;
  const c = process.cpuUsage(c0);
  return { wall, cpu: (c.user + c.system) / 1e6 };
}

/** Median of `xs`. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/**
 * Times `run` (which records GPU work and must free what it creates, e.g. by running inside `scope`).
 * The first call compiles pipelines and is not timed; a calibration phase doubles the batch size until a
 * batch takes a quarter of `minSeconds`, then extrapolates.
 */
export async function measure(run: () => void, opts: MeasureOptions = {}): Promise<Measurement> {
  const minSeconds = opts.minSeconds ?? 1;
  const samples = opts.samples ?? 3;
  await timeBatch(run, 1); // warm-up: compile and first run
  let reps = 1;
  let t = (await timeBatch(run, reps)).wall;
  while (t < minSeconds / 4) {
    reps *= 2;
    t = (await timeBatch(run, reps)).wall;
  }
  reps = Math.max(1, Math.ceil((reps * minSeconds * 1.05) / t));
  const batches: Batch[] = [];
  while (batches.length < samples) {
    const b = await timeBatch(run, reps);
    if (b.wall < minSeconds) {
      // Shorter than required (calibration was noisy): grow the batch and retry.
      reps = Math.ceil((reps * minSeconds * 1.1) / b.wall);
      continue;
    }
    batches.push(b);
  }
  return {
    seconds: median(batches.map((b) => b.wall / reps)),
    cpuSeconds: median(batches.map((b) => b.cpu / reps)),
    reps,
    all: batches.map((b) => b.wall / reps),
  };
}
