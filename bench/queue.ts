/**
 * Load and fault test of the shared queue, on loopback only: a private redis-server, one API server
 * (`serve --queue`) and two GPU worker hosts (`worker`), sampling a tiny random model (8³, so the figures are
 * the queue's, not the GPU's).
 *
 * ```sh
 * deno run -A bench/queue.ts [--clients 4] [--jobs 10] [--steps 2] [--latency-jobs 20] [--max-seconds 300]
 * ```
 *
 * Three runs, each bounded by `--max-seconds`:
 * 1. latency: one client, one job at a time, `--latency-jobs` jobs: enqueue→start with an idle worker.
 * 2. load: `--clients` clients each submit `--jobs` jobs at once (429 → wait Retry-After and resubmit), then
 *    wait for all: jobs per second (first submit to last finish) and enqueue→start (includes queueing).
 * 3. fault: the load run again, and the first worker host is SIGKILLed while it runs a job; every job must
 *    end done, each completed exactly once (the hosts' "done" log lines), and the killed host's job must be
 *    started again on the other host. Lock 2 s, stalled check every 1 s.
 *
 * Enqueue→start is the job's `startedAt − createdAt` (API server and worker hosts share this machine's clock).
 *
 * @module
 */

import { parseArgs } from "node:util";
import { numberOption } from "../cli/options.ts";
import { makeTinyModel, type ServerProcess, startServer, submit } from "../tests/server/helpers.ts";
import { type HostProcess, startHost, startRedis } from "../tests/server/queue_helpers.ts";

const args = parseArgs({
  args: Deno.args,
  options: {
    clients: { type: "string" },
    jobs: { type: "string" },
    steps: { type: "string" },
    "latency-jobs": { type: "string" },
    "max-seconds": { type: "string" },
    json: { type: "string" },
  },
  strict: true,
}).values;
const CLIENTS = numberOption("clients", args.clients, 4, 1, 64, true);
const JOBS = numberOption("jobs", args.jobs, 10, 1, 1000, true);
const STEPS = numberOption("steps", args.steps, 2, 1, 1000, true);
const LATENCY_JOBS = numberOption("latency-jobs", args["latency-jobs"], 20, 1, 1000, true);
const MAX_MS = numberOption("max-seconds", args["max-seconds"], 300, 10, 3600) * 1000;

interface JobView {
  id: string;
  status: string;
  createdAt: string;
  startedAt?: string;
  finishedAt?: string;
}

interface RunResult {
  run: string;
  jobs: number;
  seconds: number;
  jobsPerSecond: number;
  startP50Ms: number;
  startP95Ms: number;
  startMaxMs: number;
  rejected429: number;
  notDone: number;
  completedTwice: number;
  restarted: number;
  /** Fault run: seconds from the SIGKILL to the killed host's job starting again elsewhere. */
  recoverySeconds?: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const percentile = (sorted: number[], p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];

/** Submits until accepted (429 → wait Retry-After); returns the id and how many times it was refused. */
async function submitJob(url: string, seed: number): Promise<{ id: string; refused: number }> {
  for (let refused = 0;; refused++) {
    const res = await submit(url, { steps: STEPS, seed });
    if (res.status === 202) return { id: res.body.id as string, refused };
    if (res.status !== 429) throw new Error(`submit: HTTP ${res.status} ${JSON.stringify(res.body)}`);
    await sleep(1000 * Number(res.headers.get("retry-after") ?? 1));
  }
}

/** Polls the job list until every id is final (or the deadline); returns the jobs. */
async function waitAll(url: string, ids: string[], deadline: number): Promise<Map<string, JobView>> {
  const wanted = new Set(ids);
  const seen = new Map<string, JobView>();
  while (Date.now() < deadline) {
    const { jobs } = await (await fetch(`${url}/v1/jobs?limit=500`)).json() as { jobs: JobView[] };
    for (const j of jobs) if (wanted.has(j.id)) seen.set(j.id, j);
    const open = ids.filter((id) => !["done", "failed", "cancelled"].includes(seen.get(id)?.status ?? ""));
    if (open.length === 0) break;
    await sleep(100);
  }
  return seen;
}

function summarize(
  run: string,
  jobs: Map<string, JobView>,
  ids: string[],
  seconds: number,
  refused: number,
  hosts: HostProcess[],
): RunResult {
  const startMs = ids.map((id) => jobs.get(id)).filter((j) => j?.startedAt)
    .map((j) => Date.parse(j!.startedAt!) - Date.parse(j!.createdAt)).sort((a, b) => a - b);
  const logs = hosts.map((h) => h.log()).join("");
  return {
    run,
    jobs: ids.length,
    seconds,
    jobsPerSecond: ids.length / seconds,
    startP50Ms: percentile(startMs, 0.5),
    startP95Ms: percentile(startMs, 0.95),
    startMaxMs: startMs.at(-1) ?? NaN,
    rejected429: refused,
    notDone: ids.filter((id) => jobs.get(id)?.status !== "done").length,
    completedTwice: ids.filter((id) => logs.split(`job ${id} done in`).length - 1 > 1).length,
    restarted: ids.filter((id) => logs.includes(`job ${id} started again`)).length,
  };
}

async function latencyRun(url: string, hosts: HostProcess[]): Promise<RunResult> {
  const deadline = Date.now() + MAX_MS;
  const ids: string[] = [];
  let jobs = new Map<string, JobView>();
  const t0 = performance.now();
  for (let i = 0; i < LATENCY_JOBS && Date.now() < deadline; i++) {
    const { id } = await submitJob(url, 1000 + i);
    ids.push(id);
    jobs = new Map([...jobs, ...await waitAll(url, [id], deadline)]);
  }
  return summarize(
    "latency (1 client, 1 job at a time)",
    jobs,
    ids,
    (performance.now() - t0) / 1000,
    0,
    hosts,
  );
}

async function loadRun(
  name: string,
  url: string,
  hosts: HostProcess[],
  seedBase: number,
  fault?: () => Promise<{ jobId: string; at: number }>,
): Promise<RunResult> {
  const deadline = Date.now() + MAX_MS;
  const t0 = performance.now();
  const perClient = await Promise.all(
    Array.from({ length: CLIENTS }, async (_, c) => {
      const out = [];
      for (let j = 0; j < JOBS; j++) out.push(await submitJob(url, seedBase + c * JOBS + j));
      return out;
    }),
  );
  const submitted = perClient.flat();
  const ids = submitted.map((s) => s.id);
  const faulted = fault?.();
  const jobs = await waitAll(url, ids, deadline);
  const kill = await faulted;
  const seconds = (performance.now() - t0) / 1000;
  const result = summarize(name, jobs, ids, seconds, submitted.reduce((n, s) => n + s.refused, 0), hosts);
  const again = kill && jobs.get(kill.jobId)?.startedAt;
  if (kill && again) result.recoverySeconds = (Date.parse(again) - kill.at) / 1000;
  return result;
}

/** Kills the first host once it runs a job (seen in the API server's /healthz); returns the job and when. */
async function killMidJob(url: string, host: HostProcess): Promise<{ jobId: string; at: number }> {
  const deadline = Date.now() + MAX_MS;
  while (Date.now() < deadline) {
    const { workers } = await (await fetch(`${url}/healthz`)).json() as {
      workers: Array<{ id: string; running: string | null }>;
    };
    const mine = workers.find((w) => host.log().includes(w.id));
    if (mine?.running) {
      const at = Date.now();
      await host.stop("SIGKILL");
      console.error(`killed worker host ${mine.id} while it ran job ${mine.running}`);
      return { jobId: mine.running, at };
    }
    await sleep(20);
  }
  throw new Error("the host never ran a job");
}

const dir = await Deno.makeTempDir({ prefix: "voxgen-bench-queue-" });
const model = `${dir}/tiny.safetensors`;
await makeTinyModel(model);
const redis = await startRedis();
let server: ServerProcess | undefined;
const hosts: HostProcess[] = [];
const hostArgs = (name: string) => [
  ...["--queue", redis.url, "--data-dir", `${dir}/${name}`, "--default-model", model],
  ...["--lock-duration", "2000", "--stalled-interval", "1000"],
];
try {
  server = await startServer([
    ...["--queue", redis.url, "--data-dir", `${dir}/api`, "--default-model", model],
    ...["--queue-size", String(Math.max(64, CLIENTS * JOBS))],
  ]);
  hosts.push(await startHost(hostArgs("host-1")), await startHost(hostArgs("host-2")));
  // Warm-up: each host compiles its pipelines once.
  await waitAll(
    server.url,
    [(await submitJob(server.url, 1)).id, (await submitJob(server.url, 2)).id],
    Date.now() + MAX_MS,
  );

  const load = `load (${CLIENTS} clients × ${JOBS} jobs, 2 hosts)`;
  const results = [
    await latencyRun(server.url, hosts),
    await loadRun(load, server.url, hosts, 10_000),
    await loadRun(
      `fault: ${load}, host 1 SIGKILLed mid-job`,
      server.url,
      hosts,
      20_000,
      () => killMidJob(server!.url, hosts[0]),
    ),
  ];
  const load1 = (await Deno.loadavg()).map((l) => l.toFixed(2)).join(" ");
  console.log(
    `\nsteps per job: ${STEPS} (tiny 8³ model) · load average at the end: ${load1} · ${
      new Date().toISOString()
    }\n`,
  );
  console.log(
    "| run | jobs | seconds | jobs/s | enqueue→start p50 ms | p95 ms | max ms | 429s | not done | completed twice | restarted | kill → restart s |",
  );
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
  for (const r of results) {
    console.log(
      `| ${r.run} | ${r.jobs} | ${r.seconds.toFixed(1)} | ${
        r.jobsPerSecond.toFixed(2)
      } | ${r.startP50Ms} | ` +
        `${r.startP95Ms} | ${r.startMaxMs} | ${r.rejected429} | ${r.notDone} | ${r.completedTwice} | ${r.restarted} | ` +
        `${r.recoverySeconds?.toFixed(1) ?? "–"} |`,
    );
  }
  if (args.json) await Deno.writeTextFile(args.json, JSON.stringify({ steps: STEPS, results }, null, 2));
  const bad = results.filter((r) => r.notDone > 0 || r.completedTwice > 0);
  if (bad.length > 0) throw new Error(`jobs lost or completed twice in: ${bad.map((r) => r.run).join(", ")}`);
} finally {
  for (const h of hosts) await h.stop("SIGTERM").catch(() => {});
  await server?.stop("SIGTERM");
  await redis.stop();
  await Deno.remove(dir, { recursive: true });
}
