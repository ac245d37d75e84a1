import { type Result } from "./errors.js";
import { Http } from "./http.js";
import { type AuthEvent, type Session, SessionKeeper, type SessionListener, type User } from "./session.js";

/**
 * End users: sign-up, sign-in, magic links, the session's lifetime.
 *
 * The session is refreshed before it expires — lazily, by the next request that needs it
 * once less than `refreshMarginSeconds` are left — instead of on a timer, so a Node
 * process holding a client has no timer keeping it alive. Concurrent requests share one
 * refresh. A 401 with a session code (the session was revoked, expired, signed out
 * elsewhere) clears it, and `onChange` hears `SIGNED_OUT`.
 */

const AUTH = "/v1/inhouse/auth";

export interface AuthOptions {
  /** Refresh when less than this is left of the session (default 1 hour of its 7 days). */
  refreshMarginSeconds?: number;
}

interface SessionAnswer {
  user?: User;
  session: { token: string; expiresAt: string };
}

export class Auth {
  private refreshing: Promise<string | null> | null = null;
  private readonly marginMs: number;

  constructor(
    private readonly http: Http,
    private readonly keeper: SessionKeeper,
    options: AuthOptions = {},
  ) {
    this.marginMs = (options.refreshMarginSeconds ?? 3600) * 1000;
    http.hooks = { token: () => this.token(), rejected: (token) => this.rejected(token) };
  }

  signUp(credentials: { email: string; password: string; metadata?: Record<string, unknown> }) {
    return this.establish(this.post<SessionAnswer>("/sign-up", credentials, "none"));
  }

  signIn(credentials: { email: string; password: string }) {
    return this.establish(this.post<SessionAnswer>("/sign-in", credentials, "none"));
  }

  /** Mails a link to the app's page, which calls `verifyMagicLink` with its token. */
  sendMagicLink(request: { email: string }) {
    return this.post<{ message: string; expiresAt: string; token?: string }>("/magic-link", request, "none");
  }

  verifyMagicLink(request: { token: string }) {
    return this.establish(this.post<SessionAnswer>("/magic-link/verify", request, "none"));
  }

  /** The signed-in user, as the gateway knows them now. */
  async user(): Promise<Result<User>> {
    const result = await this.http.request<{ user: User }>({ method: "GET", path: `${AUTH}/user`, envelope: "ok", session: "auto" });
    return result.error ? result : { ...result, data: result.data.user };
  }

  /** The kept session (no request), or null. */
  session(): Promise<Session | null> {
    return this.keeper.get();
  }

  /** A new session token now (the old one ends: at once, or after the gateway's grace). */
  async refresh(): Promise<Result<Session>> {
    const current = await this.keeper.get();
    if (!current) return noSession();
    const result = await this.http.request<SessionAnswer>({
      method: "POST", path: `${AUTH}/refresh`, body: {}, envelope: "ok", session: current.token,
    });
    if (result.error) return result;
    const next: Session = { ...result.data.session, user: result.data.user ?? current.user };
    await this.keeper.set(next, "TOKEN_REFRESHED");
    return { ...result, data: next };
  }

  /** Ends the session at the gateway and forgets it here — also when the gateway can't
   * be reached, so a signed-out app never keeps sending the token. `scope: "global"`
   * ends every session of the user (POST /sign-out with `{"scope": "global"}`). */
  async signOut(options: { scope?: "local" | "global" } = {}): Promise<Result<{ success: boolean }>> {
    const current = await this.keeper.get();
    if (!current) return { data: { success: true }, error: null, status: 200, requestId: null };
    const body = options.scope === "global" ? { scope: "global" } : {};
    const result = await this.http.request<{ success: boolean }>({
      method: "POST", path: `${AUTH}/sign-out`, body, envelope: "ok", session: current.token,
    });
    if ((await this.keeper.get())?.token === current.token) await this.keeper.set(null, "SIGNED_OUT");
    return result;
  }

  /** Sets a new password for the signed-in user (POST /password). */
  updatePassword(request: { currentPassword?: string; password: string }) {
    return this.http.request<unknown>({ method: "POST", path: `${AUTH}/password`, body: request, envelope: "ok", session: "auto" });
  }

  /** `listener(session, event)` on sign-in, sign-out (also a session the gateway
   * refused) and refresh; returns the function that stops listening. */
  onChange(listener: SessionListener): () => void {
    return this.keeper.onChange(listener);
  }

  /** Adopts a session obtained elsewhere (a server-side sign-in handed to the page). */
  async setSession(session: Session | null): Promise<void> {
    await this.keeper.set(session, session ? "SIGNED_IN" : "SIGNED_OUT");
  }

  private post<T>(route: string, body: unknown, session: "none" | "auto") {
    return this.http.request<T>({ method: "POST", path: AUTH + route, body, envelope: "ok", session });
  }

  private async establish(pending: Promise<Result<SessionAnswer>>): Promise<Result<{ user: User | null; session: Session }>> {
    const result = await pending;
    if (result.error) return result;
    const session: Session = { ...result.data.session, user: result.data.user ?? null };
    await this.keeper.set(session, "SIGNED_IN");
    return { ...result, data: { user: session.user, session } };
  }

  private async token(): Promise<string | null> {
    const current = await this.keeper.get();
    if (!current) return null;
    const left = Date.parse(current.expiresAt) - Date.now();
    if (!(left < this.marginMs)) return current.token;
    this.refreshing ??= this.refresh()
      .then(async (result) => (result.error ? ((await this.keeper.get())?.token ?? null) : result.data.token))
      .finally(() => (this.refreshing = null));
    return this.refreshing;
  }

  private async rejected(token: string): Promise<void> {
    // only if it is still the kept one: a sign-in meanwhile must survive an old 401
    if ((await this.keeper.get())?.token === token) await this.keeper.set(null, "SIGNED_OUT");
  }
}

export type { AuthEvent };

function noSession<T>(): Result<T> {
  return { data: null, error: { code: "SESSION_REQUIRED", message: "no one is signed in", requestId: null, status: 0 }, status: 0, requestId: null };
}
