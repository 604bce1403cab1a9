/**
 * Option parsing the commands share: numbers and number lists with errors that name the option.
 *
 * @module
 */

import { ResumeMismatchError, type RunSetting } from "../pipelines/train.ts";

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

/** Flags of the training settings every command shares (train's own settings). */
const TRAIN_FLAGS: Record<string, string> = {
  lr: "--lr",
  minLr: "--min-lr",
  gradAccumulation: "--accumulate",
  emaDecay: "--ema",
  seed: "--seed",
};

/**
 * Train's refusal to resume, in a command's words: each changed setting named by its flag (`--name` for the
 * command's own settings, `flags` for the rest), and `elsewhere` saying where a new run would go.
 */
export function explainResumeMismatch(
  error: unknown,
  settings: Record<string, RunSetting>,
  flags: Record<string, string>,
  elsewhere: string,
): unknown {
  if (!(error instanceof ResumeMismatchError)) return error;
  const names = {
    ...Object.fromEntries(Object.keys(settings).map((name) => [name, `--${name}`])),
    ...TRAIN_FLAGS,
    ...flags,
  };
  return new Error(error.explain(names, elsewhere));
}
