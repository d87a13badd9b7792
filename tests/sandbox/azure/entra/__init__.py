"""Entra ID emulator: the sign-in side of the sandbox, over HTTPS, as az (MSAL), azure-identity and kubelogin
call it.

``up --entra`` creates the tenant (:func:`.tenant.create`: signing key, app registrations, secrets, certificates, the
trusted federation issuers, written under ``DIR/entra/``); the server process serves it (:class:`.server.Entra`):

- OIDC discovery, v2 (``/<tenant>/v2.0/.well-known/openid-configuration``) and v1 (``/<tenant>/.well-known/
  openid-configuration``), for the tenant id, its domain, ``common`` and ``organizations``; JWKS
  (``/<tenant>/discovery/v2.0/keys``, ``/<tenant>/discovery/keys``): one RSA signing key, ``kid`` = ``x5t`` =
  base64url SHA-1 of its certificate, as Entra's.
- The token endpoint (``/<tenant>/oauth2/v2.0/token``, v1 ``/<tenant>/oauth2/token``): ``client_credentials``
  with a client secret, a certificate assertion (a JWT signed by the app's registered certificate, found by
  ``x5t``/``x5t#S256``/``x5c``, RS256 or PS256, ``aud`` = the token endpoint) or a federated assertion (a JWT from
  a trusted issuer matching one of the app's federated credentials: issuer, subject, audience
  ``api://AzureADTokenExchange``); ``password``, ``device_code``, ``authorization_code`` (PKCE) for the sandbox's
  users, and ``refresh_token``. ``token_type=pop`` with ``req_cnf`` binds the access token to the caller's key
  (``cnf.kid``). Errors are Entra's bodies (``error``, ``error_description`` starting ``AADSTS<code>:``,
  ``error_codes``, ``trace_id``, ``correlation_id``, ``timestamp``).
- Access tokens are v1 tokens (``ver`` 1.0), as Entra issues them for ARM and the AKS (Arc) server
  applications: RS256, ``iss`` ``https://sts.windows.net/<tenant>/`` (the issuer of the v1 discovery document),
  ``aud`` the resource as requested (``https://management.core.windows.net/``, ``6256c85f-...``), ``appid``,
  ``appidacr``, ``idtyp``, ``oid``, ``sub``, ``tid``, ``iat``/``nbf`` (5 minutes back, as Entra) and ``exp``.
  ID tokens are v2 (``iss`` ``https://<host:port>/<tenant>/v2.0``, the v2 discovery issuer).
  ``ctl {"sign_ins": "expired"|"valid"}``: the sign-ins made so far expire (refresh tokens issued until then
  answer AADSTS700082, client secrets AADSTS7000222 until ``valid``), or are valid again.
- A managed-identity endpoint on its own plain-HTTP port, App Service style (``IDENTITY_ENDPOINT`` +
  ``IDENTITY_HEADER``): ``GET /msi/token?resource=...&api-version=2019-08-01`` with ``X-IDENTITY-HEADER``;
  ``ctl {"managed_identity": "down"|"error"|"up"}`` closes its port (connection refused), answers 500, or
  restores it.
- The Azure Pipelines OIDC endpoint (``SYSTEM_OIDCREQUESTURI``): ``POST ...?api-version=7.1&serviceConnectionId=
  <id>`` with ``Authorization: Bearer <SYSTEM_ACCESSTOKEN>`` answers ``{"oidcToken": <jwt>}`` from the pipelines
  issuer; and a workload-identity token file (a projected service-account token of the sandbox's AKS OIDC issuer,
  rewritten at every server start, valid 24 hours): ``AZURE_FEDERATED_TOKEN_FILE``.

What tests need (ids, secrets, certificate paths, endpoints, environment variables) is in sandbox.json
``entra`` (:func:`.tenant.info`).

Where each part lives: :mod:`.tenant` (the material, ``create``/``info``, constants), :mod:`.server` (``Entra``: state,
keys and JWKS, routes, ``ctl``), :mod:`.discovery` (OIDC discovery, JWKS, user realm), :mod:`.token` (the token
endpoint) with :mod:`.client_auth` (client secret, certificate and federated assertions), :mod:`.pop` (``req_cnf``),
:mod:`.grants` (one function per grant) and :mod:`.tokens` (minting), :mod:`.devicecode`, :mod:`.authorize`,
:mod:`.pipelines` (Azure Pipelines OIDC), :mod:`.msi` (the managed-identity endpoint), :mod:`.errors` (Entra's
error bodies). Nothing is imported here: import the module you need.
"""
