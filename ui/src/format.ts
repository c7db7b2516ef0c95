// Human formatting of profile values by unit, of percentages and of times.

const BINARY = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

function trim(value: number, digits: number): string {
  const text = value.toFixed(digits);
  return text.includes('.') ? text.replace(/\.?0+$/, '') : text;
}

/** Formats a sample value in its unit: nanoseconds as s/ms/µs, bytes in binary multiples, counts with k/M. */
export function formatValue(value: number, unit: string): string {
  const magnitude = Math.abs(value);
  switch (unit) {
    case 'nanoseconds': {
      if (magnitude >= 3.6e12) return `${trim(value / 3.6e12, 2)} h`;
      if (magnitude >= 6e10) return `${trim(value / 6e10, 2)} min`;
      if (magnitude >= 1e9) return `${trim(value / 1e9, 2)} s`;
      if (magnitude >= 1e6) return `${trim(value / 1e6, 2)} ms`;
      if (magnitude >= 1e3) return `${trim(value / 1e3, 2)} µs`;
      return `${trim(value, 0)} ns`;
    }
    case 'bytes': {
      let scaled = value;
      let index = 0;
      while (Math.abs(scaled) >= 1024 && index < BINARY.length - 1) {
        scaled /= 1024;
        index += 1;
      }
      return `${trim(scaled, index === 0 ? 0 : 2)} ${BINARY[index]}`;
    }
    default: {
      if (magnitude >= 1e9) return `${trim(value / 1e9, 2)}G`;
      if (magnitude >= 1e6) return `${trim(value / 1e6, 2)}M`;
      if (magnitude >= 1e4) return `${trim(value / 1e3, 1)}k`;
      return trim(value, 2);
    }
  }
}

/** `part` as a percentage of `whole`, two decimals (like `go tool pprof`). */
export function percent(part: number, whole: number): string {
  if (!whole) return '0%';
  return `${((part / whole) * 100).toFixed(2)}%`;
}

/** A signed percentage change, e.g. `+12.5%`; `new` when there was nothing before. */
export function formatChange(change: number): string {
  if (change === Infinity) return 'new';
  if (change === -Infinity) return 'gone';
  const sign = change > 0 ? '+' : '';
  return `${sign}${(change * 100).toFixed(1)}%`;
}

/** Local date and time, `YYYY-MM-DD HH:MM:SS`. */
export function formatTime(ms: number): string {
  const date = new Date(ms);
  const pad = (value: number) => String(value).padStart(2, '0');
  return (
    `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ` +
    `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`
  );
}

/** A duration in seconds as `3d 4h`, `5m 2s`. */
export function formatDuration(seconds: number): string {
  const units: [string, number][] = [
    ['d', 86400],
    ['h', 3600],
    ['m', 60],
    ['s', 1],
  ];
  const parts: string[] = [];
  let rest = Math.floor(seconds);
  for (const [name, size] of units) {
    if (rest >= size || (name === 's' && parts.length === 0)) {
      parts.push(`${Math.floor(rest / size)}${name}`);
      rest %= size;
    }
    if (parts.length === 2) break;
  }
  return parts.join(' ');
}

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (char) => `&#${char.charCodeAt(0)};`);
}

/** What the status page shows for `/healthz`: healthy only on `ok`; otherwise the node's own words (a
 * node whose raft group stopped names it and says to restart the node), or why the check failed. */
export function describeHealth(result: PromiseSettledResult<string>): { healthy: boolean; detail: string } {
  if (result.status === 'rejected') {
    const reason = result.reason instanceof Error ? result.reason.message : String(result.reason);
    return { healthy: false, detail: `health check failed: ${reason}` };
  }
  const text = result.value.trim();
  if (text === 'ok') return { healthy: true, detail: '' };
  return { healthy: false, detail: text || 'the node answered its health check with nothing' };
}
