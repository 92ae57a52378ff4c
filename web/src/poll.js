import { html } from 'htm/preact';
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import { Unauthorized } from './api.js';

// usePoll runs load(signal) now, whenever deps change, on refresh(), and
// every interval milliseconds while the tab is visible. A newer run aborts
// an older one, so an answer never overwrites a fresher one.
export function usePoll(load, deps, interval) {
  const [state, setState] = useState({ data: null, error: null, updatedAt: null, loading: true });
  const current = useRef(null);
  const run = useCallback(async () => {
    current.current?.abort();
    const ctl = new AbortController();
    current.current = ctl;
    setState((s) => ({ ...s, loading: true }));
    try {
      const data = await load(ctl.signal);
      if (!ctl.signal.aborted) setState({ data, error: null, updatedAt: new Date(), loading: false });
    } catch (err) {
      if (ctl.signal.aborted || err instanceof Unauthorized) return;
      setState((s) => ({ ...s, error: err, loading: false }));
    }
  }, deps);

  useEffect(() => {
    run();
    if (!interval) return () => current.current?.abort();
    const t = setInterval(() => {
      if (document.visibilityState === 'visible') run();
    }, interval);
    return () => {
      clearInterval(t);
      current.current?.abort();
    };
  }, [run, interval]);

  return { ...state, refresh: run };
}

// Status shows when the data were last fetched, a refresh button and the
// last error, if any.
export function Status({ poll }) {
  const t = poll.updatedAt;
  return html`<div class="status">
    ${poll.error && html`<span class="error" role="alert">${String(poll.error.message || poll.error)}</span>`}
    <span class="updated" data-testid="updated" data-updated=${t ? t.getTime() : ''}>
      ${t ? `Updated ${t.toLocaleTimeString()}` : poll.loading ? 'Loading…' : ''}
    </span>
    <button class="ghost" data-testid="refresh" onClick=${() => poll.refresh()}>Refresh</button>
  </div>`;
}
