// A stand-in for Jaeger's OTLP trace ingestion, for the tests only (tests/tracing): an
// independent receiver, built on OpenTelemetry's own packages rather than on our code, so that
// our exporter is checked against someone else's reading of the protocol.
//
//   node receiver.mjs --port P --out FILE [--fail N] [--http-port H]
//   node receiver.mjs --port P --count-only [--fail N] [--http-port H]
//
// Serves opentelemetry.proto.collector.trace.v1.TraceService/Export (OTLP/gRPC) on 127.0.0.1:P
// (0: any free port) and, with --http-port, OTLP/HTTP protobuf (POST /v1/traces). Each span of
// each request becomes one JSON line appended to FILE before the call is answered, so a client
// that saw OK finds its spans on disk. --fail N refuses the first N requests (gRPC UNAVAILABLE,
// HTTP 503) and writes nothing for them.
//
// --count-only (for throughput benchmarks, tests/bench/tracing_bench.cc): every request is still
// decoded, and an undecodable one refused as without it, but no span line is written (no --out);
// the stderr line of each request carries the running total instead: "export: N spans (total T)".
//
// stdout: "otlp-receiver listening on 127.0.0.1:<port>" once the gRPC port is bound (then the
// "http on" line when asked); stderr: one line per request. Exit 0 on SIGTERM/SIGINT, 1 when a
// port cannot be bound, 2 on bad arguments.

import fs from 'node:fs';
import http from 'node:http';
import zlib from 'node:zlib';

import grpc from '@grpc/grpc-js';
// The protobufjs module generated from the OTLP .proto files, shipped by otlp-transformer (up to
// 0.216: later versions replace it with a hand-written encoder that cannot decode requests). The
// package has no "exports" map, so this file is reachable directly.
import otlp from '@opentelemetry/otlp-transformer/build/src/generated/root.js';

const { ExportTraceServiceRequest, ExportTraceServiceResponse } =
  otlp.opentelemetry.proto.collector.trace.v1;

function usage(message) {
  process.stderr.write(`otlp-receiver: ${message}\n` +
    'usage: node receiver.mjs --port P (--out FILE | --count-only) [--fail N] [--http-port H]\n');
  process.exit(2);
}

function parseArgs(argv) {
  const options = { port: null, out: null, fail: 0, httpPort: null, countOnly: false };
  for (let i = 0; i < argv.length; i += 2) {
    if (argv[i] === '--count-only') {
      options.countOnly = true;
      i -= 1;  // A flag: no value follows.
      continue;
    }
    const value = argv[i + 1];
    if (value === undefined) {
      usage(`${argv[i]} needs a value`);
    }
    const number = () => {
      if (!/^\d+$/.test(value)) {
        usage(`${argv[i]} wants a non-negative integer, not "${value}"`);
      }
      return Number(value);
    };
    switch (argv[i]) {
      case '--port': options.port = number(); break;
      case '--out': options.out = value; break;
      case '--fail': options.fail = number(); break;
      case '--http-port': options.httpPort = number(); break;
      default: usage(`unknown argument ${argv[i]}`);
    }
  }
  if (options.port === null || (options.out === null && !options.countOnly)) {
    usage('--port and --out are required');
  }
  return options;
}

const options = parseArgs(process.argv.slice(2));
let refusalsLeft = options.fail;

function log(line) {
  process.stderr.write(`otlp-receiver: ${line}\n`);
}

// ---- OTLP -> JSON lines -------------------------------------------------------------------------

const hex = (bytes) => (bytes && bytes.length ? Buffer.from(bytes).toString('hex') : '');

// int64 as a JSON number while exact, else as its decimal string.
function int64(value) {
  const n = Number(value);
  return Number.isSafeInteger(n) ? n : String(value);
}

function anyValue(v) {
  if (!v) {
    return null;
  }
  if (v.stringValue != null) return v.stringValue;
  if (v.boolValue != null) return v.boolValue;
  if (v.intValue != null) return int64(v.intValue);
  if (v.doubleValue != null) {
    // NaN and the infinities have no JSON number.
    return Number.isFinite(v.doubleValue) ? v.doubleValue : String(v.doubleValue);
  }
  if (v.arrayValue != null) return (v.arrayValue.values || []).map(anyValue);
  if (v.kvlistValue != null) return attributes(v.kvlistValue.values);
  if (v.bytesValue != null) return hex(v.bytesValue);
  return null;
}

function attributes(keyValues) {
  const object = {};
  for (const kv of keyValues || []) {
    object[kv.key] = anyValue(kv.value);
  }
  return object;
}

function spanLines(request) {
  const lines = [];
  for (const rs of request.resourceSpans || []) {
    const resource = attributes(rs.resource && rs.resource.attributes);
    for (const ss of rs.scopeSpans || []) {
      const scope = {
        name: (ss.scope && ss.scope.name) || '',
        version: (ss.scope && ss.scope.version) || '',
      };
      for (const span of ss.spans || []) {
        lines.push(JSON.stringify({
          traceId: hex(span.traceId),
          spanId: hex(span.spanId),
          parentSpanId: hex(span.parentSpanId),
          name: span.name || '',
          kind: span.kind || 0,
          startTimeUnixNano: String(span.startTimeUnixNano || '0'),
          endTimeUnixNano: String(span.endTimeUnixNano || '0'),
          traceState: span.traceState || '',
          flags: span.flags || 0,
          attributes: attributes(span.attributes),
          events: (span.events || []).map((e) => ({
            name: e.name || '',
            timeUnixNano: String(e.timeUnixNano || '0'),
            attributes: attributes(e.attributes),
          })),
          links: (span.links || []).map((l) => ({
            traceId: hex(l.traceId),
            spanId: hex(l.spanId),
            traceState: l.traceState || '',
            attributes: attributes(l.attributes),
          })),
          status: {
            code: (span.status && span.status.code) || 0,
            message: (span.status && span.status.message) || '',
          },
          resource,
          scope,
          droppedAttributesCount: span.droppedAttributesCount || 0,
        }));
      }
    }
  }
  return lines;
}

// --count-only: spans decoded so far.
let totalSpans = 0;

function countSpans(message) {
  let count = 0;
  for (const rs of message.resourceSpans || []) {
    for (const ss of rs.scopeSpans || []) {
      count += (ss.spans || []).length;
    }
  }
  return count;
}

// Decodes and stores one request; returns the number of spans, or throws on a malformed body.
function store(body) {
  const message = ExportTraceServiceRequest.decode(body);
  if (options.countOnly) {
    const count = countSpans(message);
    totalSpans += count;
    return count;
  }
  // Plain objects: 64-bit integers as decimal strings (fixed64 times exceed 2^53), enums as
  // numbers, bytes left as buffers.
  const request = ExportTraceServiceRequest.toObject(message, { longs: String, enums: Number });
  const lines = spanLines(request);
  if (lines.length > 0) {
    fs.appendFileSync(options.out, lines.join('\n') + '\n');
  }
  return lines.length;
}

// ---- gRPC ---------------------------------------------------------------------------------------

const traceService = {
  Export: {
    path: '/opentelemetry.proto.collector.trace.v1.TraceService/Export',
    requestStream: false,
    responseStream: false,
    // The body stays raw until the handler, which answers INVALID_ARGUMENT when it does not decode.
    requestSerialize: (buffer) => buffer,
    requestDeserialize: (buffer) => buffer,
    responseSerialize: (response) =>
      Buffer.from(ExportTraceServiceResponse.encode(response).finish()),
    responseDeserialize: (buffer) => ExportTraceServiceResponse.decode(buffer),
  },
};

function exportCall(call, callback) {
  if (refusalsLeft > 0) {
    refusalsLeft -= 1;
    log(`export: refused (UNAVAILABLE), ${refusalsLeft} more to refuse`);
    callback({ code: grpc.status.UNAVAILABLE, details: 'otlp-receiver: --fail' });
    return;
  }
  let count;
  try {
    count = store(call.request);
  } catch (error) {
    log(`export: undecodable request: ${error.message}`);
    callback({ code: grpc.status.INVALID_ARGUMENT, details: String(error.message) });
    return;
  }
  log(`export: ${count} spans${options.countOnly ? ` (total ${totalSpans})` : ''}`);
  callback(null, ExportTraceServiceResponse.create({}));
}

// ---- OTLP/HTTP (protobuf) -----------------------------------------------------------------------

function httpRequest(req, res) {
  const answer = (status, body, type = 'application/x-protobuf') => {
    res.writeHead(status, { 'content-type': type });
    res.end(body);
  };
  if (req.method !== 'POST' || req.url !== '/v1/traces') {
    answer(404, 'not found\n', 'text/plain');
    return;
  }
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    if (refusalsLeft > 0) {
      refusalsLeft -= 1;
      log(`export: refused (HTTP 503), ${refusalsLeft} more to refuse`);
      answer(503, 'otlp-receiver: --fail\n', 'text/plain');
      return;
    }
    if (!String(req.headers['content-type'] || '').startsWith('application/x-protobuf')) {
      log(`export: unsupported content-type ${req.headers['content-type']}`);
      answer(415, 'only application/x-protobuf\n', 'text/plain');
      return;
    }
    let count;
    try {
      let body = Buffer.concat(chunks);
      if (req.headers['content-encoding'] === 'gzip') {
        body = zlib.gunzipSync(body);
      }
      count = store(body);
    } catch (error) {
      log(`export: undecodable request: ${error.message}`);
      answer(400, `${error.message}\n`, 'text/plain');
      return;
    }
    log(`export: ${count} spans${options.countOnly ? ` (total ${totalSpans})` : ''}`);
    answer(200, Buffer.from(ExportTraceServiceResponse.encode({}).finish()));
  });
}

// ---- Start and stop -----------------------------------------------------------------------------

// The tests read FILE before any span arrives: it exists from the start. Appended to, never
// truncated, so a restarted receiver keeps what its predecessor stored.
if (!options.countOnly) {
  fs.appendFileSync(options.out, '');
}

function cannotListen(what, port, error) {
  process.stderr.write(`otlp-receiver: cannot listen on 127.0.0.1:${port} (${what}): ` +
    `${error.message}\n`);
  process.exit(1);
}

const server = new grpc.Server();
server.addService(traceService, { Export: exportCall });
let httpServer = null;

// Node binds TCP listeners with SO_REUSEADDR (libuv), so a receiver restarted on the port of one
// just killed binds despite that one's connections in TIME_WAIT; without SO_REUSEPORT, a port a
// live process listens on still fails with EADDRINUSE.
server.bindAsync(`127.0.0.1:${options.port}`, grpc.ServerCredentials.createInsecure(),
  (error, port) => {
    if (error) {
      cannotListen('gRPC', options.port, error);
    }
    process.stdout.write(`otlp-receiver listening on 127.0.0.1:${port}\n`);
    if (options.httpPort === null) {
      return;
    }
    httpServer = http.createServer(httpRequest);
    httpServer.on('error', (e) => cannotListen('HTTP', options.httpPort, e));
    httpServer.listen(options.httpPort, '127.0.0.1', () => {
      process.stdout.write(`otlp-receiver http on 127.0.0.1:${httpServer.address().port}\n`);
    });
  });

// A test that died leaves the pipe without a reader: nothing to report to then.
process.stdout.on('error', () => {});
process.stderr.on('error', () => {});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    log(`${signal}, exiting`);
    server.forceShutdown();
    if (httpServer) {
      httpServer.closeAllConnections();
      httpServer.close();
    }
    process.exit(0);
  });
}
