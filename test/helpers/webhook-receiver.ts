/**
 * A webhook receiver for the alert tests: an HTTP server on a fixed port
 * that keeps every message POSTed to it and answers as the test says (a
 * status, or never). Stopped, the port refuses connections, as a receiver
 * that is down does; started again, it takes messages on the same URL.
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { WebhookMessage } from '../../fleet/alerts/notifier.js';
import { freePort } from './child.js';

export interface ReceivedMessage {
  headers: IncomingHttpHeaders;
  body: WebhookMessage;
  /** The status it was answered with; 'hang' when it was not answered. */
  answered: number | 'hang';
}

export interface WebhookReceiver {
  url: string;
  /** Every request, answered or not, in arrival order. */
  readonly requests: ReceivedMessage[];
  /** What the next requests get. */
  answer: number | 'hang';
  /** Messages answered 2xx: what the receiver took. */
  taken(): WebhookMessage[];
  /** Listens (again); idempotent. */
  up(): Promise<void>;
  /** Stops listening: connections are refused. */
  down(): Promise<void>;
}

export async function webhookReceiver(answer: number | 'hang' = 200): Promise<WebhookReceiver> {
  const port = await freePort();
  let server: Server | undefined;
  const receiver: WebhookReceiver = {
    url: `http://127.0.0.1:${port}/alerts`,
    requests: [],
    answer,
    taken: () => receiver.requests.filter((r) => typeof r.answered === 'number' && r.answered < 300).map((r) => r.body),
    async up() {
      if (server !== undefined) return;
      const s = createServer((req, res) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => {
          const answered = receiver.answer;
          receiver.requests.push({ headers: req.headers, body: JSON.parse(Buffer.concat(chunks).toString('utf8')) as WebhookMessage, answered });
          if (answered === 'hang') return;
          res.writeHead(answered).end();
        });
      });
      await new Promise<void>((resolve) => s.listen(port, '127.0.0.1', resolve));
      server = s;
    },
    async down() {
      const s = server;
      server = undefined;
      if (s === undefined) return;
      s.closeAllConnections();
      await new Promise<void>((resolve) => s.close(() => resolve()));
    },
  };
  await receiver.up();
  return receiver;
}
