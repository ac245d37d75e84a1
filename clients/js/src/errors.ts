/**
 * Errors as values: every call of the client resolves to `{ data, error, status }` and
 * never throws, so an app handles a refused query, a lost network and a 429 in one place.
 * The error keeps what the gateway said (`code`, `message`, `details`) and the response's
 * `X-Request-Id`, which is how the gateway's logs are searched for the cause.
 */
export interface EasyModeError {
  /** The gateway's error code (`TABLE_NOT_FOUND`, `RATE_LIMIT_EXCEEDED`, …), or the
   * client's own (`NETWORK_ERROR`, `INVALID_RESPONSE`, `SERVER_KEY_REQUIRED`, …). */
  code: string;
  message: string;
  details?: unknown;
  /** `X-Request-Id` of the answer; null when no answer arrived. */
  requestId: string | null;
  /** HTTP status; 0 when no answer arrived or the client refused before sending. */
  status: number;
  /** Seconds to wait, from `Retry-After` (429 and 503 answers). */
  retryAfter?: number;
}

export type Result<T> =
  | { data: T; error: null; status: number; count?: number | null; requestId: string | null }
  | { data: null; error: EasyModeError; status: number; count?: number | null; requestId: string | null };

/** A refusal made by the client itself, before anything is sent. */
export function clientError<T>(code: string, message: string): Result<T> {
  return { data: null, error: { code, message, requestId: null, status: 0 }, status: 0, requestId: null };
}

/** Thrown only by `createClient` for a configuration that must never run (a server key
 * in a browser): a mistake in the code, not a runtime condition. */
export class EasyModeConfigError extends Error {
  readonly code: string;
  constructor(code: string, message: string) {
    super(message);
    this.name = "EasyModeConfigError";
    this.code = code;
  }
}
