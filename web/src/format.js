// Formatting shared by the pages.

const numberFormat = new Intl.NumberFormat('en-US');

export function count(n) {
  return numberFormat.format(n || 0);
}

// latency formats milliseconds the way a person reads them: 850 ms,
// 2.4 s, 3.5 min, 1.2 h. A count of zero means nothing was measured.
export function latency(ms, measured = true) {
  if (!measured) return '–';
  if (ms < 1) return '<1 ms';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  if (ms < 3_600_000) return `${(ms / 60_000).toFixed(1)} min`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

// duration formats a span in seconds compactly: 45s, 12m, 3h 20m, 2d 4h.
export function duration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60 ? (s % 60) + 's' : ''}`.trim();
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60 ? (m % 60) + 'm' : ''}`.trim();
  const d = Math.floor(h / 24);
  return `${d}d ${h % 24 ? (h % 24) + 'h' : ''}`.trim();
}

const relFormat = new Intl.RelativeTimeFormat('en', { numeric: 'auto' });

// ago formats a past time relative to now: "3 minutes ago".
export function ago(iso, now = Date.now()) {
  if (!iso) return '';
  const s = (new Date(iso).getTime() - now) / 1000;
  const abs = Math.abs(s);
  if (abs < 45) return relFormat.format(Math.round(s), 'second');
  if (abs < 2700) return relFormat.format(Math.round(s / 60), 'minute');
  if (abs < 64800) return relFormat.format(Math.round(s / 3600), 'hour');
  return relFormat.format(Math.round(s / 86400), 'day');
}

// until formats a future time: "in 58m 12s".
export function until(iso, now = Date.now()) {
  const s = (new Date(iso).getTime() - now) / 1000;
  return s <= 0 ? 'now' : 'in ' + duration(s);
}

export function timestamp(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${d.getFullYear()}/${p(d.getMonth() + 1)}/${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

// prettyJSON indents text when it is JSON and returns it unchanged when
// it is not (a body cut at the sample limit, an HTML error page).
export function prettyJSON(text) {
  if (typeof text !== 'string') return JSON.stringify(text, null, 2);
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text;
  }
}

// bytes formats a size: 512 B, 3.4 MB, 12 GB, 1.2 TB (powers of 1024).
export function bytes(n) {
  if (n == null || n < 0) return '–';
  const units = ['B', 'KB', 'MB', 'GB', 'TB', 'PB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 || n >= 100 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

// clock formats a time of day: 14:05:09 local, or 00:00 UTC with utc.
export function clock(iso, utc = false) {
  const d = new Date(iso);
  const p = (n) => String(n).padStart(2, '0');
  if (utc) return `${p(d.getUTCHours())}:${p(d.getUTCMinutes())} UTC`;
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}
