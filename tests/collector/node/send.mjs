// Sends one mixed batch through the real @segment/analytics-node SDK to a collector.
// Usage: node send.mjs <collector-url> <write-key> <oversize-bytes>
// Prints one JSON line: {errors, requests, responses} as the SDK reported them, so the
// Python test (tests/collector/test_segment_node.py) can tell a dropped batch from a sent one.
import { Analytics } from '@segment/analytics-node'

const [url, writeKey, oversizeArg] = process.argv.slice(2)
if (!url || !writeKey || !oversizeArg) {
  console.error('usage: node send.mjs <collector-url> <write-key> <oversize-bytes>')
  process.exit(2)
}
const oversize = Number(oversizeArg)
const userId = 'lin@acme.example'

const calls = 5 // flushAt equals the number of calls: they all go in one /v1/batch request
const analytics = new Analytics({
  writeKey,
  host: url,
  flushAt: calls,
  // A failed request is reported at once instead of retried with backoff for minutes.
  maxRetries: 0,
  httpRequestTimeout: 20000,
})

const errors = []
const requests = []
const responses = []
analytics.on('error', (err) => {
  errors.push({ code: err.code, reason: String(err.reason?.message ?? err.reason) })
})
analytics.on('http_request', (req) => {
  requests.push({ url: req.url, body: JSON.parse(req.body) })
})
analytics.on('http_response', (res) => {
  responses.push({ status: res.status, statusText: res.statusText })
})

analytics.identify({ userId, traits: { email: userId, title: 'Head of Sales' } })
analytics.page({ userId, name: 'Pricing', properties: { url: 'https://acme.example/pricing' } })
analytics.screen({ userId, name: 'Dashboard', properties: { variant: 'b' } })
// Valid for the SDK (under its own 32 KB per-event limit), too big for the collector's
// lowered limit: the collector must dead-letter it and keep its neighbours. (3.1.0's size
// check miscounts, `split(/%..|i/)`, and lets far bigger events through; a fixed one
// would still send this.)
analytics.track({ userId, event: 'Form Submitted', properties: { blob: 'x'.repeat(oversize) } })
analytics.track({ userId, event: 'Demo Requested', properties: { plan: 'enterprise' } })

await analytics.closeAndFlush({ timeout: 30000 })
console.log(JSON.stringify({ errors, requests, responses }))
