// GraphiQL as a frontend developer meets it, in Debian's headless Chromium driven by
// playwright-core (neither is ours), against a running Custos with the network cut off: any
// request to another origin is refused and fails the check. It opens the documentation
// explorer on the schema, then runs a subscription from GraphiQL (authenticated by the
// Authorization header typed into its headers editor) while a record is created, and saves a
// screenshot of each.
//
//   npm ci --prefix tests/audit
//   node tests/audit/graphiql.mjs http://127.0.0.1:8080 docs/graphiql
import { chromium } from 'playwright-core';

const base = process.argv[2] ?? 'http://127.0.0.1:8080';
const shots = process.argv[3] ?? 'graphiql';
const origin = new URL(base).origin;

async function graphql(query, variables, token) {
  const headers = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${base}/graphql`, {
    method: 'POST', headers, body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  if (body.errors) throw new Error(JSON.stringify(body.errors));
  return body.data;
}

const slug = `graphiql-${Date.now().toString(36)}`;
const { signUp } = await graphql(
  'mutation($input: SignUpInput!) { signUp(input: $input) { token } }',
  { input: { organization: 'GraphiQL Check', slug, region: 'eu',
             adminEmail: `ada@${slug}.example.org`, adminName: 'Ada Admin',
             password: 'correct horse battery' } },
);

const problems = [];
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium' });
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  await page.route('**/*', (route) => {
    const url = route.request().url();
    if (new URL(url).origin === origin) return route.continue();
    problems.push(`asked outside the service: ${url}`);
    return route.abort('internetdisconnected');
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
  });

  await page.goto(`${base}/graphql`);
  // The schema is loaded by introspection; the explorer lists the root types and their fields.
  await page.getByRole('button', { name: 'Show Documentation Explorer' }).click();
  await page.getByText('Root Types').waitFor({ timeout: 15000 });
  await page.locator('.graphiql-doc-explorer').getByText('Query', { exact: true }).first().click();
  await page.locator('.graphiql-doc-explorer').getByText('employees', { exact: true }).first().waitFor();
  await page.screenshot({ path: `${shots}-docs.png` });

  // A subscription from GraphiQL, with the token in its headers editor.
  const setEditor = (selector, value) => page.evaluate(
    ([selector, value]) => document.querySelector(`${selector} .CodeMirror`).CodeMirror.setValue(value),
    [selector, value],
  );
  await page.getByText('Headers', { exact: true }).click();
  await setEditor('.graphiql-editor-tool .graphiql-editor:not(.hidden)', JSON.stringify({ Authorization: `Bearer ${signUp.token}` }));
  await setEditor('.graphiql-query-editor', 'subscription Live {\n  auditFeed {\n    eventType\n    aggregateType\n  }\n}\n');
  // GraphiQL reads the edited document (and its operation name) a moment after a change.
  await page.waitForTimeout(1000);
  await page.getByRole('button', { name: 'Execute query (Ctrl-Enter)' }).click();
  // Creates records until one reaches the result pane (the first may come before the socket
  // is subscribed).
  const result = page.locator('.graphiql-response');
  for (let attempt = 0; attempt < 20; attempt += 1) {
    await graphql('mutation { createEmployee(input: { firstName: "Grace", lastName: "Hopper" }) { id } }', {}, signUp.token);
    if ((await result.textContent()).includes('RecordCreated')) break;
    await page.waitForTimeout(500);
  }
  const text = await result.textContent();
  if (!text.includes('RecordCreated')) problems.push(`the subscription showed nothing: ${text}`);
  await page.screenshot({ path: `${shots}-subscription.png` });
} finally {
  await browser.close();
}

for (const problem of problems) console.log(problem);
console.log(problems.length === 0 ? 'GraphiQL: docs and a subscription work offline' : `${problems.length} problem(s)`);
process.exit(problems.length === 0 ? 0 : 1);
