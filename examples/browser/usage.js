// Usage events from a browser: OTLP/HTTP JSON sent with plain `fetch` to the usage collector's
// /v1/logs (no SDK, no bundler). The collector's endpoint and the service name come from this
// page's query string (`?endpoint=http://localhost:4318&service=web-ide`); the session id is
// kept in sessionStorage, or taken from `&session=`.
//
// The request is a cross-origin POST with `Content-Type: application/json`, so the browser first
// asks the collector (CORS preflight); the collector answers only for the origins listed in its
// `--http-cors-origins`.

'use strict';

const query = new URLSearchParams(location.search);
const endpoint = (query.get('endpoint') || 'http://localhost:4318').replace(/\/+$/, '');
const service = query.get('service') || 'web-ide-browser';

function sessionId() {
  const given = query.get('session');
  if (given) return given;
  let id = sessionStorage.getItem('usage.session.id');
  if (!id) {
    id = crypto.randomUUID();
    sessionStorage.setItem('usage.session.id', id);
  }
  return id;
}

/** An OTLP attribute with a string value (the JSON mapping's `stringValue`). */
function attribute(key, value) {
  return { key, value: { stringValue: String(value) } };
}

/**
 * Sends one usage event; resolves with the collector's answer, rejects when the request was
 * refused or could not be sent (the browser reports a CORS refusal as a network error).
 */
async function sendEvent(eventName, attributes) {
  const eventId = crypto.randomUUID(); // the collector writes a retried event once
  const record = {
    // Nanoseconds since the epoch, as a string (64-bit integers are strings in OTLP JSON).
    timeUnixNano: (BigInt(Date.now()) * 1000000n).toString(),
    eventName,
    attributes: [attribute('event.id', eventId), ...attributes],
  };
  const request = {
    resourceLogs: [{
      resource: { attributes: [attribute('service.name', service)] },
      scopeLogs: [{ scope: { name: 'usage-browser' }, logRecords: [record] }],
    }],
  };
  const response = await fetch(`${endpoint}/v1/logs`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(request),
  });
  const answer = await response.text();
  if (!response.ok) {
    throw new Error(`HTTP ${response.status}: ${answer}`);
  }
  return { eventId, answer };
}

/** Records a visit of this page. */
function pageVisit() {
  const attributes = [
    attribute('session.id', sessionId()),
    attribute('url.path', location.pathname),
    attribute('user_agent.original', navigator.userAgent),
  ];
  if (document.referrer) {
    attributes.push(attribute('http.request.header.referer', document.referrer));
  }
  return sendEvent('page_visit', attributes);
}

const status = document.getElementById('status');
pageVisit().then(
  ({ eventId, answer }) => {
    status.dataset.state = 'delivered';
    status.dataset.eventId = eventId;
    status.textContent = `delivered (event ${eventId}): ${answer}`;
  },
  (error) => {
    status.dataset.state = 'failed';
    status.textContent = `not delivered: ${error}`;
  },
);
