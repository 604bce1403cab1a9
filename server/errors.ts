/**
 * The error every API failure is expressed in: an HTTP status, a stable machine-readable code and a
 * message for people. The router turns it into `{ error: { code, message } }`.
 *
 * @module
 */

/** An API error with its HTTP status. */
export class ApiError extends Error {
  /**
   * An error answered with `status` and `{ error: { code, message } }`.
   *
   * @param status HTTP status (400, 401, 404, 409, 413, 415, 422, 429, 503, …)
   * @param code stable identifier, e.g. "unknown_field"
   * @param message what went wrong and what is accepted
   * @param headers extra response headers (e.g. Retry-After)
   */
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }
}
