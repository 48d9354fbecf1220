/**
 * The `edgefleet` CLI as installed (compiled JavaScript, not tsx), for timing
 * `edgefleet status` in bench/fleet-scale.ts: `node bench/edgefleet-cli-child.js status --db URL`.
 */
import '../fleet/bin.js';
