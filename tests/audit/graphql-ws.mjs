// graphql-transport-ws with the protocol's own reference client (the `graphql-ws` package, not
// ours) over the `ws` package, against a running Custos: a subscription delivers and completes,
// one passed a position in its extensions delivers and a malformed one is refused, a client
// without a live session is closed with 4403; then raw frames for the close codes the
// client never provokes itself. Exits 1 on the first difference from the protocol.
//
//   npm ci --prefix tests/audit
//   node tests/audit/graphql-ws.mjs http://127.0.0.1:8080
import { createClient } from 'graphql-ws';
import WebSocket from 'ws';

const base = process.argv[2] ?? 'http://127.0.0.1:8080';
const socketUrl = `${base.replace(/^http/, 'ws')}/graphql/ws`;
let failures = 0;
const check = (ok, what) => {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures += 1;
};

async function graphql(query, variables, token) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${base}/graphql`, { method: 'POST', headers, body: JSON.stringify({ query, variables }) });
  const body = await response.json();
  if (body.errors) throw new Error(JSON.stringify(body.errors));
  return body.data;
}

const slug = `ws-audit-${Date.now().toString(36)}`;
const { signUp: { token } } = await graphql(
  'mutation($input: SignUpInput!) { signUp(input: $input) { token } }',
  { input: { organization: 'WS Audit', slug, region: 'eu', adminEmail: `ada@${slug}.example.org`,
             adminName: 'Ada Admin', password: 'correct horse battery' } },
);

// The reference client: a subscription's results, then completion when the client stops it.
{
  let closedWith;
  const client = createClient({
    url: socketUrl, webSocketImpl: WebSocket, retryAttempts: 0,
    connectionParams: { authorization: `Bearer ${token}` },
    on: { closed: (event) => { closedWith = event.code; } },
  });
  const results = client.iterate({ query: 'subscription { auditFeed { eventType } }' });
  const first = (async () => (await results.next()).value)();
  let seen;
  for (let i = 0; i < 20 && !seen; i += 1) {
    await graphql('mutation { createEmployee(input: { firstName: "Wes", lastName: "Socket" }) { id } }', {}, token);
    seen = await Promise.race([first, new Promise((resolve) => setTimeout(resolve, 500))]);
  }
  check(seen?.data?.auditFeed?.eventType === 'RecordCreated', `a subscription delivers (${JSON.stringify(seen)})`);
  const ended = await results.return();
  check(ended.done === true, 'the client completes its subscription');
  await client.dispose();
  check(closedWith === undefined || closedWith === 1000, `the client closes normally (${closedWith})`);
}

// The reference client passing a fast answer's position in its subscription's extensions
// (`custosAfter`, docs/api.md): the subscription runs and delivers; a value that is not a
// position ends it with an error, code VALIDATION.
{
  const headers = { 'content-type': 'application/json', authorization: `Bearer ${token}` };
  const response = await fetch(`${base}/graphql`, {
    method: 'POST', headers,
    body: JSON.stringify({ query: 'mutation { createEmployee(input: { firstName: "Pos", lastName: "Ition" }) { id } }' }),
  });
  const position = (await response.json()).extensions?.position;
  check(typeof position === 'string', `a fast answer carries its position (${position})`);
  // The connection stays open between the two subscriptions (a lazy client closes it when
  // its last subscription ends).
  const client = createClient({
    url: socketUrl, webSocketImpl: WebSocket, retryAttempts: 0, lazyCloseTimeout: 5000,
    connectionParams: { authorization: `Bearer ${token}` },
  });
  const results = client.iterate({
    query: 'subscription { auditFeed { eventType } }', extensions: { custosAfter: position },
  });
  const first = (async () => (await results.next()).value)();
  let seen;
  for (let i = 0; i < 20 && !seen; i += 1) {
    await graphql('mutation { createEmployee(input: { firstName: "After", lastName: "Position" }) { id } }', {}, token);
    seen = await Promise.race([first, new Promise((resolve) => setTimeout(resolve, 500))]);
  }
  check(seen?.data?.auditFeed?.eventType === 'RecordCreated', `a subscription passed a position delivers (${JSON.stringify(seen)})`);
  await results.return();
  const refused = await new Promise((resolve) => {
    client.subscribe(
      { query: 'subscription { auditFeed { eventType } }', extensions: { custosAfter: 'not a position' } },
      { next: () => {}, error: (errors) => resolve(errors), complete: () => resolve(undefined) },
    );
  });
  const code = Array.isArray(refused) ? refused[0]?.extensions?.code : undefined;
  check(code === 'VALIDATION', `a malformed position is refused: VALIDATION (${JSON.stringify(refused)})`);
  await client.dispose();
}

// The reference client without a live session: closed with 4403 Forbidden.
{
  const closed = await new Promise((resolve) => {
    const client = createClient({
      url: socketUrl, webSocketImpl: WebSocket, retryAttempts: 0, lazy: false,
      connectionParams: { authorization: 'Bearer cus_not_a_token' },
      on: { closed: (event) => resolve(event) },
      onNonLazyError: () => {},
    });
    setTimeout(() => { client.dispose(); resolve(undefined); }, 5000);
  });
  check(closed?.code === 4403, `no live session: 4403 (${closed?.code} ${closed?.reason})`);
}

// Raw frames: what the reference client never sends.
function raw(protocol, frames, { wait = 5000 } = {}) {
  return new Promise((resolve) => {
    const socket = new WebSocket(socketUrl, protocol ? [protocol] : []);
    const timer = setTimeout(() => { socket.terminate(); resolve({ code: 'none' }); }, wait);
    socket.on('open', () => frames.forEach((frame) => socket.send(typeof frame === 'string' ? frame : JSON.stringify(frame))));
    socket.on('close', (code, reason) => { clearTimeout(timer); resolve({ code, reason: reason.toString() }); });
    socket.on('error', () => {});
  });
}
const init = { type: 'connection_init', payload: { authorization: `Bearer ${token}` } };
const subscribe = (id) => ({ type: 'subscribe', id, payload: { query: 'subscription { auditFeed { eventType } }' } });
for (const [what, protocol, frames, code] of [
  ['no subprotocol', null, [], 4406],
  ['no connection_init', 'graphql-transport-ws', [], 4408],
  ['subscribe before the ack', 'graphql-transport-ws', [subscribe('1')], 4401],
  ['a second connection_init', 'graphql-transport-ws', [init, init], 4429],
  ['a running id subscribed again', 'graphql-transport-ws', [init, subscribe('1'), subscribe('1')], 4409],
  ['a message that is not JSON', 'graphql-transport-ws', [init, 'hello'], 4400],
  ['an unknown message type', 'graphql-transport-ws', [init, { type: 'x'.repeat(400) }], 4400],
]) {
  const closed = await raw(protocol, frames);
  const fits = closed.reason === undefined || Buffer.byteLength(closed.reason) <= 123;
  check(closed.code === code && fits, `${what}: ${code} (got ${closed.code} "${closed.reason ?? ''}")`);
}

console.log(failures === 0 ? 'graphql-transport-ws: every check passed' : `${failures} check(s) failed`);
process.exit(failures === 0 ? 0 : 1);
