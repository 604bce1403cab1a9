/**
 * Option parsing the commands share: numbers and number lists with errors that name the option (from
 * io/options.ts, which the server's entry point uses too), and train's resume refusal in flag words.
 *
 * @module
 */

import { relative } from "node:path";
import { ResumeMismatchError, type RunSetting } from "../pipelines/train.ts";

export { numberList, numberOption, precisionOption } from "../io/options.ts";

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

/**
 * How a run records a file it reads: its real path relative to the working directory (the repository, for
 * `deno task`), e.g. `../shared/data/MNI152_2009_template.nii.gz`, so that a checkpoint resumes in a checkout
 * at another place.
 */
export async function portablePath(path: string): Promise<string> {
  return relative(Deno.cwd(), await Deno.realPath(path)) || ".";
}
