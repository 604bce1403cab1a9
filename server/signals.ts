/**
 * Stopping on SIGINT/SIGTERM: the first signal starts a graceful shutdown (the running job may finish
 * within its grace period); a signal repeated later forces an immediate exit.
 *
 * One stop request often arrives twice: systemd and `docker stop` signal the whole process group, so a
 * server started through `deno task` gets the signal once directly and once forwarded by `deno task`, and a
 * terminal's Ctrl-C reaches both the same way. Copies arriving within {@linkcode SAME_REQUEST_MS} of the
 * first are therefore the same request, not a second one asking to force.
 *
 * @module
 */

/** Signals within this many milliseconds of the first count as the same stop request. */
export const SAME_REQUEST_MS = 1000;

/**
 * Resolves once `stop` (called on the first SIGINT or SIGTERM) has finished. A signal arriving more than
 * {@linkcode SAME_REQUEST_MS} after the first exits the process at once with status 1.
 */
export async function runUntilStopped(stop: () => Promise<void>): Promise<void> {
  const done = Promise.withResolvers<void>();
  let first: number | undefined;
  const onSignal = (signal: Deno.Signal) => {
    const now = performance.now();
    if (first === undefined) {
      first = now;
      console.error(`${signal}: shutting down (the running job may finish first; ${signal} again to force)`);
      stop().then(done.resolve, done.reject);
    } else if (now - first > SAME_REQUEST_MS) {
      console.error(`${signal} again: exiting without waiting`);
      Deno.exit(1);
    }
  };
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  const handlers = signals.map((s) => [s, () => onSignal(s)] as const);
  for (const [s, h] of handlers) Deno.addSignalListener(s, h);
  try {
    await done.promise;
  } finally {
    for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
  }
}
