// The GraphQL-over-HTTP server audit of the `graphql-http` package (not ours), run against a
// running Custos. Prints every audit that is not `ok` and the totals; exits 1 on a warning
// docs/api.md does not justify ("GraphQL over HTTP").
//
//   npm ci --prefix tests/audit
//   node tests/audit/graphql-http.mjs http://127.0.0.1:8080/graphql
import { auditServer } from 'graphql-http';

// Warned about on purpose; docs/api.md says why.
const JUSTIFIED = new Set(['572B', 'FDE2', '7B9B']);

const url = process.argv[2] ?? 'http://127.0.0.1:8080/graphql';
const results = await auditServer({ url });
const counts = {};
let unjustified = 0;
for (const result of results) {
  counts[result.status] = (counts[result.status] ?? 0) + 1;
  if (result.status === 'ok') continue;
  const justified = JUSTIFIED.has(result.id) ? ' (justified in docs/api.md)' : '';
  console.log(`${result.status.toUpperCase()} ${result.id} ${result.name}${justified}`);
  if (result.status === 'warn' && !justified) unjustified += 1;
  if (result.status === 'error') unjustified += 1;
}
console.log(JSON.stringify(counts));
process.exit(unjustified === 0 ? 0 : 1);
