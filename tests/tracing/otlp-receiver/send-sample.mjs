// Sends two known spans with OpenTelemetry's official OTLP exporters, to prove that receiver.mjs
// decodes what a real OTLP client sends (tests/tracing/receiver_test.cc checks every value below).
//
//   node send-sample.mjs grpc 127.0.0.1:PORT                   OTLP/gRPC (exporter-trace-otlp-grpc)
//   node send-sample.mjs http http://127.0.0.1:PORT/v1/traces  OTLP/HTTP protobuf (...-otlp-proto)
//
// Both spans go in one Export call. Prints "sent 2 spans" and exits 0 when the exporter reports
// success, else prints "export failed: <error>" and exits 1. The gRPC exporter does not retry;
// the HTTP one retries a 503 after about a second.

import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { OTLPTraceExporter as GrpcExporter } from '@opentelemetry/exporter-trace-otlp-grpc';
import { OTLPTraceExporter as HttpExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
} from '@opentelemetry/sdk-trace-base';

const [transport, target] = process.argv.slice(2);
if (!['grpc', 'http'].includes(transport) || !target) {
  process.stderr.write('usage: node send-sample.mjs grpc 127.0.0.1:PORT | http URL\n');
  process.exit(2);
}

// Fixed ids (the W3C trace-context examples), so the test knows what to expect.
const spanIds = ['b7ad6b7169203331', '00f067aa0ba902b7'];
const idGenerator = {
  generateTraceId: () => '0af7651916cd43dd8448eb211c80319c',
  generateSpanId: () => spanIds.shift(),
};

// Spans are collected first and exported in one explicit call, whose result decides the exit code.
const memory = new InMemorySpanExporter();
const provider = new BasicTracerProvider({
  idGenerator,
  resource: resourceFromAttributes({ 'service.name': 'snow-sample' }),
  spanProcessors: [new SimpleSpanProcessor(memory)],
});
const tracer = provider.getTracer('snow-sample-tracer', '1.2.3');

// Times past 2^53 ns, so that a receiver reading fixed64 through doubles would be caught.
const parent = tracer.startSpan('sample.parent', {
  kind: SpanKind.SERVER,
  startTime: [1700000000, 1000],
  attributes: {
    'sample.string': 'hello',
    'sample.int': 42,
    'sample.bool': true,
    'sample.double': 1.5,
    'sample.array': ['a', 'b'],
  },
}, ROOT_CONTEXT);
parent.addEvent('sample.event', { 'event.key': 'event-value' }, [1700000000, 500000]);
parent.setStatus({ code: SpanStatusCode.OK });

const child = tracer.startSpan('sample.child', {
  kind: SpanKind.CLIENT,
  startTime: [1700000000, 2000],
  attributes: { 'peer.service': 'downstream' },
}, trace.setSpan(ROOT_CONTEXT, parent));
child.setStatus({ code: SpanStatusCode.ERROR, message: 'sample failure' });
child.end([1700000000, 900000000]);
parent.end([1700000001, 500]);

const exporter = transport === 'grpc'
  // http: plaintext, as Jaeger's 4317 is by default.
  ? new GrpcExporter({ url: `http://${target}` })
  : new HttpExporter({ url: target });
const spans = memory.getFinishedSpans();
const result = await new Promise((resolve) => exporter.export(spans, resolve));
await exporter.shutdown();
await provider.shutdown();
if (result.code === 0) {
  process.stdout.write(`sent ${spans.length} spans\n`);
  process.exit(0);
}
process.stdout.write(`export failed: ${result.error ? result.error.message : 'unknown error'}\n`);
process.exit(1);
