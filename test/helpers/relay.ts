import { connect, createServer, type Socket } from 'node:net';

/**
 * A TCP relay in front of the broker, for the pull benchmark and the resume
 * tests: it counts the bytes that cross it in each direction (what the
 * device's link would carry, MQTT framing and bytes lost in a cut included),
 * can throttle what the broker sends (a slow link, so that a pull takes long
 * enough to be cut part way), and cut() drops every connection through it at
 * once, like a network outage. The client's reconnect goes through the relay
 * again.
 */
export interface CountingRelay {
  readonly url: string;
  /** Bytes the broker sent towards the client (MQTT packets, framing included). */
  readonly downBytes: number;
  readonly upBytes: number;
  /** Connections accepted so far (first connect plus reconnects). */
  readonly connections: number;
  /** Destroys every connection through the relay; new ones are still accepted. */
  cut(): void;
  close(): Promise<void>;
}

export interface RelayOptions {
  /** Throttle broker → client to about this rate; unlimited when absent. */
  downBytesPerSecond?: number;
}

export async function startCountingRelay(targetPort: number, options: RelayOptions = {}): Promise<CountingRelay> {
  const sockets = new Set<Socket>();
  let downBytes = 0;
  let upBytes = 0;
  let connections = 0;
  const server = createServer((down) => {
    connections++;
    const up = connect({ port: targetPort, host: '127.0.0.1' });
    down.setNoDelay(true);
    up.setNoDelay(true);
    sockets.add(down).add(up);
    const drop = (): void => {
      down.destroy();
      up.destroy();
      sockets.delete(down);
      sockets.delete(up);
    };
    for (const s of [down, up]) s.on('error', drop).on('close', drop);
    forward(down, up, (n) => (upBytes += n));
    forward(up, down, (n) => (downBytes += n), options.downBytesPerSecond);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address() as { port: number };
  const cut = (): void => {
    for (const s of sockets) s.destroy();
    sockets.clear();
  };
  return {
    url: `mqtt://127.0.0.1:${port}`,
    get downBytes() {
      return downBytes;
    },
    get upBytes() {
      return upBytes;
    },
    get connections() {
      return connections;
    },
    cut,
    async close() {
      cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Copies `from` to `to`, pausing `from` until `to` drains and, when throttled, until the chunk's time at that rate has passed. */
function forward(from: Socket, to: Socket, count: (bytes: number) => void, bytesPerSecond?: number): void {
  from.on('data', (chunk: Buffer) => {
    count(chunk.length);
    const drained = to.write(chunk);
    const delayMs = bytesPerSecond ? (chunk.length * 1000) / bytesPerSecond : 0;
    if (drained && delayMs === 0) return;
    from.pause();
    let waits = (drained ? 0 : 1) + (delayMs > 0 ? 1 : 0);
    const done = (): void => {
      if (--waits === 0) from.resume();
    };
    if (!drained) to.once('drain', done);
    if (delayMs > 0) setTimeout(done, delayMs);
  });
}
