// A plain npm `ws` client, as an n8n-style editor would use: connect, subscribe, send the n8n
// heartbeat, print every frame it receives as one JSON line, exit after `expect` publications.
import WebSocket from 'ws';

const [url, channel, expect] = process.argv.slice(2);
const wanted = Number(expect);
const ws = new WebSocket(url);
let received = 0;
const timer = setTimeout(() => { console.error('timeout'); process.exit(3); }, 20000);

ws.on('message', (data, isBinary) => {
  const text = data.toString();
  console.log(JSON.stringify({ binary: isBinary, frame: JSON.parse(text) }));
  const frame = JSON.parse(text);
  if (frame.type === 'connected') {
    ws.send(JSON.stringify({ type: 'heartbeat' }));
    ws.send(JSON.stringify({ type: 'subscribe', id: 1, channel }));
  } else if (frame.type === 'reply' && frame.id === 1) {
    console.log(JSON.stringify({ ready: true }));
  } else if (frame.channel === channel) {
    received += 1;
    if (received === wanted) {
      ws.close(1000);
    }
  }
});
ws.on('close', (code) => {
  clearTimeout(timer);
  console.log(JSON.stringify({ closed: code }));
  process.exit(0);
});
ws.on('error', (err) => { console.error(String(err)); process.exit(2); });
