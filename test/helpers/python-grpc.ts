/**
 * Python gRPC clients for tests: Debian's python3-grpcio, python3-grpc-tools and
 * python3-numpy, with stubs generated at test time from the repository's .proto
 * files (agent/grpc/proto) into a temp dir, as a user of the API would generate them.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { readdirSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import { REPO } from './child.js';

const run = promisify(execFile);
export const PROTO_DIR = join(REPO, 'agent', 'grpc', 'proto');
const CLIENT = join(REPO, 'test', 'grpc', 'tutorial_client.py');
const MODULES = 'import grpc, grpc_tools.protoc, numpy';

/** The first Python with grpc, grpc_tools and numpy: $PYTHON_GRPC, Debian's /usr/bin/python3, then python3 on PATH. */
export function pythonGrpc(): string | undefined {
  for (const py of [process.env.PYTHON_GRPC, '/usr/bin/python3', 'python3']) {
    if (!py) continue;
    try {
      execFileSync(py, ['-c', MODULES], { stdio: 'ignore', timeout: 20_000 });
      return py;
    } catch {
      // not this one
    }
  }
  return undefined;
}

/** Like postgresSkipReason: skipped with a message outside CI, a failure in CI. */
export function pythonGrpcSkipReason(): string | false {
  if (pythonGrpc() !== undefined) return false;
  const why = 'no python3 with grpc, grpc_tools and numpy; install them (apt-get install -y python3-grpcio python3-grpc-tools python3-numpy)';
  if (process.env.CI) throw new Error(`${why}; CI is set, so the gRPC client tests must run`);
  return why;
}

function protoFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return protoFiles(path);
    return name.endsWith('.proto') ? [relative(PROTO_DIR, path)] : [];
  });
}

export interface PythonClient {
  /** Runs the tutorial client's scenario once per args object; one result each, `{ok}` or `{code, details}`. */
  call<T = any>(target: string, scenario: string, calls: object[]): Promise<({ ok: T; code?: undefined; details?: undefined } | { ok?: undefined; code: string; details: string })[]>;
  /** Runs another script of test/grpc/ with the same stubs: `python3 <script> <target> '<args JSON>'`; its JSON output. */
  script<T = any>(name: string, target: string, args: object): Promise<T>;
  close(): Promise<void>;
}

/** Generates the stubs with `python -m grpc_tools.protoc` and returns a client that uses them. */
export async function pythonClient(python: string): Promise<PythonClient> {
  const stubs = await mkdtemp(join(tmpdir(), 'edgefleet-pystubs-'));
  await run(python, ['-m', 'grpc_tools.protoc', '-I', PROTO_DIR, `--python_out=${stubs}`, `--grpc_python_out=${stubs}`, ...protoFiles(PROTO_DIR)]);
  const runJson = async (argv: string[]): Promise<any> => {
    const { stdout } = await run(python, argv, {
      env: { ...process.env, PYTHONPATH: stubs, PYTHONDONTWRITEBYTECODE: '1' },
      timeout: 60_000,
      maxBuffer: 64 * 1024 * 1024,
    });
    return JSON.parse(stdout);
  };
  return {
    call: (target, scenario, calls) => runJson([CLIENT, target, scenario, JSON.stringify(calls)]),
    script: (name, target, args) => runJson([join(REPO, 'test', 'grpc', name), target, JSON.stringify(args)]),
    close: () => rm(stubs, { recursive: true, force: true }),
  };
}
