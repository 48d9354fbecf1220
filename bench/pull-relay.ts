import { connect, createServer, type Socket } from 'node:net';

/**
 * A TCP relay in front of the broker for the pull benchmark: it counts the
 * bytes that cross it in each direction (what the device's link would carry,
 * MQTT framing and bytes lost in a cut included) and cut() drops every
 * connection through it at once, like a network outage. The client's
 * reconnect goes through the relay again.
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

export async function startCountingRelay(targetPort: number): Promise<CountingRelay> {
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
    down.on('data', (chunk: Buffer) => {
      upBytes += chunk.length;
      if (!up.write(chunk)) {
        down.pause();
        up.once('drain', () => down.resume());
      }
    });
    up.on('data', (chunk: Buffer) => {
      downBytes += chunk.length;
      if (!down.write(chunk)) {
        up.pause();
        down.once('drain', () => up.resume());
      }
    });
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
