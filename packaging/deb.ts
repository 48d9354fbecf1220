/**
 * The Debian package: the release tree under /opt/edgefleet, the two commands in
 * /usr/bin, and maintainer scripts that restart a provisioned agent once after an
 * upgrade. Configuration, keys and state are not in it (provision.sh makes them), so
 * dpkg never touches them, on upgrade or removal.
 */
import { chmodSync, cpSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sh, treeBytes, type Arch } from './parts.js';

/** Debian calls x64 amd64. */
export const DEBIAN_ARCH: Record<Arch, string> = { arm64: 'arm64', x64: 'amd64' };

const POSTINST = `#!/bin/sh
# An upgrade replaces /opt/edgefleet under a running agent: restart it once, if this
# board is provisioned (provision.sh installed the unit) and it runs.
set -e
if [ "$1" = configure ]; then
  if [ -f /etc/systemd/system/edgefleet-agent.service ]; then
    if [ -d /run/systemd/system ]; then
      systemctl try-restart edgefleet-agent.service || true
    fi
  else
    echo "edgefleet-agent: ready this board with: sudo /opt/edgefleet/provisioning/provision.sh --device-id ID ... (docs/device-guide.md)"
  fi
fi
`;

const PRERM = `#!/bin/sh
# Removal (not an upgrade) stops the agent; its config, keys and state stay.
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop edgefleet-agent.service 2>/dev/null || true
fi
`;

export function writeDeb(tree: string, version: string, arch: Arch, outDir: string, log: (line: string) => void): string {
  const work = mkdtempSync(join(tmpdir(), 'edgefleet-deb-'));
  try {
    const opt = join(work, 'opt', 'edgefleet');
    mkdirSync(join(work, 'opt'), { recursive: true });
    cpSync(tree, opt, { recursive: true });
    mkdirSync(join(work, 'usr', 'bin'), { recursive: true });
    for (const name of ['edgefleet-agent', 'edgefleet']) symlinkSync(`/opt/edgefleet/bin/${name}`, join(work, 'usr', 'bin', name));
    mkdirSync(join(work, 'DEBIAN'));
    const control = [
      'Package: edgefleet-agent',
      `Version: ${version}`,
      `Architecture: ${DEBIAN_ARCH[arch]}`,
      'Maintainer: edgefleet <edgefleet@localhost>',
      `Installed-Size: ${Math.ceil(treeBytes(opt) / 1024)}`,
      // Node.js, onnxruntime and better-sqlite3 are inside; libc and libstdc++ are the board's.
      // better-sqlite3, compiled on Debian 12, needs GLIBC_2.34 and GLIBCXX_3.4.29 (GCC 11).
      'Depends: libc6 (>= 2.34), libstdc++6 (>= 11), openssl',
      'Recommends: systemd (>= 246)',
      'Section: net',
      'Priority: optional',
      'Description: edgefleet agent: serves ONNX models and pulls signed rollouts over MQTT',
      ' Carries its own Node.js runtime. After installing, ready the board with',
      ' /opt/edgefleet/provisioning/provision.sh (see /opt/edgefleet/docs/device-guide.md).',
    ];
    writeFileSync(join(work, 'DEBIAN', 'control'), `${control.join('\n')}\n`);
    for (const [name, text] of [['postinst', POSTINST], ['prerm', PRERM]] as const) {
      writeFileSync(join(work, 'DEBIAN', name), text);
      chmodSync(join(work, 'DEBIAN', name), 0o755);
    }
    const deb = join(outDir, `edgefleet-agent_${version}_${DEBIAN_ARCH[arch]}.deb`);
    log(`writing ${deb}`);
    // xz: the smallest download for a board; gzip would build faster and weigh about a third more.
    sh('dpkg-deb', ['--root-owner-group', '-Zxz', '--build', work, deb], { env: { ...process.env, SOURCE_DATE_EPOCH: '0' } });
    return deb;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
