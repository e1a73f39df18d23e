// Starts GraphiQL for Custos (ours; the other files here are vendored by vendor.sh).
// Queries and mutations are sent to this page's own address; subscriptions to its `/ws` over
// graphql-transport-ws, authenticated with the Authorization header from GraphiQL's headers
// editor (sent as the connection_init payload, as the API asks).
(function () {
  'use strict';

  const page = window.location.pathname.replace(/\/$/, '');
  const http = new URL(page, window.location.origin).toString();
  const socket = new URL(page + '/ws', window.location.origin);
  socket.protocol = window.location.protocol === 'https:' ? 'wss:' : 'ws:';

  const overHttp = GraphiQL.createFetcher({ url: http });

  function isSubscription(params, options) {
    const document = options && options.documentAST;
    if (!document) return /^\s*subscription\b/.test(params.query);
    return document.definitions.some(
      (definition) =>
        definition.kind === 'OperationDefinition' &&
        definition.operation === 'subscription' &&
        (!params.operationName ||
          (definition.name && definition.name.value === params.operationName)),
    );
  }

  function authorization(headers) {
    for (const [name, value] of Object.entries(headers || {})) {
      if (name.toLowerCase() === 'authorization') return String(value);
    }
    return undefined;
  }

  // One connection per subscription, closed when the subscription ends or is stopped.
  async function* overSocket(params, headers) {
    const client = graphqlWs.createClient({
      url: socket.toString(),
      lazy: true,
      retryAttempts: 0,
      connectionParams: { authorization: authorization(headers) },
    });
    try {
      for await (const result of client.iterate(params)) yield result;
    } finally {
      await client.dispose();
    }
  }

  function fetcher(params, options) {
    if (isSubscription(params, options)) return overSocket(params, options && options.headers);
    return overHttp(params, options);
  }

  const welcome = [
    '# Custos GraphQL API. Log in (or sign up), then put the token in Headers below:',
    '#   { "Authorization": "Bearer cus_..." }',
    '# The Docs button lists every type and field.',
    '',
    'mutation LogIn {',
    '  login(tenant: "your-organisation", email: "you@example.org", password: "...") {',
    '    token',
    '  }',
    '}',
    '',
  ].join('\n');

  ReactDOM.createRoot(document.getElementById('graphiql')).render(
    React.createElement(GraphiQL, {
      fetcher,
      defaultQuery: welcome,
      defaultEditorToolsVisibility: 'headers',
      shouldPersistHeaders: false,
    }),
  );
})();
