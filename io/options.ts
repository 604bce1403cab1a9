/**
 * Command-line option values: numbers and number lists, with errors that name the option. Shared by the
 * commands in cli/ and the server's entry point.
 *
 * @module
 */

import { parsePrecision, type Precision } from "../engine/precision.ts";

/** Parses a precision option ("f32", the default, or "f16"), with a clear error naming the option. */
export function precisionOption(option: string, value: string | undefined): Precision {
  try {
    return parsePrecision(value ?? "f32");
  } catch (error) {
    throw new Error(`--${option}: ${(error as Error).message}`);
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
