/**
 * Progress reporting for long loops (training, sampling).
 *
 * One {@linkcode Progress} computes what to show; two renderers show it: on a terminal, one line redrawn
 * in place after every update; elsewhere (a log file, `nohup`, CI), a plain line every `logEvery` seconds
 * and on the first and the last update, so a log shows a run's progress while it runs.
 *
 * @module
 */

/** How progress is shown: redrawn in place on a terminal, or as plain lines in logs. */
export type ProgressMode = "terminal" | "log";

/** Options of {@linkcode Progress}. */
export interface ProgressOptions {
  /** Default: "terminal" when stderr is a terminal, else "log". */
  mode?: ProgressMode;
  /** Seconds between lines in "log" mode (default 30); the first and the last update are always shown. */
  logEvery?: number;
  /** Units done before this run (a resumed run): speed and ETA count only this run's work (default 0). */
  start?: number;
  /** Name of a unit in the speed, e.g. "2.31 s/step" (default "step"). */
  unit?: string;
  /** Clock in seconds (default `performance.now() / 1000`); tests pass a fake one. */
  now?: () => number;
  /**
   * When the work began, on that clock (default: when the reporter is made). For a reporter made at the
   * first report, when the total becomes known, so that the first step's time counts.
   */
  startedAt?: number;
  /**
   * Receives the output: `"\r" + line` redraws in "terminal" mode, `line + "\n"` in "log" mode. Default:
   * stderr (log lines through `console.error`, where tests capturing the console see them).
   */
  write?: (text: string) => void;
}

/** A progress reporter for `total` units of work. */
export class Progress {
  /** How this reporter shows progress. */
  readonly mode: ProgressMode;
  readonly #logEvery: number;
  readonly #start: number;
  readonly #unit: string;
  readonly #now: () => number;
  readonly #write: (text: string) => void;
  readonly #began: number;
  /** When the last log line was written (-Infinity: none yet). */
  #lastLogged = -Infinity;

  /** Starts the clock for `total` units of work labelled `label` (e.g. "step", "sampling (ddim)"). */
  constructor(readonly label: string, readonly total: number, opts: ProgressOptions = {}) {
    this.mode = opts.mode ?? (Deno.stderr.isTerminal() ? "terminal" : "log");
    this.#logEvery = opts.logEvery ?? 30;
    this.#start = opts.start ?? 0;
    this.#unit = opts.unit ?? "step";
    this.#now = opts.now ?? (() => performance.now() / 1000);
    this.#write = opts.write ??
      (this.mode === "terminal"
        ? (text) => Deno.stderr.writeSync(new TextEncoder().encode(text))
        : (text) => console.error(text.replace(/\n$/, "")));
    this.#began = opts.startedAt ?? this.#now();
  }

  /** Reports `done` units finished, with an optional suffix (e.g. the loss). */
  update(done: number, suffix = ""): void {
    const now = this.#now();
    const last = done >= this.total;
    if (this.mode === "terminal") {
      // Erase what a longer previous line left behind; end the line when the work is done.
      this.#write(`\r${this.#line(done, suffix, now)}\x1b[K${last ? "\n" : ""}`);
      return;
    }
    if (this.#lastLogged === -Infinity || last || now - this.#lastLogged >= this.#logEvery) {
      this.#lastLogged = now;
      this.#write(`${this.#line(done, suffix, now)}\n`);
    }
  }

  #line(done: number, suffix: string, now: number): string {
    const elapsed = Math.max(now - this.#began, 0);
    const finished = done - this.#start;
    const perUnit = finished > 0 ? elapsed / finished : NaN;
    const eta = (this.total - done) * perUnit;
    const speed = !(perUnit > 0)
      ? `- s/${this.#unit}`
      : perUnit < 1
      ? `${(1 / perUnit).toFixed(2)} ${this.#unit}/s`
      : `${perUnit.toFixed(2)} s/${this.#unit}`;
    const where = this.mode === "terminal"
      ? bar(done, this.total)
      : `(${Math.floor((100 * done) / this.total)}%)`;
    return `${this.label} ${done}/${this.total} ${where}${suffix ? ` ${suffix}` : ""}, ${speed}, ` +
      `${duration(elapsed)} elapsed, ETA ${Number.isFinite(eta) ? duration(eta) : "-"}`;
  }
}

function bar(done: number, total: number, width = 24): string {
  const filled = Math.max(0, Math.min(width, Math.round((width * done) / total)));
  return `[${"=".repeat(filled)}${" ".repeat(width - filled)}]`;
}

/** "42s", "3m07s", "2h05m". */
export function duration(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const pad = (n: number) => String(n).padStart(2, "0");
  if (s < 3600) return `${Math.floor(s / 60)}m${pad(s % 60)}s`;
  return `${Math.floor(s / 3600)}h${pad(Math.floor((s % 3600) / 60))}m`;
}
