// A binary and two phones written with node's `ws` (not Go), run by
// cmd/relay/interop_test.go against the real relay binary:
//
//   node interop.mjs ws://127.0.0.1:PORT SERVER_ID TOKEN
//
// It drives one scenario and prints what each side saw as one JSON object
// on stdout; the Go test asserts on it. It judges nothing itself, so a
// wrong relay shows up as a wrong record, not as a crash here.
import WebSocket from 'ws';

const [base, serverID, token] = process.argv.slice(2);
if (!base || !serverID || !token) {
  console.error('usage: node interop.mjs ws://HOST:PORT SERVER_ID TOKEN');
  process.exit(2);
}
const httpBase = base.replace(/^ws/, 'http');

// Fail loudly rather than hang: the Go test has its own deadline too.
const watchdog = setTimeout(() => {
  console.error('interop: timed out; partial record: ' + JSON.stringify(record));
  process.exit(1);
}, 15000);

const record = {
  binary: { received: [], closeCode: null },
  phoneA: { received: [], closeCode: null },
  phoneB: { received: [], closeCode: null },
  connA: null,
  connB: null,
};

// endpoint opens a socket and records every text message as parsed JSON
// (or as {"unparsed": text}) plus the close code it ends with.
function endpoint(path, headers, rec) {
  const ws = new WebSocket(base + path, { headers });
  const waiters = [];
  ws.on('message', (data, isBinary) => {
    const text = data.toString('utf8');
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      msg = { unparsed: text };
    }
    rec.received.push(isBinary ? { binaryOpcode: msg } : msg);
    for (const w of waiters.splice(0)) w();
  });
  ws.on('close', (code) => {
    rec.closeCode = code;
    for (const w of waiters.splice(0)) w();
  });
  ws.on('error', (err) => {
    rec.error = String(err && err.message);
  });
  const opened = new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  // until resolves once pred(rec) holds, re-checking after every event.
  const until = (pred) =>
    new Promise((resolve) => {
      const check = () => (pred(rec) ? resolve() : waiters.push(check));
      check();
    });
  return { ws, opened, until };
}

async function waitBinaryRegistered() {
  for (let i = 0; i < 200; i++) {
    const r = await fetch(httpBase + '/healthz');
    const h = await r.json();
    if (h.binaries >= 1) return;
    await new Promise((res) => setTimeout(res, 10));
  }
  throw new Error('binary never registered');
}

const send = (ws, obj) =>
  new Promise((resolve, reject) => ws.send(JSON.stringify(obj), (err) => (err ? reject(err) : resolve())));

async function main() {
  const ua = 'interop-node-ws/8.23.0';
  const bin = endpoint('/v1/server', { 'x-pyrycode-server': serverID, 'x-pyrycode-version': 'interop-1', 'user-agent': ua }, record.binary);
  await bin.opened;
  await waitBinaryRegistered();

  const phoneHeaders = (name) => ({ 'x-pyrycode-server': serverID, 'x-pyrycode-token': token, 'user-agent': ua, 'x-pyrycode-device-name': name });
  const a = endpoint('/v1/client', phoneHeaders('phone A'), record.phoneA);
  const b = endpoint('/v1/client', phoneHeaders('phone B'), record.phoneB);
  await Promise.all([a.opened, b.opened]);

  // 1. Each phone says hello; the binary learns their conn_ids from the envelopes.
  await send(a.ws, { v: 2, type: 'hello', from: 'A' });
  await bin.until((r) => r.received.length >= 1);
  await send(b.ws, { v: 2, type: 'hello', from: 'B' });
  await bin.until((r) => r.received.length >= 2);
  record.connA = record.binary.received[0].conn_id ?? null;
  record.connB = record.binary.received[1].conn_id ?? null;

  // 2. Replies by conn_id: A's first, so a misrouted frame would reach B first.
  await send(bin.ws, { conn_id: record.connA, frame: { v: 2, type: 'reply', to: 'A' } });
  await send(bin.ws, { conn_id: record.connB, frame: { v: 2, type: 'reply', to: 'B' } });
  await a.until((r) => r.received.length >= 1);
  await b.until((r) => r.received.length >= 1);

  // 3. Close directive for A with a frame: the frame, then close 4401.
  await send(bin.ws, { conn_id: record.connA, close_code: 4401, frame: { v: 2, type: 'error', code: 'unauthorized' } });
  await a.until((r) => r.closeCode !== null);

  // 4. B leaves on its own with 4000: the binary gets a close notice.
  const before = record.binary.received.length;
  b.ws.close(4000, 'bye');
  await b.until((r) => r.closeCode !== null);
  await bin.until((r) => r.received.length > before);
  // Give a stray notice for A (which must not exist) a moment to show up.
  await new Promise((res) => setTimeout(res, 100));

  bin.ws.close(1000);
  await bin.until((r) => r.closeCode !== null);
}

main().then(
  () => {
    clearTimeout(watchdog);
    process.stdout.write(JSON.stringify(record) + '\n');
  },
  (err) => {
    console.error('interop: ' + (err && err.stack ? err.stack : String(err)) + '\npartial record: ' + JSON.stringify(record));
    process.exit(1);
  },
);
