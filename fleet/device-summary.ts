/**
 * What the fleet side knows of one device from its retained status and
 * reported state (docs/protocol.md section 7): the columns `edgefleet devices`
 * reads off the broker and the collector keeps in its store.
 */
import type { ReportedState, ReportedTrust } from '../protocol/index.js';

export interface DeviceSummary {
  device: string;
  /** null when no status has been received. */
  online: boolean | null;
  groups: string[];
  desired: ReportedState['desired'];
  models: ReportedState['models'];
  agent: { version: string; arch: string } | null;
  /** The trust version in force and its last problem; null from devices that do not report it (revision 1). */
  trust: ReportedTrust | null;
}

/** A device heard of, before its status or state is applied. */
export function emptySummary(device: string): DeviceSummary {
  return { device, online: null, groups: [], desired: null, models: [], agent: null, trust: null };
}

/** Takes the reported state's columns into the summary. */
export function applyReportedState(row: DeviceSummary, state: ReportedState): void {
  row.groups = state.groups;
  row.desired = state.desired;
  row.models = state.models;
  row.agent = { version: state.agent.version, arch: state.agent.arch };
  row.trust = state.trust ?? null;
}

/** Orders rows by device id (code units, as the tables print them). */
export function byDevice(a: { device: string }, b: { device: string }): number {
  return a.device < b.device ? -1 : a.device > b.device ? 1 : 0;
}
