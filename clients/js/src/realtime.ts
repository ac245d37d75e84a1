import { type EasyModeError } from "./errors.js";
import { delay } from "./env.js";
import { type Filter, type FilterOp, type GenericDatabase, type GenericRow } from "./db.js";
import { describe, Http, queryString, SESSION_GONE } from "./http.js";
import { type SessionKeeper } from "./session.js";
import { readEvents, type SseMessage } from "./sse.js";

/**
 * Row changes as server-sent events (docs/realtime.md), kept alive across drops.
 *
 * Two transports. In browsers, `EventSource`: a single-use ticket is fetched first
 * (`POST /realtime/ticket`, key and session in headers), because a session token must
 * never appear in a URL; the browser's own reconnect would reuse the spent ticket, so
 * the client closes the source on an error and reconnects itself with a fresh ticket and
 * `since=<last id>`. Where `EventSource` is missing (Node), a streaming `fetch` with the
 * headers and `Last-Event-ID`. Either way the last id the server sent is kept as an
 * opaque string and the next connection — on whichever instance answers — resumes
 * there, so nothing is missed or repeated. A sign-in, sign-out or refresh reconnects at
 * once with the new session; a refusal that waiting can't fix (401, 403, 404, 400) is delivered as
 * an `error` event and the subscription waits for the next sign-in.
 */

export type RealtimeEventType = "insert" | "update" | "delete" | "leave" | "truncate" | "reset" | "error";

export interface RealtimeEvent<Row = GenericRow> {
  type: RealtimeEventType;
  /** The event's id (opaque: resume with it). */
  id: string | null;
  table?: string;
  /** The new row (insert, update); the primary key only (delete, leave). */
  row?: Partial<Row>;
  /** reset: the position the stream continues from. */
  cursor?: string;
  /** error: why the subscription stopped (it resumes after the next sign-in). */
  error?: EasyModeError;
}

export type FilterTuple = [column: string, op: FilterOp, value?: unknown];

export type RealtimeStatus = "connecting" | "open" | "retrying" | "paused" | "closed";

export interface SubscribeOptions {
  filters?: (FilterTuple | Filter)[];
  /** Start after this event id instead of now. */
  since?: string;
  /** "auto" (default): EventSource where it exists, else streaming fetch. */
  transport?: "auto" | "eventsource" | "fetch";
  /** Connection state changes; "open" means the stream is live. */
  onStatus?: (status: RealtimeStatus) => void;
}

export interface Subscription {
  close(): void;
  /** The last id the server sent (where a reconnect resumes). */
  readonly lastEventId: string | null;
  readonly status: RealtimeStatus;
}

const KINDS = ["insert", "update", "delete", "leave", "truncate", "reset", "overflow", "error"] as const;
const BACKOFF_MS = [250, 500, 1000, 2000, 5000, 10000];

type Outcome = { kind: "ended" } | { kind: "dropped" } | { kind: "refused"; error: EasyModeError; retryAfter?: number };

interface EventSourceLike {
  addEventListener(type: string, listener: (event: any) => void): void;
  close(): void;
  onopen: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
}

export class Realtime<D extends GenericDatabase> {
  constructor(
    private readonly http: Http,
    private readonly keeper: SessionKeeper,
  ) {}

  subscribe<N extends keyof D["tables"] & string>(
    table: N,
    options: SubscribeOptions,
    callback: (event: RealtimeEvent<D["tables"][N]["Row"]>) => void,
  ): Subscription {
    return new Stream(this.http, this.keeper, table, options, callback as (event: RealtimeEvent<any>) => void);
  }
}

class Stream implements Subscription {
  lastEventId: string | null;
  status: RealtimeStatus = "connecting";
  private closed = false;
  private current: AbortController | null = null;
  private wake: (() => void) | null = null;
  private readonly filters: string | undefined;
  private readonly stopListening: () => void;

  constructor(
    private readonly http: Http,
    keeper: SessionKeeper,
    private readonly table: string,
    private readonly options: SubscribeOptions,
    private readonly callback: (event: RealtimeEvent<any>) => void,
  ) {
    this.lastEventId = options.since ?? null;
    const filters = (options.filters ?? []).map((f) =>
      Array.isArray(f) ? (f.length > 2 ? { column: f[0], op: f[1], value: f[2] } : { column: f[0], op: f[1] }) : f,
    );
    this.filters = filters.length ? JSON.stringify(filters) : undefined;
    // a new identity, or a rotated token: the open stream runs on the old session, which
    // the gateway ends (at once or after its grace), so move to the new one now — from
    // the last id, nothing is lost
    this.stopListening = keeper.onChange(() => this.reconnectNow());
    void this.run();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.stopListening();
    this.current?.abort();
    this.wake?.();
    this.setStatus("closed");
  }

  private reconnectNow(): void {
    this.current?.abort();
    this.wake?.();
  }

  private setStatus(status: RealtimeStatus): void {
    if (this.status === status || (this.status === "closed" && status !== "closed")) return;
    this.status = status;
    this.options.onStatus?.(status);
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.closed) {
      const controller = new AbortController();
      this.current = controller;
      this.setStatus(failures ? "retrying" : "connecting");
      const outcome = await this.connect(controller.signal, () => {
        failures = 0;
        this.setStatus("open");
      });
      if (this.closed) break;
      if (controller.signal.aborted) continue; // a sign-in/out or an overflow: at once
      if (outcome.kind === "refused") {
        const waitable = outcome.error.status === 429 || outcome.error.status >= 500 || outcome.error.status === 0;
        if (!waitable) {
          this.setStatus("paused");
          this.deliver({ type: "error", id: null, error: outcome.error });
          await this.sleep(); // until a sign-in/out or close
          failures = 0;
          continue;
        }
        await this.sleep(Math.max((outcome.retryAfter ?? 0) * 1000, backoff(failures++)));
        continue;
      }
      if (outcome.kind === "dropped") await this.sleep(backoff(failures++));
      else await this.sleep(backoff(0) / 5); // the server ended the stream (drain, overflow)
    }
    this.current = null;
  }

  private sleep(ms?: number): Promise<void> {
    return new Promise((resolve) => {
      const finish = () => {
        this.wake = null;
        resolve();
      };
      this.wake = finish;
      if (ms !== undefined) void delay(ms).then(finish);
    });
  }

  private useEventSource(): boolean {
    const available = typeof (globalThis as { EventSource?: unknown }).EventSource === "function";
    if (this.options.transport === "fetch") return false;
    return available || this.options.transport === "eventsource";
  }

  private connect(signal: AbortSignal, opened: () => void): Promise<Outcome> {
    return this.useEventSource() ? this.viaEventSource(signal, opened) : this.viaFetch(signal, opened);
  }

  private handle(message: SseMessage, token: string | null, signal: AbortSignal, stop: () => void): void {
    if (message.id) this.lastEventId = message.id;
    let payload: any = null;
    try {
      payload = message.data ? JSON.parse(message.data) : null;
    } catch {
      payload = { data: message.data };
    }
    if (message.event === "overflow") {
      if (payload?.cursor) this.lastEventId = String(payload.cursor);
      stop();
      return;
    }
    if (message.event === "error") {
      // the stream's session ended (signed out, refreshed elsewhere): forget it if it is
      // still ours; the loop reconnects and a refusal then is delivered
      const code = payload?.error?.code ?? payload?.code;
      if (token && SESSION_GONE.has(code)) void this.http.hooks.rejected(token);
      stop();
      return;
    }
    if (signal.aborted) return;
    if (message.event === "reset" && payload?.cursor) this.lastEventId = String(payload.cursor);
    this.deliver({ ...(payload ?? {}), type: message.event as RealtimeEventType, id: message.id });
  }

  private deliver(event: RealtimeEvent<any>): void {
    try {
      this.callback(event);
    } catch {
      /* the app's callback must not end the subscription */
    }
  }

  private streamQuery(extra: Record<string, string | undefined>): string {
    return queryString({ table: this.table, filters: this.filters, since: this.lastEventId ?? undefined, ...extra });
  }

  private async viaFetch(signal: AbortSignal, opened: () => void): Promise<Outcome> {
    const token = await this.http.hooks.token();
    const extra: Record<string, string> = { accept: "text/event-stream" };
    if (this.lastEventId) extra["last-event-id"] = this.lastEventId;
    let response: Response;
    try {
      response = await this.http.fetch(this.http.url + "/v1/inhouse/db/realtime" + this.streamQuery({}), {
        headers: this.http.headersFor(token, extra),
        signal,
      });
    } catch {
      return { kind: "dropped" };
    }
    if (!response.ok || !response.body) return this.refusal(response, token);
    // live once the server's first block (an id) arrives: it has joined the hub by then
    let live = false;
    const markLive = () => {
      if (!live) (live = true), opened();
    };
    const controller = new AbortController();
    const stop = () => controller.abort();
    signal.addEventListener("abort", stop);
    try {
      await readEvents(
        response.body,
        (m) => (markLive(), this.handle(m, token, signal, stop)),
        (id) => ((this.lastEventId = id), markLive()),
        controller.signal,
      );
      // the server ended it, or we stopped (overflow, error event); ending before the
      // first block counts as a failure, so a server that keeps doing it gets backoff
      return live ? { kind: "ended" } : { kind: "dropped" };
    } catch {
      return { kind: "dropped" }; // the connection broke
    } finally {
      signal.removeEventListener("abort", stop);
    }
  }

  private async refusal(response: Response, token: string | null): Promise<Outcome> {
    let code = `HTTP_${response.status}`;
    let message = response.statusText || "the stream was refused";
    let details: unknown;
    try {
      const body = await response.json();
      if (body?.error) ({ code, message, details } = { code: body.error.code ?? code, message: body.error.message ?? message, details: body.error.details });
    } catch (err) {
      message = `${message} (${describe(err)})`;
    }
    if (response.status === 401 && token && SESSION_GONE.has(code)) await this.http.hooks.rejected(token);
    const retryAfter = Number(response.headers.get("retry-after") ?? NaN);
    const error: EasyModeError = { code, message, requestId: response.headers.get("x-request-id"), status: response.status };
    if (details !== undefined) error.details = details;
    if (Number.isFinite(retryAfter)) error.retryAfter = retryAfter;
    return { kind: "refused", error, retryAfter: error.retryAfter };
  }

  private async viaEventSource(signal: AbortSignal, opened: () => void): Promise<Outcome> {
    const ticket = await this.http.request<{ ticket: string }>({
      method: "POST", path: "/v1/inhouse/db/realtime/ticket", body: {}, envelope: "data", session: "auto",
    });
    if (ticket.error) return { kind: "refused", error: ticket.error, retryAfter: ticket.error.retryAfter };
    if (signal.aborted) return { kind: "ended" };
    const Source = (globalThis as unknown as { EventSource: new (url: string) => EventSourceLike }).EventSource;
    const source = new Source(this.http.url + "/v1/inhouse/db/realtime" + this.streamQuery({ ticket: ticket.data.ticket }));
    return new Promise<Outcome>((resolve) => {
      const finish = (outcome: Outcome) => {
        source.close();
        signal.removeEventListener("abort", aborted);
        resolve(outcome);
      };
      const aborted = () => finish({ kind: "ended" });
      signal.addEventListener("abort", aborted);
      source.onopen = () => opened();
      // a connection error (no data): the browser would retry with the spent ticket
      source.onerror = (event: { data?: unknown }) => {
        if (event?.data === undefined) finish({ kind: "dropped" });
      };
      for (const kind of KINDS) {
        source.addEventListener(kind, (event: { data?: string; lastEventId?: string }) => {
          if (event.data === undefined) return; // the connection error, handled above
          const message: SseMessage = { event: kind, data: event.data, id: event.lastEventId || null };
          this.handle(message, null, signal, () => finish({ kind: "ended" }));
        });
      }
    });
  }
}

function backoff(failures: number): number {
  const base = BACKOFF_MS[Math.min(failures, BACKOFF_MS.length - 1)];
  return base * (0.8 + Math.random() * 0.4);
}
