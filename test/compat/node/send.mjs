// send.mjs sends Segment calls to fanout with the official
// @segment/analytics-node library, pointed at fanout the way a user would:
// by its host option. test/compat runs it; it needs `npm ci` in this folder.
//
// Environment:
//   FANOUT_HOST  fanout's tracking API, such as http://127.0.0.1:8080
//   WRITE_KEY    the source's write key
//   EVENTS       a JSON array of {"type": "track", "params": {...}}, where
//                type is a call (identify, track, page, screen, group,
//                alias) and params is its argument, as the library takes it
//
// It prints one JSON line, {"sent": N, "succeeded": N, "errors": [...]},
// and exits 1 unless the library reports every call delivered.
import { Analytics } from '@segment/analytics-node'

const calls = ['identify', 'track', 'page', 'screen', 'group', 'alias']

function env(name) {
  const v = process.env[name]
  if (!v) {
    console.error(`send.mjs: ${name} is not set`)
    process.exit(2)
  }
  return v
}

const host = env('FANOUT_HOST')
const writeKey = env('WRITE_KEY')
const events = JSON.parse(env('EVENTS'))

const analytics = new Analytics({
  writeKey,
  host,
  path: '/v1/batch',
  // One batch for the whole scenario, sent by closeAndFlush below rather
  // than by a timer.
  maxEventsInBatch: Math.max(1, events.length),
  flushInterval: 60_000,
  httpRequestTimeout: 10_000,
  maxRetries: 2,
})

const errors = []
let succeeded = 0
analytics.on('error', (err) => {
  errors.push(`${err.code}: ${err.reason}`)
})

for (const { type, params } of events) {
  if (!calls.includes(type)) {
    console.error(`send.mjs: unknown call type ${JSON.stringify(type)}`)
    process.exit(2)
  }
  analytics[type](params, (err) => {
    if (err) {
      errors.push(`${type} ${params.messageId}: ${err}`)
    } else {
      succeeded++
    }
  })
}

await analytics.closeAndFlush({ timeout: 30_000 })
console.log(JSON.stringify({ sent: events.length, succeeded, errors }))
if (errors.length > 0 || succeeded !== events.length) {
  process.exit(1)
}
