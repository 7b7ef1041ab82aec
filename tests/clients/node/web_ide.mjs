// Usage events from a Node.js app with the OpenTelemetry logs SDK (@opentelemetry/sdk-logs):
// one helper per usage event, each an OTLP log record the usage collector turns into a row.
//
// The exporter follows OTEL_EXPORTER_OTLP_PROTOCOL: `grpc` (exporter-logs-otlp-grpc),
// `http/json` (exporter-logs-otlp-http) or `http/protobuf` (exporter-logs-otlp-proto, the
// default). Each reads OTEL_EXPORTER_OTLP_ENDPOINT (http://collector:4317 for gRPC,
// http://collector:4318 for HTTP) and OTEL_EXPORTER_OTLP_HEADERS; OTEL_SERVICE_NAME names the
// service.
//
// Run by tests/tests/clients.rs, which plays one web IDE session: node web_ide.mjs SESSION_ID
// It exits 1 if any export failed.

import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';

import { diag, DiagConsoleLogger, DiagLogLevel } from '@opentelemetry/api';
import { ExportResultCode } from '@opentelemetry/core';
import { defaultResource, detectResources, envDetector } from '@opentelemetry/resources';
import { BatchLogRecordProcessor, LoggerProvider } from '@opentelemetry/sdk-logs';

const EXPORTERS = {
  grpc: '@opentelemetry/exporter-logs-otlp-grpc',
  'http/json': '@opentelemetry/exporter-logs-otlp-http',
  'http/protobuf': '@opentelemetry/exporter-logs-otlp-proto',
};
const protocol = process.env.OTEL_EXPORTER_OTLP_PROTOCOL ?? 'http/protobuf';
if (!(protocol in EXPORTERS)) {
  const known = Object.keys(EXPORTERS).join(', ');
  throw new Error(`OTEL_EXPORTER_OTLP_PROTOCOL=${protocol}: expected one of ${known}`);
}
const { OTLPLogExporter } = await import(EXPORTERS[protocol]);

// The SDK reports export errors through its diagnostic logger only: show them.
diag.setLogger(new DiagConsoleLogger(), DiagLogLevel.WARN);

/** Counts failed exports, so that this program can exit 1 when events were lost. */
class CountingExporter {
  constructor(inner) {
    this.inner = inner;
    this.failures = 0;
  }
  export(records, done) {
    this.inner.export(records, (result) => {
      if (result.code !== ExportResultCode.SUCCESS) {
        this.failures += 1;
        console.error(`export of ${records.length} usage events failed: ${result.error}`);
      }
      done(result);
    });
  }
  forceFlush() {
    return this.inner.forceFlush();
  }
  shutdown() {
    return this.inner.shutdown();
  }
}

const exporter = new CountingExporter(new OTLPLogExporter());
const provider = new LoggerProvider({
  resource: defaultResource().merge(detectResources({ detectors: [envDetector] })),
  processors: [new BatchLogRecordProcessor({ exporter })],
});
const logger = provider.getLogger('usage');

function emit(eventName, attributes) {
  const defined = Object.fromEntries(
    Object.entries(attributes).filter(([, value]) => value !== undefined),
  );
  // `event.id` makes the collector write a retried event once.
  logger.emit({ eventName, attributes: { ...defined, 'event.id': randomUUID() } });
}

export function pageVisit(path, { sessionId, userId, referrer, userAgent, clientAddress } = {}) {
  emit('page_visit', {
    'url.path': path,
    'session.id': sessionId,
    'user.id': userId,
    'http.request.header.referer': referrer,
    'user_agent.original': userAgent,
    'client.address': clientAddress,
  });
}

export function sessionStart(sessionId, { userId, userAgent, clientAddress } = {}) {
  emit('session_start', {
    'session.id': sessionId,
    'user.id': userId,
    'user_agent.original': userAgent,
    'client.address': clientAddress,
  });
}

export function sessionEnd(sessionId) {
  emit('session_end', { 'session.id': sessionId });
}

export function programExecution(
  sessionId,
  { lines, linesExecuted, durationMs, errorMessage, userId },
) {
  emit('program_execution', {
    'session.id': sessionId,
    'user.id': userId,
    'program.lines': lines,
    'program.lines_executed': linesExecuted,
    'program.duration_ms': durationMs,
    'program.success': errorMessage === undefined,
    'error.message': errorMessage,
  });
}

/** `data` (an object) is sent as a key-value list and stored as JSON in feature_data. */
export function featureUse(name, { sessionId, userId, data } = {}) {
  emit('feature_use', {
    'feature.name': name,
    'session.id': sessionId,
    'user.id': userId,
    'feature.data': data,
  });
}

/** Any other event lands in usage_events with its attributes as JSON. */
export function usageEvent(name, attributes) {
  emit(name, attributes);
}

const session = process.argv[2];
if (!session) {
  throw new Error('usage: node web_ide.mjs SESSION_ID');
}
const agent = 'Mozilla/5.0 (X11; Linux x86_64) web-ide-node';
sessionStart(session, { userId: 'u-7', userAgent: agent, clientAddress: '2001:db8::7' });
pageVisit('/ide', {
  sessionId: session,
  userId: 'u-7',
  referrer: 'https://example.org/node',
  userAgent: agent,
});
pageVisit('/ide/programs/naïve.bas', { sessionId: session, userId: 'u-7' });
await sleep(20);
programExecution(session, { lines: 12, linesExecuted: 144, durationMs: 35, userId: 'u-7' });
programExecution(session, {
  lines: 2,
  linesExecuted: 1,
  durationMs: 0,
  errorMessage: 'TYPE MISMATCH IN 10',
  userId: 'u-7',
});
featureUse('share', {
  sessionId: session,
  userId: 'u-7',
  data: { target: 'link', public: true, views: 3 },
});
usageEvent('export_pdf', { 'session.id': session, pages: 2, format: 'a4' });
await sleep(20);
sessionEnd(session);

await provider.shutdown();
if (exporter.failures > 0) {
  process.exitCode = 1;
}
