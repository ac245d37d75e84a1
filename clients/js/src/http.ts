import { type EasyModeError, type Result } from "./errors.js";
import { delay } from "./env.js";

/**
 * The one place requests are made. The gateway answers in two envelopes — the data
 * routes' `{data, error, count, status}` and the auth and jobs routes' `{ok, data}` /
 * `{ok: false, error}` — and both become the same `Result`. Nothing here throws: a lost
 * network is `NETWORK_ERROR`, an answer that isn't JSON `INVALID_RESPONSE`.
 */

/** "raw": the body itself is the answer (`/schema`). */
export type Envelope = "data" | "ok" | "raw";

/** Session codes after which the stored session is useless: it is cleared. */
export const SESSION_GONE = new Set(["SESSION_NOT_FOUND", "SESSION_EXPIRED", "SESSION_REQUIRED"]);

export interface RequestSpec {
  method: string;
  path: string;
  body?: unknown;
  query?: Record<string, string | number | undefined>;
  envelope: Envelope;
  /** "auto": the kept session (refreshed when due) as Bearer; a string: that token;
   * "none": no session header. */
  session: "auto" | "none" | string;
}

export interface SessionHooks {
  /** The current session token, refreshed first when it is about to expire. */
  token(): Promise<string | null>;
  /** A request made with `token` was answered 401 with a session code. */
  rejected(token: string): Promise<void>;
}

export interface HttpOptions {
  url: string;
  apiKey: string;
  fetch?: typeof fetch;
  headers?: Record<string, string>;
  /** How many times to retry a 429 or 503 after its `Retry-After` (default 0: never). */
  maxRetries?: number;
}

const MAX_RETRY_WAIT_S = 60;

export class Http {
  readonly url: string;
  readonly apiKey: string;
  readonly fetch: typeof fetch;
  private readonly headers: Record<string, string>;
  private readonly maxRetries: number;
  hooks: SessionHooks = { token: async () => null, rejected: async () => undefined };

  constructor(options: HttpOptions) {
    this.url = options.url.replace(/\/+$/, "");
    this.apiKey = options.apiKey;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
    this.headers = options.headers ?? {};
    this.maxRetries = options.maxRetries ?? 0;
  }

  /** The key in `x-api-key` (the auth and jobs routes read it only there; the data
   * routes take it there too when a session is the Bearer) and the session as Bearer. */
  headersFor(token: string | null, extra: Record<string, string> = {}): Record<string, string> {
    const out: Record<string, string> = { ...this.headers, "x-api-key": this.apiKey, ...extra };
    if (token) out.authorization = `Bearer ${token}`;
    return out;
  }

  async request<T>(spec: RequestSpec): Promise<Result<T>> {
    for (let attempt = 0; ; attempt++) {
      const result = await this.once<T>(spec);
      const retryable = result.status === 429 || result.status === 503;
      if (!result.error || !retryable || attempt >= this.maxRetries) return result;
      const wait = Math.min(result.error.retryAfter ?? 1, MAX_RETRY_WAIT_S);
      await delay(wait * 1000);
    }
  }

  private async once<T>(spec: RequestSpec): Promise<Result<T>> {
    const token =
      spec.session === "auto" ? await this.hooks.token() : spec.session === "none" ? null : spec.session;
    const extra: Record<string, string> = { accept: "application/json" };
    if (spec.body !== undefined) extra["content-type"] = "application/json";
    let response: Response;
    try {
      response = await this.fetch(this.url + spec.path + queryString(spec.query), {
        method: spec.method,
        headers: this.headersFor(token, extra),
        body: spec.body === undefined ? undefined : JSON.stringify(spec.body),
      });
    } catch (err) {
      return failure("NETWORK_ERROR", `the gateway could not be reached: ${describe(err)}`, 0, null);
    }
    const requestId = response.headers.get("x-request-id");
    const retryAfterHeader = response.headers.get("retry-after");
    let body: any;
    try {
      const text = await response.text();
      body = text ? JSON.parse(text) : null;
    } catch (err) {
      return failure("INVALID_RESPONSE", `the answer was not JSON (${describe(err)})`, response.status, requestId);
    }
    const error = envelopeError(spec.envelope, body, response);
    if (error) {
      const out: EasyModeError = { ...error, requestId, status: response.status };
      if (retryAfterHeader !== null && Number.isFinite(Number(retryAfterHeader))) {
        out.retryAfter = Number(retryAfterHeader);
      }
      if (response.status === 401 && token && SESSION_GONE.has(out.code)) await this.hooks.rejected(token);
      return { data: null, error: out, status: response.status, requestId };
    }
    const data = (spec.envelope === "raw" ? body : (body?.data ?? null)) as T;
    const count = spec.envelope === "data" ? (body?.count ?? null) : undefined;
    return { data, error: null, status: response.status, count, requestId };
  }
}

function envelopeError(envelope: Envelope, body: any, response: Response): Omit<EasyModeError, "requestId" | "status"> | null {
  const raw = body && typeof body === "object" ? body.error : null;
  const failed = !response.ok || (envelope === "ok" ? body?.ok === false : raw != null);
  if (!failed) return null;
  if (raw && typeof raw === "object") {
    const out: Omit<EasyModeError, "requestId" | "status"> = {
      code: String(raw.code ?? "UNKNOWN_ERROR"),
      message: String(raw.message ?? response.statusText),
    };
    if (raw.details !== undefined) out.details = raw.details;
    return out;
  }
  return { code: `HTTP_${response.status}`, message: response.statusText || "request failed" };
}

function failure<T>(code: string, message: string, status: number, requestId: string | null): Result<T> {
  return { data: null, error: { code, message, requestId, status }, status, requestId };
}

export function queryString(query?: Record<string, string | number | undefined>): string {
  if (!query) return "";
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) if (value !== undefined) params.set(name, String(value));
  const text = params.toString();
  return text ? `?${text}` : "";
}

export function describe(err: unknown): string {
  if (err instanceof Error) return err.cause instanceof Error ? `${err.message}: ${err.cause.message}` : err.message;
  return String(err);
}
