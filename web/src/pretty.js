// call reconstructs the analytics.js call that would have sent a stored
// event, the debugger's Pretty view: analytics.track("Order Completed",
// {...}). Fields the call does not take (context, timestamps, ids) are left
// to the Raw view.

const js = (v) => JSON.stringify(v, null, 2);

function args(...xs) {
  // Trailing empty objects are dropped, as a person would write the call.
  while (xs.length && isEmpty(xs[xs.length - 1])) xs.pop();
  return xs.map((x) => (x === undefined ? 'undefined' : js(x))).join(', ');
}

function isEmpty(x) {
  return x === undefined || x === null || (typeof x === 'object' && !Array.isArray(x) && Object.keys(x).length === 0);
}

export function call(e) {
  switch (e.type) {
    case 'track':
      return `analytics.track(${args(e.event ?? '', e.properties)})`;
    case 'identify':
      return e.userId != null ? `analytics.identify(${args(e.userId, e.traits)})` : `analytics.identify(${args(e.traits ?? {})})`;
    case 'page':
      return `analytics.page(${args(...pageArgs(e))})`;
    case 'screen':
      return `analytics.screen(${args(...pageArgs(e))})`;
    case 'group':
      return `analytics.group(${args(e.groupId ?? '', e.traits)})`;
    case 'alias':
      return `analytics.alias(${args(e.userId ?? '', e.previousId ?? '')})`;
    default:
      return `// unknown call type ${js(e.type)}\n${js(e)}`;
  }
}

function pageArgs(e) {
  const name = e.name ?? e.properties?.name;
  if (e.category != null) return [e.category, name ?? '', e.properties];
  if (name != null) return [name, e.properties];
  return [e.properties ?? {}];
}

// who names the user of an event: userId, else anonymousId.
export function who(e) {
  if (e.userId != null && e.userId !== '') return { label: 'userId', value: e.userId };
  if (e.anonymousId != null && e.anonymousId !== '') return { label: 'anonymousId', value: e.anonymousId };
  return null;
}

// title is what the debugger's list shows for an event.
export function title(e) {
  switch (e.type) {
    case 'track':
      return e.event || '(no event name)';
    case 'page':
    case 'screen':
      return e.name || e.properties?.name || e.properties?.path || `(${e.type})`;
    case 'identify':
      return e.traits?.email || e.traits?.name || e.userId || e.anonymousId || '(anonymous)';
    case 'group':
      return e.traits?.name || e.groupId || '(group)';
    case 'alias':
      return `${e.previousId} → ${e.userId}`;
    default:
      return e.type;
  }
}
