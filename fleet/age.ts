/** How long ago something happened, as a table cell: "12 s ago", "3 min ago", "5 h ago", "9 d ago". */
import { parseTime } from '../protocol/index.js';

/**
 * `ts` (RFC 3339) as an age at `now`; "-" without a time, the text itself when
 * it is not a time, and "N s ahead" for a device clock that runs ahead.
 */
export function formatAge(ts: string | null | undefined, now: number): string {
  if (ts === null || ts === undefined) return '-';
  const at = parseTime(ts);
  if (at === undefined) return ts;
  const s = Math.round((now - at) / 1000);
  if (s < 0) return `${ageText(-s)} ahead`;
  return `${ageText(s)} ago`;
}

function ageText(s: number): string {
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 48 * 3600) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86_400)} d`;
}
