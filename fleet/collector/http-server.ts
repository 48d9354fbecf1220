/**
 * The collector's dashboard: one self-contained page (no CDN, no chart
 * library) and the JSON it reads. Read-only and unauthenticated, so it binds
 * to loopback unless told otherwise.
 *
 *   GET /                                   the dashboard
 *   GET /api/devices?group=&model=          the fleet table (FleetRow[])
 *   GET /api/devices/{id}/series?from=&to=  latency and health samples
 *   GET /api/devices/{id}/events?from=&to=  events, oldest first
 *
 * from and to are RFC 3339 UTC times or epoch milliseconds; the default is the last hour.
 */
import { createServer } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { DEVICE_ID_RE, GROUP_RE, MODEL_NAME_RE, parseTime } from '../../protocol/index.js';
import { UsageError, errorMessage } from '../errors.js';
import { DASHBOARD_HTML } from './dashboard-page.js';
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

class BadRequest extends Error {}

export class DashboardServer {
  private server: Server | undefined;

  constructor(private readonly options: { store: FleetStore; listen: ListenAddress; log: Logger }) {}

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
    this.options.log.info({ url: this.url }, 'dashboard listening');
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
      if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, { error: 'only GET' }, { allow: 'GET, HEAD' });
      if (url.pathname === '/' || url.pathname === '/index.html') {
        res.writeHead(200, PAGE_HEADERS);
        res.end(req.method === 'HEAD' ? undefined : DASHBOARD_HTML);
        return;
      }
      const body = await this.api(url);
      if (body === undefined) return send(res, 404, { error: `no such resource: ${url.pathname}` });
      send(res, 200, body);
    } catch (err) {
      if (err instanceof BadRequest) return send(res, 400, { error: err.message });
      this.options.log.error({ err: errorMessage(err), path: url.pathname }, 'dashboard request failed');
      send(res, 500, { error: 'the store could not answer; see the collector log' });
    }
  }

  /** The JSON for an /api path, or undefined when there is none. */
  private async api(url: URL): Promise<unknown> {
    const { store } = this.options;
    const q = url.searchParams;
    if (url.pathname === '/api/devices') {
      const group = nameParam(q, 'group', GROUP_RE);
      const model = nameParam(q, 'model', MODEL_NAME_RE);
      return store.fleetStatus({ ...(group !== undefined && { group }), ...(model !== undefined && { model }) });
    }
    const m = /^\/api\/devices\/([^/]+)\/(series|events)$/.exec(url.pathname);
    // Device ids need no percent-encoding (docs/protocol.md section 1), so the path segment is the id.
    const device = m?.[1];
    if (device === undefined || !DEVICE_ID_RE.test(device)) return undefined;
    const range = rangeParams(q);
    return m?.[2] === 'series' ? store.series(device, range) : store.events(device, range);
  }
}

function send(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
  res.end(JSON.stringify(body));
}

function nameParam(q: URLSearchParams, name: string, re: RegExp): string | undefined {
  const value = q.get(name);
  if (value === null || value === '') return undefined;
  if (!re.test(value)) throw new BadRequest(`${name} "${value}" is not a valid name`);
  return value;
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
