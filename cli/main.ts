/**
 * `deno task cli <command> [args]`: one entry point for every voxgen command. Each command lives in its own
 * module (loaded only when it runs) and is also its own `deno task`; this router adds the usage listing,
 * uniform error messages (prefixed by the command name) and exit codes: 0 on success, 1 when the command
 * fails, 2 on a usage error (no or unknown command, an unknown option, or a bad option value).
 *
 * @module
 */

/** A command of the router. */
export interface CliCommand {
  /** One line for the usage listing. */
  summary: string;
  /** Runs the command with its arguments; resolves to its exit code (nothing = 0). */
  run(args: string[]): Promise<number | void>;
}

/** Every command, in the order the usage lists them. */
export const COMMANDS: Readonly<Record<string, CliCommand>> = {
  sample: {
    summary: "generate volumes from a model (default: the embedded demo) as NIfTI + PNG preview",
    run: async (args) => (await import("./sample.ts")).main(args),
  },
  train: {
    summary: "train a 3-D diffusion U-Net on NIfTI volumes and write a model file",
    run: async (args) => (await import("./train.ts")).main(args),
  },
  finetune: {
    summary: "fine-tune a model on new volumes with an adapter (LoCon, LoHa, LoKr, TenVOO, QuanTA) or fully",
    run: async (args) => (await import("./finetune.ts")).main(args),
  },
  invert: {
    summary:
      "textual inversion: learn a new concept's token vectors for a conditional model (NAME.ti.safetensors)",
    run: async (args) => (await import("./invert.ts")).main(args),
  },
  eval: {
    summary: "compare generated volumes with real ones (MS-SSIM, MMD, FID, Dice, HD95, …)",
    run: async (args) => {
      const report = await (await import("./eval.ts")).runEval(args);
      // The table was printed; a metric that failed to compute makes the run fail, as `deno task eval` does.
      return Object.values(report.metrics).some((m) => m.status === "error") ? 1 : 0;
    },
  },
  info: {
    summary: "show the GPU, or describe a NIfTI image, model, adapter or safetensors file",
    run: async (args) => (await import("./info.ts")).main(args),
  },
  import: {
    summary: "turn a MONAI DiffusionModelUNet checkpoint (torch.save .pt) into a voxgen model file",
    run: async (args) => (await import("./import.ts")).main(args),
  },
  serve: {
    summary: "serve sampling over HTTP, with a job queue and a browser viewer",
    run: async (args) => (await import("../server/main.ts")).main(args),
  },
};

/** The usage listing: one line per command. */
export function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((name) => name.length));
  return [
    "Usage: deno task cli <command> [options]",
    "",
    "Commands:",
    ...Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`),
    "",
    "`deno task cli <command> --help` (or `deno task cli help <command>`) lists a command's options.",
  ].join("\n");
}

/**
 * Runs the command line `args` (`<command> [options]`) and returns the exit code. Output goes to
 * `console.log`; errors go to `console.error` as `<command>: <message>`.
 */
export async function run(args: readonly string[]): Promise<number> {
  const [first, ...rest] = args;
  if (first === undefined) {
    console.error(`${usage()}\n\nvoxgen: no command given.`);
    return 2;
  }
  if (first === "--help" || first === "-h" || (first === "help" && rest.length === 0)) {
    console.log(usage());
    return 0;
  }
  const [name, commandArgs] = first === "help" ? [rest[0], ["--help"]] : [first, rest];
  const command = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined;
  if (!command) {
    const hint = closest(name, Object.keys(COMMANDS));
    console.error(
      `voxgen: unknown command "${name}"${hint ? ` (did you mean "${hint}"?)` : ""}; ` +
        `commands: ${Object.keys(COMMANDS).join(", ")}. See \`deno task cli --help\`.`,
    );
    return 2;
  }
  try {
    return (await command.run(commandArgs)) ?? 0;
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    // Commands already naming themselves ("eval: …") are not prefixed twice.
    console.error(message.startsWith(`${name}:`) ? message : `${name}: ${message}`);
    return isUsageError(error) ? 2 : 1;
  }
}

/**
 * Whether a command's error is about how it was called: node:util's parseArgs errors (unknown option,
 * missing value, unexpected argument), and the commands' own checks of their options, which by convention
 * start with the option's name ("--steps: …", "--data is required") or point to `--help`.
 */
function isUsageError(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  const code = (error as { code?: unknown }).code;
  if (typeof code === "string" && code.startsWith("ERR_PARSE_ARGS")) return true;
  return /^(\w+: )?--[a-z]/.test(error.message) || /see --help\.?$/.test(error.message);
}

/** The candidate within edit distance 2 of `word`, if any (for "did you mean"). */
function closest(word: string, candidates: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = 3;
  for (const c of candidates) {
    const d = editDistance(word, c);
    if (d < bestDistance) [best, bestDistance] = [c, d];
  }
  return best;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(
        previous[j] + 1,
        current[j - 1] + 1,
        previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1),
      );
    }
    previous = current;
  }
  return previous[b.length];
}

if (import.meta.main) {
  Deno.exit(await run(Deno.args));
}
