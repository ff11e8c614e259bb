// A stock yjs + y-websocket client driven by JSON commands on stdin, one per line; it answers
// with JSON lines on stdout. The Y.Doc's map `canvas` is what the tests edit.
//
//   node yjs-client.mjs <serverUrl> <room> <token>
//
// Commands (each may carry an `id`, echoed in its answer):
//   {"op": "set", "key": K, "value": V}          canvas.set(K, V) (one transaction)
//   {"op": "setMany", "prefix": P, "count": N}   N separate transactions P0..P(N-1) = i
//   {"op": "wait", "entries": {K: V, ...}}       answer once the canvas holds all of them
//   {"op": "dump"}                               the canvas, the clientID, the peers' awareness
//   {"op": "awareness", "state": S}              set the local awareness state
//   {"op": "reconnect", "serverUrl": U}          new provider on another server, same doc
//   {"op": "exit"}                               destroy provider and doc, exit
// Events: {"event": "status"|"synced"|"close"|"warn", ...}. The BroadcastChannel path is
// disabled, so everything this client learns comes through the server.
import * as Y from 'yjs';
import { WebsocketProvider } from 'y-websocket';
import WebSocket from 'ws';
import readline from 'node:readline';

const [serverUrl, room, token] = process.argv.slice(2);
const out = (message) => process.stdout.write(JSON.stringify(message) + '\n');
// y-websocket reports the server's "permission denied" with console.warn
console.warn = (...args) => out({ event: 'warn', text: args.map(String).join(' ') });

const doc = new Y.Doc();
const canvas = doc.getMap('canvas');

function connect(url) {
  const provider = new WebsocketProvider(url, room, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    params: { token },
    maxBackoffTime: 500,
  });
  provider.on('status', ({ status }) => out({ event: 'status', status }));
  provider.on('sync', (synced) => out({ event: 'synced', synced }));
  provider.on('connection-close', (event) =>
    out({ event: 'close', code: event ? event.code : null, reason: event ? event.reason : null }));
  return provider;
}

let provider = connect(serverUrl);
const waiters = [];

function holds(entries) {
  return Object.entries(entries).every(([k, v]) => JSON.stringify(canvas.get(k)) === JSON.stringify(v));
}

canvas.observe(() => {
  for (const waiter of waiters.splice(0)) {
    if (holds(waiter.entries)) {
      out({ id: waiter.id, done: true });
    } else {
      waiters.push(waiter);
    }
  }
});

function peers() {
  const states = {};
  for (const [clientID, state] of provider.awareness.getStates()) {
    if (clientID !== doc.clientID) states[clientID] = state;
  }
  return states;
}

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const command = JSON.parse(line);
  const { id } = command;
  switch (command.op) {
    case 'set':
      canvas.set(command.key, command.value);
      out({ id, done: true });
      break;
    case 'setMany':
      for (let i = 0; i < command.count; i++) canvas.set(`${command.prefix}${i}`, i);
      out({ id, done: true });
      break;
    case 'wait':
      if (holds(command.entries)) out({ id, done: true });
      else waiters.push({ id, entries: command.entries });
      break;
    case 'dump':
      out({ id, canvas: canvas.toJSON(), clientID: doc.clientID, peers: peers(), synced: provider.synced });
      break;
    case 'awareness':
      provider.awareness.setLocalState(command.state);
      out({ id, done: true });
      break;
    case 'reconnect':
      provider.destroy();
      provider = connect(command.serverUrl);
      out({ id, done: true });
      break;
    case 'exit':
      provider.destroy();
      doc.destroy();
      out({ id, done: true });
      lines.close();
      break;
    default:
      out({ id, error: `unknown op ${command.op}` });
  }
});
lines.on('close', () => {
  provider.destroy();
  setTimeout(() => process.exit(0), 50);
});
