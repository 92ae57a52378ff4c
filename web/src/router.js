// The page's parameters live in the URL's hash (#/page?key=value), so
// that the server serves one file and a reload or a shared link keeps the
// page and its filters.
import { useEffect, useState } from 'preact/hooks';

export function route() {
  const [path, q] = location.hash.replace(/^#\/?/, '').split('?');
  return { path, params: Object.fromEntries(new URLSearchParams(q || '')) };
}

// setParams replaces the current page's parameters, without a history
// entry for every click on a filter.
export function setParams(params) {
  const { path } = route();
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v) q.set(k, v);
  const s = q.toString();
  history.replaceState(null, '', `#/${path || 'overview'}${s ? '?' + s : ''}`);
  window.dispatchEvent(new HashChangeEvent('hashchange'));
}

export function useRoute() {
  const [r, setR] = useState(route);
  useEffect(() => {
    const f = () => setR(route());
    window.addEventListener('hashchange', f);
    return () => window.removeEventListener('hashchange', f);
  }, []);
  return r;
}
