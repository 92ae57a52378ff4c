// fanout's web UI: a few pages over the admin API, chosen by the URL's
// hash so that the server serves one file and a reload keeps the page.
import { html, render } from 'htm/preact';
import { useEffect, useState } from 'preact/hooks';
import { get, onUnauthorized, setToken, token, Unauthorized } from './api.js';
import { useRoute } from './router.js';
import { Overview } from './overview.js';
import { Debugger } from './debugger.js';
import { Destinations } from './destinations.js';
import { Cluster } from './cluster.js';
import { StorageBanner, useStorage } from './storage.js';
import './style.css';

const pages = [
  { path: 'overview', title: 'Overview', component: Overview },
  { path: 'debugger', title: 'Debugger', component: Debugger },
  { path: 'destinations', title: 'Destinations', component: Destinations },
  { path: 'cluster', title: 'Cluster', component: Cluster },
];

function Login({ onDone }) {
  const [value, setValue] = useState('');
  const [error, setError] = useState('');
  const [busy, setBusy] = useState(false);
  async function submit(e) {
    e.preventDefault();
    setBusy(true);
    setError('');
    setToken(value.trim());
    try {
      await get('/sources');
      onDone();
    } catch (err) {
      setToken('');
      setError(err instanceof Unauthorized ? 'The admin API refused this token.' : String(err.message || err));
    } finally {
      setBusy(false);
    }
  }
  return html`<main class="login">
    <form onSubmit=${submit} data-testid="login">
      <h1>fanout</h1>
      <p>This fanout has an admin token. Enter it to see the delivery overview, the debugger and the destinations.</p>
      <label>Admin token
        <input type="password" name="token" autocomplete="current-password" required autofocus
          value=${value} onInput=${(e) => setValue(e.target.value)} />
      </label>
      ${error && html`<p class="error" role="alert">${error}</p>`}
      <button type="submit" class="primary" disabled=${busy}>Sign in</button>
      <p class="hint">The token is kept in this tab's session storage and sent as <code>Authorization: Bearer</code>.</p>
    </form>
  </main>`;
}

function App() {
  const { path, params } = useRoute();
  const page = pages.find((p) => p.path === path) || pages[0];
  const [locked, setLocked] = useState(false);
  // Bumped after a sign-in, so that the page fetches again.
  const [session, setSession] = useState(0);
  useEffect(() => onUnauthorized(() => setLocked(true)), []);
  // Polled here so that every page warns when ingest refuses events.
  const storage = useStorage(session, locked);

  if (locked) {
    return html`<${Login} onDone=${() => { setLocked(false); setSession((n) => n + 1); }} />`;
  }
  const Page = page.component;
  return html`<div class="shell">
    <header class="top">
      <a class="brand" href="#/overview">fanout</a>
      <nav>
        ${pages.map((p) => html`<a href=${'#/' + p.path} class=${p === page ? 'active' : ''}
          aria-current=${p === page ? 'page' : undefined}>${p.title}</a>`)}
      </nav>
      ${token() && html`<button class="link" onClick=${() => { setToken(''); setLocked(true); }}>Sign out</button>`}
    </header>
    <${StorageBanner} s=${storage.data} />
    <${Page} key=${page.path + session} params=${params} storage=${storage.data} />
  </div>`;
}

render(html`<${App} />`, document.getElementById('app'));
