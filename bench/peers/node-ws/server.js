'use strict';
// Plain Node.js broadcast server on npm's `ws` (the transport n8n uses).
//
//   node server.js PORT
//
// WebSocket clients connect to GET /ws.  POST /api/v1/publish with the livepush
// batch body {"messages":[{"type":"bench","data":{...}}, ...]} broadcasts every
// message, in order, to every connected client.  Like n8n's push code, each
// message is serialized once (JSON.stringify) and the same string is passed to
// ws.send() for every client.  The Authorization header is accepted and ignored.
// GET /healthz -> 200.  POST /debug/gc runs a full GC when started with
// --expose-gc (the harness does that before reading RSS for the memory case).

const http = require('http');
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.argv[2] || 8080);
const host = process.env.BENCH_HOST || '127.0.0.1';

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url === '/healthz') {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ok: true, clients: wss.clients.size }));
    return;
  }
  if (req.method === 'POST' && req.url === '/debug/gc') {
    if (typeof global.gc === 'function') global.gc();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ ok: typeof global.gc === 'function' }));
    return;
  }
  if (req.method === 'POST' && req.url === '/api/v1/publish') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch (e) {
        res.writeHead(400);
        res.end('bad json');
        return;
      }
      const messages = Array.isArray(body.messages) ? body.messages : [];
      let sent = 0;
      for (const m of messages) {
        const payload = JSON.stringify({ type: m.type, data: m.data });
        for (const client of wss.clients) {
          if (client.readyState === WebSocket.OPEN) {
            client.send(payload);
            sent++;
          }
        }
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ ok: true, messages: messages.length, sent }));
    });
    return;
  }
  res.writeHead(404);
  res.end();
});

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false });

server.on('upgrade', (req, socket, head) => {
  if (req.url !== '/ws') {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.on('error', () => {});
    wss.emit('connection', ws, req);
  });
});

server.listen({ port, host, backlog: 4096 }, () => {
  console.log(`node-ws listening on ${host}:${port}`);
});

const shutdown = () => {
  for (const c of wss.clients) c.terminate();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
