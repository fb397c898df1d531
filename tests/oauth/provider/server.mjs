// A real OAuth 2 / OIDC authorization server for the tests, built on oidc-provider 9.
//
// Started by tests/oauth_server.py as `node server.mjs '<config JSON>'`. It listens on 127.0.0.1, port 0 (any free
// one), and prints `READY <port>` on stdout once it accepts connections. Everything is in memory and lives as long as
// the process.
//
// Config (all keys optional; tests/oauth_server.py fills in its defaults):
//   clients            oidc-provider client metadata (client_id, client_secret, grant_types, redirect_uris, ...)
//   account_id         the account the headless login signs in when the request has no login_hint
//   resources          allowed resource indicators; null or absent: any absolute http(s) URL
//   default_resource   the resource used when a client asks for none (null: none, the token is opaque)
//   resource_scope     space-separated scopes every resource server accepts
//   access_token_ttl   seconds an access token lives (per resource server)
//   refresh_token_ttl  seconds a refresh token lives
//
// Test-only admin API on the same Koa app (the Provider is a Koa app in v9):
//   GET  /__admin/stats       counters: token endpoint requests (total, by grant_type, by client, a log of each),
//                             revocation, introspection and authorization requests
//   POST /__admin/reset       body {"stats": bool, "behaviour": bool} (both default true): zero counters, default
//                             behaviour
//   GET  /__admin/behaviour   the current switches
//   POST /__admin/behaviour   merges the given switches:
//       token_delay_ms     delay every token response by N ms (0: none)
//       token_delay_count  how many token requests are delayed that way (null: every one until switched off)
//       token_fail_status  answer token requests with this status (e.g. 500, 429; null: off) and an OAuth error body
//       token_fail_count   how many token requests fail that way (null: every one until switched off)
//       token_fail_error   the OAuth error code in that body (default server_error; temporarily_unavailable for 429)
//       omit_expires_in    strip expires_in from successful token responses
//       access_token_suffix  append this text to the access_token of successful token responses (null: off), e.g.
//                          "\r\nX-Injected: 1": a provider handing out a token that is not a valid header value
//       access_token_ttl   change the access token lifetime for tokens issued from now on
//       login_account      the account the headless login signs in (overrides account_id, not a login_hint)
//       interaction_error  finish every interaction with this OAuth error (e.g. access_denied; null: off)
//       metadata_pkce_methods  publish these code_challenge_methods_supported in both discovery documents instead of
//                          oidc-provider's own (["S256"]); [] leaves the field out (a provider without PKCE)
import * as crypto from 'node:crypto';
import * as http from 'node:http';

import { Provider, errors } from 'oidc-provider';

// stdout carries the READY line and nothing else (nobody reads it afterwards); oidc-provider's notices go to stderr.
console.log = (...args) => console.error(...args);
console.info = console.log;

const config = JSON.parse(process.argv[2] || process.env.OAUTH_TEST_SERVER_CONFIG || '{}');

const DEFAULT_BEHAVIOUR = Object.freeze({
  token_delay_ms: 0,
  token_delay_count: null,
  token_fail_status: null,
  token_fail_count: null,
  token_fail_error: null,
  omit_expires_in: false,
  access_token_suffix: null,
  access_token_ttl: null,
  login_account: null,
  interaction_error: null,
  metadata_pkce_methods: null,
});

function freshStats() {
  return {
    token: { total: 0, by_grant_type: {}, by_client: {}, requests: [] },
    revocation: { total: 0, by_client: {} },
    introspection: { total: 0 },
    authorization: { total: 0 },
  };
}

let behaviour = { ...DEFAULT_BEHAVIOUR };
let stats = freshStats();

const accountId = config.account_id || 'alice@northwind.example';
const resourceScope = config.resource_scope ?? 'mcp:tools mcp:read mcp:write';
const allowedResources = config.resources ? new Set(config.resources) : null;

function accessTokenTTL() {
  return behaviour.access_token_ttl || config.access_token_ttl || 300;
}

function isAllowedResource(resource) {
  if (allowedResources) return allowedResources.has(resource);
  const url = URL.parse(resource);
  return !!url && (url.protocol === 'http:' || url.protocol === 'https:');
}

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256' };

const configuration = {
  clients: config.clients || [],
  jwks: { keys: [signingKey] },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  scopes: ['openid', 'offline_access'],
  claims: { openid: ['sub'], email: ['email'] },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (ctx, client, oneOf) => oneOf || config.default_resource || undefined,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resource) => {
        if (!isAllowedResource(resource)) throw new errors.InvalidTarget();
        return {
          scope: resourceScope,
          audience: resource,
          accessTokenFormat: 'jwt',
          accessTokenTTL: accessTokenTTL(),
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  // Refresh tokens for every client allowed the grant, without offline_access (a gateway asks for resource scopes),
  // not tied to the browser session the headless login created.
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  expiresWithSession: async () => false,
  rotateRefreshToken: () => true,
  findAccount: async (ctx, sub) => ({
    accountId: sub,
    claims: async () => ({ sub, email: sub }),
  }),
  ttl: {
    AccessToken: (ctx, token) => token.resourceServer?.accessTokenTTL || accessTokenTTL(),
    ClientCredentials: (ctx, token) => token.resourceServer?.accessTokenTTL || accessTokenTTL(),
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: config.refresh_token_ttl || 86400,
    Interaction: 600,
    Session: 3600,
    Grant: 86400,
  },
  renderError: async (ctx, out) => {
    ctx.type = 'json';
    ctx.body = out;
  },
};

function bump(counter, key) {
  counter[key] = (counter[key] || 0) + 1;
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks);
}

async function jsonBody(ctx) {
  const raw = (await readBody(ctx.req)).toString();
  return raw ? JSON.parse(raw) : {};
}

// The client a token/revocation request authenticates as: HTTP Basic (form-urlencoded per RFC 6749 2.3.1) or body.
function clientIdOf(ctx, params) {
  const header = ctx.get('authorization');
  if (header.toLowerCase().startsWith('basic ')) {
    const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString();
    const colon = decoded.indexOf(':');
    if (colon > 0) return decodeURIComponent(decoded.slice(0, colon).replace(/\+/g, ' '));
  }
  return params.get('client_id') || '(none)';
}

// Reads the form body of a token/revocation request so it can be counted, then hands it to oidc-provider, which
// accepts an already read body (it logs a one-time warning about that on stderr).
async function peekForm(ctx) {
  if (!ctx.is('application/x-www-form-urlencoded')) return new URLSearchParams();
  const raw = await readBody(ctx.req);
  ctx.req.body = raw;
  return new URLSearchParams(raw.toString());
}

function takeDelay() {
  if (behaviour.token_delay_count === null || behaviour.token_delay_count === undefined) return true;
  if (behaviour.token_delay_count <= 0) return false;
  behaviour.token_delay_count -= 1;
  return true;
}

function takeInjectedFailure() {
  const status = behaviour.token_fail_status;
  if (!status) return null;
  if (behaviour.token_fail_count !== null && behaviour.token_fail_count !== undefined) {
    if (behaviour.token_fail_count <= 0) return null;
    behaviour.token_fail_count -= 1;
  }
  return status;
}

async function admin(ctx) {
  const route = `${ctx.method} ${ctx.path}`;
  switch (route) {
    case 'GET /__admin/stats':
      ctx.body = stats;
      return;
    case 'POST /__admin/reset': {
      const body = await jsonBody(ctx);
      if (body.stats !== false) stats = freshStats();
      if (body.behaviour !== false) behaviour = { ...DEFAULT_BEHAVIOUR };
      ctx.body = { stats, behaviour };
      return;
    }
    case 'GET /__admin/behaviour':
      ctx.body = behaviour;
      return;
    case 'POST /__admin/behaviour': {
      const body = await jsonBody(ctx);
      const unknown = Object.keys(body).filter((key) => !(key in DEFAULT_BEHAVIOUR));
      if (unknown.length) {
        ctx.status = 400;
        ctx.body = { error: `unknown behaviour switch(es): ${unknown.join(', ')}` };
        return;
      }
      behaviour = { ...behaviour, ...body };
      ctx.body = behaviour;
      return;
    }
    default:
      ctx.status = 404;
      ctx.body = { error: `no admin route ${route}` };
  }
}

// The headless login: signs in an account and grants whatever the client asked for, with no page to fill in.
// An authorization request goes /auth -> /interaction/<uid> (login) -> /auth/<uid> -> /interaction/<uid> (consent)
// -> /auth/<uid> -> redirect_uri?code&state; a client following redirects with a cookie jar gets there on its own.
async function interaction(provider, ctx) {
  ctx.set('cache-control', 'no-store');
  ctx.respond = false; // interactionFinished writes the 303 to ctx.res itself
  try {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    const { prompt, params, session } = details;
    let result;
    if (behaviour.interaction_error) {
      result = { error: behaviour.interaction_error, error_description: 'the test server was told to refuse' };
    } else if (prompt.name === 'login') {
      result = { login: { accountId: params.login_hint || behaviour.login_account || accountId } };
    } else if (prompt.name === 'consent') {
      const grant = details.grantId
        ? await provider.Grant.find(details.grantId)
        : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
      const missing = prompt.details;
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      for (const [resource, scopes] of Object.entries(missing.missingResourceScopes || {})) {
        grant.addResourceScope(resource, scopes.join(' '));
      }
      const grantId = await grant.save();
      result = { consent: details.grantId ? {} : { grantId } };
    } else {
      throw new Error(`unsupported prompt ${prompt.name}`);
    }
    const merge = prompt.name === 'consent' && !behaviour.interaction_error;
    await provider.interactionFinished(ctx.req, ctx.res, result, { mergeWithLastSubmission: merge });
  } catch (err) {
    ctx.res.statusCode = err.status || 500;
    ctx.res.setHeader('content-type', 'application/json');
    ctx.res.end(JSON.stringify({ error: err.error || 'server_error', error_description: err.message }));
  }
}

const DISCOVERY_PATHS = new Set(['/.well-known/openid-configuration', '/.well-known/oauth-authorization-server']);

function mountTestRoutes(provider) {
  const tokenPath = provider.pathFor('token');
  const revocationPath = provider.pathFor('revocation');
  const introspectionPath = provider.pathFor('introspection');
  const authorizationPath = provider.pathFor('authorization');

  // provider.use() puts middleware before oidc-provider's own routes.
  provider.use(async (ctx, next) => {
    if (ctx.path.startsWith('/__admin/')) {
      await admin(ctx);
      return;
    }
    if (ctx.method === 'GET' && /^\/interaction\/[^/]+$/.test(ctx.path)) {
      await interaction(provider, ctx);
      return;
    }
    if (ctx.method === 'GET' && DISCOVERY_PATHS.has(ctx.path) && behaviour.metadata_pkce_methods) {
      await next();
      const { code_challenge_methods_supported: _published, ...rest } = ctx.body;
      const methods = behaviour.metadata_pkce_methods;
      ctx.body = methods.length ? { ...rest, code_challenge_methods_supported: methods } : rest;
      return;
    }
    if (ctx.path === authorizationPath) stats.authorization.total += 1;
    if (ctx.method === 'POST' && ctx.path === introspectionPath) stats.introspection.total += 1;
    if (ctx.method === 'POST' && ctx.path === revocationPath) {
      const params = await peekForm(ctx);
      stats.revocation.total += 1;
      bump(stats.revocation.by_client, clientIdOf(ctx, params));
    }
    if (ctx.method !== 'POST' || ctx.path !== tokenPath) {
      await next();
      return;
    }

    const params = await peekForm(ctx);
    const grantType = params.get('grant_type') || '(none)';
    const clientId = clientIdOf(ctx, params);
    stats.token.total += 1;
    bump(stats.token.by_grant_type, grantType);
    bump(stats.token.by_client, clientId);
    stats.token.requests.push({
      grant_type: grantType,
      client_id: clientId,
      resource: params.getAll('resource'),
      scope: params.get('scope'),
    });

    if (behaviour.token_delay_ms > 0 && takeDelay()) {
      await new Promise((resolve) => { setTimeout(resolve, behaviour.token_delay_ms); });
    }
    const failStatus = takeInjectedFailure();
    if (failStatus) {
      ctx.status = failStatus;
      ctx.set('cache-control', 'no-store');
      if (failStatus === 429) ctx.set('retry-after', '0');
      const error = behaviour.token_fail_error || (failStatus === 429 ? 'temporarily_unavailable' : 'server_error');
      ctx.body = { error, error_description: `injected by the test server (HTTP ${failStatus})` };
      return;
    }

    await next();

    if (behaviour.omit_expires_in && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
      const { expires_in: _omitted, ...rest } = ctx.body;
      ctx.body = rest;
    }
    if (behaviour.access_token_suffix && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
      ctx.body = { ...ctx.body, access_token: ctx.body.access_token + behaviour.access_token_suffix };
    }
  });
}

const server = http.createServer();
server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const provider = new Provider(`http://127.0.0.1:${port}`, configuration);
  mountTestRoutes(provider);
  server.on('request', provider.callback());
  process.stdout.write(`READY ${port}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.closeAllConnections();
    server.close(() => process.exit(0));
  });
}
