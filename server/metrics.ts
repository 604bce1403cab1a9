/**
 * Queue metrics and their Prometheus text exposition (`GET /metrics`): jobs waiting and running (gauges),
 * jobs completed, failed and cancelled (counters) and a histogram of the seconds jobs took on the GPU.
 * The local queue counts in memory (since the server started); the Redis queue keeps the counters in
 * Redis, written by the worker hosts, so every API server reports the same cluster-wide figures.
 *
 * @module
 */

/** Upper bounds (seconds) of the job-duration histogram's buckets; +Inf is implied. */
export const JOB_SECONDS_BUCKETS: readonly number[] = [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800];

/** Counters of finished jobs and their durations. */
export interface JobCounters {
  /** Jobs done. */
  completed: number;
  /** Jobs failed. */
  failed: number;
  /** Jobs cancelled. */
  cancelled: number;
  /** Sum of the seconds done jobs took. */
  secondsSum: number;
  /** Done jobs per bucket of {@linkcode JOB_SECONDS_BUCKETS} (not cumulative; one more entry for +Inf). */
  secondsBuckets: number[];
}

/** What `/metrics` reports. */
export interface QueueMetrics extends JobCounters {
  /** Jobs waiting. */
  depth: number;
  /** Jobs running. */
  running: number;
  /** Worker hosts alive (1 for the local queue when its GPU worker is ready). */
  workers: number;
}

/** Zeroed counters. */
export function emptyCounters(): JobCounters {
  return {
    completed: 0,
    failed: 0,
    cancelled: 0,
    secondsSum: 0,
    secondsBuckets: new Array(JOB_SECONDS_BUCKETS.length + 1).fill(0),
  };
}

/** Index of the histogram bucket `seconds` falls in. */
export function bucketOf(seconds: number): number {
  const i = JOB_SECONDS_BUCKETS.findIndex((le) => seconds <= le);
  return i < 0 ? JOB_SECONDS_BUCKETS.length : i;
}

/** Adds one finished job to `counters`. */
export function countJob(
  counters: JobCounters,
  status: "done" | "failed" | "cancelled",
  seconds?: number,
): void {
  if (status === "failed") counters.failed++;
  else if (status === "cancelled") counters.cancelled++;
  else {
    counters.completed++;
    counters.secondsSum += seconds ?? 0;
    counters.secondsBuckets[bucketOf(seconds ?? 0)]++;
  }
}

/** The metrics in Prometheus text format 0.0.4. */
export function prometheusText(m: QueueMetrics): string {
  const lines: string[] = [];
  const metric = (name: string, type: string, help: string, samples: Array<[string, number]>) => {
    lines.push(`# HELP ${name} ${help}`, `# TYPE ${name} ${type}`);
    for (const [labels, value] of samples) lines.push(`${name}${labels} ${value}`);
  };
  metric("voxgen_queue_depth", "gauge", "Jobs waiting to run.", [["", m.depth]]);
  metric("voxgen_jobs_running", "gauge", "Jobs running on a GPU worker.", [["", m.running]]);
  metric("voxgen_workers", "gauge", "GPU workers able to take jobs.", [["", m.workers]]);
  metric("voxgen_jobs_completed_total", "counter", "Jobs done.", [["", m.completed]]);
  metric("voxgen_jobs_failed_total", "counter", "Jobs failed.", [["", m.failed]]);
  metric("voxgen_jobs_cancelled_total", "counter", "Jobs cancelled.", [["", m.cancelled]]);
  lines.push(
    "# HELP voxgen_job_seconds Seconds a done job took on its GPU worker.",
    "# TYPE voxgen_job_seconds histogram",
  );
  let cumulative = 0;
  JOB_SECONDS_BUCKETS.forEach((le, i) => {
    cumulative += m.secondsBuckets[i];
    lines.push(`voxgen_job_seconds_bucket{le="${le}"} ${cumulative}`);
  });
  cumulative += m.secondsBuckets[JOB_SECONDS_BUCKETS.length];
  lines.push(
    `voxgen_job_seconds_bucket{le="+Inf"} ${cumulative}`,
    `voxgen_job_seconds_sum ${m.secondsSum}`,
    `voxgen_job_seconds_count ${cumulative}`,
  );
  return lines.join("\n") + "\n";
}
