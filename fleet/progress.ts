/**
 * Upload progress on stderr: a bar redrawn in place on a terminal, plain
 * lines every 10% otherwise, so CI logs stay readable.
 */
export interface Progress {
  update(done: number): void;
  finish(): void;
}

export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean;
  columns?: number;
}

const BAR_WIDTH = 30;

function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

export function createProgress(stream: ProgressStream, label: string, total: number, bytesOf: (done: number) => number): Progress {
  const tty = stream.isTTY === true;
  let lastDecile = -1;
  let lastDrawn = -1;
  const line = (done: number): string =>
    `${label} ${done}/${total} blocks (${mib(bytesOf(done))} of ${mib(bytesOf(total))})`;
  return {
    update(done) {
      if (tty) {
        if (done === lastDrawn) return;
        lastDrawn = done;
        const filled = total === 0 ? BAR_WIDTH : Math.round((done / total) * BAR_WIDTH);
        stream.write(`\r[${'#'.repeat(filled)}${' '.repeat(BAR_WIDTH - filled)}] ${line(done)}`);
        return;
      }
      const decile = total === 0 ? 10 : Math.floor((done / total) * 10);
      if (decile === lastDecile) return;
      lastDecile = decile;
      stream.write(`${line(done)}\n`);
    },
    finish() {
      if (tty && lastDrawn >= 0) stream.write('\n');
    },
  };
}
