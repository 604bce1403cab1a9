/**
 * A one-line progress bar on stderr: redrawn in place on a terminal, a few plain lines in logs.
 *
 * @module
 */

/** A progress reporter for `total` units of work. */
export class Progress {
  readonly #start = performance.now();
  readonly #terminal = Deno.stderr.isTerminal();
  #lastLogged = -1;

  constructor(readonly label: string, readonly total: number) {}

  /** Reports `done` units finished, with an optional suffix. */
  update(done: number, suffix = ""): void {
    const elapsed = (performance.now() - this.#start) / 1000;
    const rate = done / Math.max(elapsed, 1e-9);
    const eta = (this.total - done) / Math.max(rate, 1e-9);
    const width = 24;
    const filled = Math.round((width * done) / this.total);
    const line = `${this.label} ${done}/${this.total} [${"=".repeat(filled)}${" ".repeat(width - filled)}] ` +
      `${elapsed.toFixed(1)}s elapsed, ETA ${eta.toFixed(1)}s${suffix ? ` ${suffix}` : ""}`;
    if (this.#terminal) {
      Deno.stderr.writeSync(new TextEncoder().encode(`\r${line}${done === this.total ? "\n" : ""}`));
      return;
    }
    // In logs: every 10% and at the end.
    const decile = Math.floor((10 * done) / this.total);
    if (decile !== this.#lastLogged || done === this.total) {
      this.#lastLogged = decile;
      console.error(line);
    }
  }
}

/** Parses "a,b,c" into numbers, with a clear error naming the option. */
export function numberList(option: string, value: string): number[] {
  const list = value.split(",").map((v) => Number(v.trim()));
  if (list.some((v) => !Number.isFinite(v))) {
    throw new Error(`--${option}: "${value}" is not a comma-separated list of numbers.`);
  }
  return list;
}

/** Parses a number option within [min, max], with a clear error. */
export function numberOption(
  option: string,
  value: string | undefined,
  fallback: number,
  min = -Infinity,
  max = Infinity,
  integer = false,
): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isFinite(n) || n < min || n > max || (integer && !Number.isInteger(n))) {
    throw new Error(
      `--${option}: "${value}" is not ${integer ? "an integer" : "a number"} in ${min}..${max}.`,
    );
  }
  return n;
}
