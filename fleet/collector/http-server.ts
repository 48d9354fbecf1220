/**
 * The collector's dashboard: one self-contained page (no CDN, no chart
 * library) and the JSON it reads. Read-only and unauthenticated, so it binds
 * to loopback unless told otherwise, and warns at start when it is not.
 *
 * DNS rebinding: a web page from evil.example whose name is later pointed at
 * the collector's address could read the API from the operator's browser.
 * Such requests carry `Host: evil.example`, so only Host headers naming an
 * IP address, localhost, the name the dashboard was bound to, or a name given
 * in `publicNames` (`edgefleet collect --public-name`) are answered; others
 * get 421 with why.
 *
 *   GET /                                   the dashboard
 *   GET /api/devices?offset=&limit=&sort=&desc=&group=&model=&online=&errors=&minP99=&search=
 *                                           one page of the fleet table (fleet-query.ts):
 *                                           {total, online, offset, limit, sort, desc, rows: FleetRow[]}
 *   GET /api/devices/{id}/series?from=&to=  latency and health samples
 *   GET /api/devices/{id}/events?from=&to=  events, oldest first
 *   GET /api/rollouts?limit=&active=        staged rollouts, newest first: {rollouts: RolloutListItem[]}
 *   GET /api/rollouts/{id}                  one rollout, its waves' gates and devices (rollout-view.ts);
 *                                           404 for an unknown id. Never a manifest's bytes.
 *   GET /metrics                            the fleet as Prometheus metrics (fleet-metrics.ts), when given
 *   GET /api/alerts                         the built-in evaluator's alerts (fleet/alerts/view.ts):
 *                                           {active, resolved (the latest), outbox}
 *
 * from and to are RFC 3339 UTC times or epoch milliseconds; the default is the last hour.
 */
import { createServer } from 'node:http';
import { isIP } from 'node:net';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { DEVICE_ID_RE, parseTime } from '../../protocol/index.js';
import { UsageError, errorMessage } from '../errors.js';
import { readAlerts } from '../alerts/view.js';
import { DASHBOARD_HTML } from './dashboard-page.js';
import { METRICS_CONTENT_TYPE } from './fleet-metrics.js';
import { FleetQueryError, parseFleetQuery } from './fleet-query.js';
import type { FleetPage, FleetQuery } from './fleet-query.js';
import { ROLLOUT_ID_RE, RolloutQueryError, parseRolloutQuery, rolloutDetail, rolloutListItem } from './rollout-view.js';
import type { RolloutDetail, RolloutListItem } from './rollout-view.js';
import type { FleetStore, TimeRange } from './store.js';

const DEFAULT_WINDOW_MS = 3_600_000;
const MAX_LIMIT = 20_000;

// Everything the page needs is inline; nothing else may load.
const PAGE_HEADERS = {
  'content-type': 'text/html; charset=utf-8',
  'content-security-policy': "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
  'cache-control': 'no-store',
};

export interface ListenAddress {
  host: string;
  port: number;
}

/** `host:port`, `[v6]:port` or `:port` (loopback); port 0 picks a free one. */
export function parseListen(value: string, flag = 'http'): ListenAddress {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(value);
  const port = Number(m?.[3]);
  if (!m || port > 65535) throw new UsageError(`--${flag} must be host:port such as 127.0.0.1:8600, got "${value}"`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

/** Whether `host` (a bind address) is loopback only. */
export function isLoopback(host: string): boolean {
  const h = host.toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h) || /^::ffff:127\./.test(h);
}

/** The host name of a Host header (no port, no brackets, lower case, no trailing dot); undefined when malformed. */
export function hostName(header: string): string | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:[\]/@\s]+))(?::\d{1,5})?$/.exec(header.trim());
  if (!m) return undefined;
  return (m[1] ?? m[2] ?? '').toLowerCase().replace(/\.$/, '');
}

/**
 * Whether a request's Host header may be answered: IP literals (a page can
 * only send one when it was itself loaded from that address), localhost, and
 * the names in `names`. A missing header (HTTP/1.0 tools) is answered: every
 * browser sends one.
 */
export function hostAllowed(header: string | undefined, names: ReadonlySet<string>): boolean {
  if (header === undefined) return true;
  const name = hostName(header);
  if (name === undefined) return false;
  return isIP(name) !== 0 || name === 'localhost' || names.has(name);
}

class BadRequest extends Error {}
/** A well-formed path naming something the store does not have. */
class NotFound extends Error {}

export interface DashboardOptions {
  store: FleetStore;
  listen: ListenAddress;
  log: Logger;
  /** Host names the dashboard is reached by besides IP addresses and localhost (a proxy's or DNS name). */
  publicNames?: readonly string[];
  /** The Prometheus text GET /metrics serves (fleet-metrics.ts); without it, /metrics is 404. */
  metrics?: () => Promise<string>;
  /** Serve /metrics alone (`edgefleet collect --metrics`): everything else is 404. */
  metricsOnly?: boolean;
}

export class DashboardServer {
  private server: Server | undefined;
  private readonly names: ReadonlySet<string>;

  constructor(private readonly options: DashboardOptions) {
    const bound = isIP(options.listen.host) === 0 ? [options.listen.host] : [];
    this.names = new Set([...bound, ...(options.publicNames ?? [])].map((n) => n.toLowerCase().replace(/\.$/, '')));
  }

  /** The address it listens on, e.g. http://127.0.0.1:8600. */
  get url(): string {
    const address = this.server?.address() as AddressInfo | null | undefined;
    if (!address) throw new Error('dashboard not started');
    const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
    return `http://${host}:${address.port}`;
  }

  async start(): Promise<void> {
    const server = createServer((req, res) => void this.route(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.options.listen.port, this.options.listen.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    const { log, listen } = this.options;
    if (this.options.metricsOnly) return log.info({ url: `${this.url}/metrics` }, 'metrics listening');
    log.info({ url: this.url, names: [...this.names] }, 'dashboard listening');
    if (!isLoopback(listen.host)) {
      log.warn(
        { url: this.url, host: listen.host },
        'THE DASHBOARD IS REACHABLE FROM THE NETWORK WITH NO AUTHENTICATION: anyone who can reach this address reads every device\'s ' +
          'state, errors and telemetry. Bind it to 127.0.0.1 (--http 127.0.0.1:PORT) and put an authenticating reverse proxy in front, ' +
          'giving the name it is reached by with --public-name',
      );
    }
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server === undefined) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://dashboard');
    try {
      if (!hostAllowed(req.headers.host, this.names)) {
        const known = ['IP addresses', 'localhost', ...[...this.names].map((n) => `"${n}"`)].join(', ');
        return send(res, 421, {
          error: `this dashboard does not answer to the host name in "Host: ${req.headers.host ?? ''}" (protection against DNS rebinding); ` +
            `it answers to ${known}. If that is the name operators use, start the collector with --public-name NAME`,
        });
      }
      if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, { error: 'only GET' }, { allow: 'GET, HEAD' });
      const metrics = this.options.metrics;
      if (url.pathname === '/metrics' && metrics !== undefined) {
        const text = await metrics();
        res.writeHead(200, { 'content-type': METRICS_CONTENT_TYPE, 'cache-control': 'no-store' });
        res.end(req.method === 'HEAD' ? undefined : text);
        return;
      }
      if (this.options.metricsOnly) return send(res, 404, { error: `this listener serves only /metrics, not ${url.pathname}` });
      if (url.pathname === '/' || url.pathname === '/index.html') {
        res.writeHead(200, PAGE_HEADERS);
        res.end(req.method === 'HEAD' ? undefined : DASHBOARD_HTML);
        return;
      }
      const body = await this.api(url);
      if (body === undefined) return send(res, 404, { error: `no such resource: ${url.pathname}` });
      send(res, 200, body);
    } catch (err) {
      if (err instanceof BadRequest || err instanceof FleetQueryError || err instanceof RolloutQueryError) return send(res, 400, { error: err.message });
      if (err instanceof NotFound) return send(res, 404, { error: err.message });
      this.options.log.error({ err: errorMessage(err), path: url.pathname }, 'dashboard request failed');
      send(res, 500, { error: 'the store could not answer; see the collector log' });
    }
  }

  /** The JSON for an /api path, or undefined when there is none. */
  private async api(url: URL): Promise<unknown> {
    const { store } = this.options;
    const q = url.searchParams;
    if (url.pathname === '/api/devices') return this.fleetPage(parseFleetQuery(q));
    if (url.pathname === '/api/rollouts') return this.rollouts(q);
    if (url.pathname === '/api/alerts') {
      if ([...q.keys()].length > 0) throw new BadRequest(`/api/alerts takes no parameters, got "${[...q.keys()].join('", "')}"`);
      return readAlerts(store);
    }
    if (url.pathname.startsWith('/api/rollouts/')) return this.rollout(url.pathname.slice('/api/rollouts/'.length), q);
    const m = /^\/api\/devices\/([^/]+)\/(series|events)$/.exec(url.pathname);
    // Device ids need no percent-encoding (docs/protocol.md section 1), so the path segment is the id.
    const device = m?.[1];
    if (device === undefined || !DEVICE_ID_RE.test(device)) return undefined;
    const range = rangeParams(q);
    return m?.[2] === 'series' ? store.series(device, range) : store.events(device, range);
  }

  /** One page of the fleet table: one indexed query in the store, only the page's rows assembled. */
  private async fleetPage(q: FleetQuery): Promise<FleetPage> {
    const { offset, limit, sort, desc, ...filters } = q;
    const page = await this.options.store.fleetPage({ offset, limit, sort, desc, ...filters });
    return { total: page.total, online: page.online, offset, limit, sort, desc, rows: page.rows };
  }

  private async rollouts(q: URLSearchParams): Promise<{ rollouts: RolloutListItem[] }> {
    const { limit, active } = parseRolloutQuery(q);
    return { rollouts: (await this.options.store.rollouts.list({ limit, active })).map(rolloutListItem) };
  }

  /** One rollout with its wave devices' states: status and reported state of the plan's devices only, no telemetry. */
  private async rollout(id: string, q: URLSearchParams): Promise<RolloutDetail> {
    // Rollout ids need no percent-encoding either, so anything else is not one.
    if (!ROLLOUT_ID_RE.test(id)) throw new BadRequest(`"${id.slice(0, 80)}" is not a rollout id (1-64 of letters, digits, '_', '.', '-')`);
    if ([...q.keys()].length > 0) throw new BadRequest(`/api/rollouts/{id} takes no parameters, got "${[...q.keys()].join('", "')}"`);
    const { store } = this.options;
    const r = await store.rollouts.load(id);
    if (r === undefined) throw new NotFound(`no rollout "${id}"`);
    const [rows, serials] = await Promise.all([store.deviceStates(r.waves.flatMap((w) => w.devices)), store.rollouts.deviceSerials(id)]);
    return rolloutDetail(r, rows, serials);
  }
}

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
}

function timeParam(q: URLSearchParams, name: string): number | undefined {
  const value = q.get(name);
  if (value === null || value === '') return undefined;
  const ms = /^\d+$/.test(value) ? Number(value) : parseTime(value);
  if (ms === undefined || !Number.isSafeInteger(ms)) throw new BadRequest(`${name} must be an RFC 3339 UTC time or epoch milliseconds`);
  return ms;
}

function rangeParams(q: URLSearchParams): TimeRange {
  const to = timeParam(q, 'to') ?? Date.now();
  const from = timeParam(q, 'from') ?? to - DEFAULT_WINDOW_MS;
  if (from > to) throw new BadRequest('from is after to');
  const limitText = q.get('limit');
  const limit = limitText === null ? undefined : Number(limitText);
  if (limit !== undefined && (!Number.isSafeInteger(limit) || limit < 1 || limit > MAX_LIMIT)) {
    throw new BadRequest(`limit must be an integer from 1 to ${MAX_LIMIT}`);
  }
  return { from, to, ...(limit !== undefined && { limit }) };
}
