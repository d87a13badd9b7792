"""Azure Resource Manager emulator: the ``listUserKubeconfig``/``listAdminKubeconfig`` actions of AKS Arc.

``az aksarc get-credentials`` (and the product's ``-g/-n`` mode) POSTs the action on the connected cluster's
``provisionedClusterInstances/default`` and follows a long-running operation. This emulator answers the way
ARM does (202 + ``Azure-AsyncOperation`` + ``Location`` + ``Retry-After: 1``, ``InProgress`` twice, then the
wrapped result), with ARM's error bodies, and with failure modes chosen by cluster name so the product's
handling of each can be tested: ``missing-*`` (404), ``forbidden-*`` (403 on both actions), ``useronly-*``
(403 on the admin action only), ``failing-*`` (operation ends ``Failed``), ``stuck-*`` (never finishes),
``malformed-*`` (succeeds with a value that is not a kubeconfig), ``sync-*`` (200 with the result at once).
Callers authenticate with an Entra-like bearer JWT whose audience is the ARM resource. With the Entra emulator
(``up --entra``) the token must be one it signed: ARM checks it against the emulator's JWKS (signature, issuer,
audience ``https://management.core.windows.net/`` or ``https://management.azure.com/``, expiry, 5 minutes of clock
skew) and answers with ARM's own 401 codes; ``/subscriptions``, ``/subscriptions/<id>`` and ``/tenants`` answer
what ``az login`` and ``az account`` read; and the user kubeconfig is AKS Arc's (kubelogin ``--login interactive``
with ``--pop-enabled --pop-claims u=<cluster ARM id>``, server id ``6256c85f-...``).

A fleet (``up --clusters N``) gives the emulator every cluster's record (``clusters``): each answers in its own
subscription and resource group, with its own API server, CA and admin certificate in its kubeconfigs, its
connectivity status and tags. ``subscriptions`` says which identities see which subscription: a subscription with
``restricted: false`` is invisible to a restricted identity (a upn starting with ``restricted``): its clusters are
403 ``AuthorizationFailed``, ``GET /subscriptions`` leaves it out and Resource Graph (:mod:`.resourcegraph`,
``POST /providers/Microsoft.ResourceGraph/resources``) answers nothing from it.
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid

import yaml
from aiohttp import web

ARM_AUDIENCES = ("https://management.core.windows.net", "https://management.azure.com")
AKS_SERVER_ID = "6dae42f8-4368-4678-94ff-3960e28e3630"
KUBELOGIN_CLIENT_ID = "80faf920-1908-4b52-b5ef-a8e7bedfc67a"
AKS_ARC_SERVER_ID = "6256c85f-0aad-4d50-b960-e6e9b21efe35"
AKS_ARC_CLIENT_ID = "3f4439ff-e698-4d6d-84fe-09c9d574f06b"
ARM_TOKEN_AUDIENCES = ("https://management.core.windows.net/", "https://management.core.windows.net",
                       "https://management.azure.com/", "https://management.azure.com")
SUBSCRIPTION = "00000000-0000-0000-0000-00000000c0de"
API_VERSIONS = ("2022-05-01-preview", "2022-09-01-preview", "2023-11-15-preview", "2024-01-01")
IN_PROGRESS_POLLS = 2
LOCATION = "eastus"

_ACTION = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Kubernetes/"
    r"connectedClusters/(?P<name>[^/]+)/providers/Microsoft\.HybridContainerService/"
    r"provisionedClusterInstances/default/(?P<action>listUserKubeconfig|listAdminKubeconfig)$", re.I)
_CLUSTER = re.compile(r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/"
                      r"Microsoft\.Kubernetes/connectedClusters/(?P<name>[^/]+)"
                      r"(?P<instance>/providers/Microsoft\.HybridContainerService/provisionedClusterInstances/default)?$",
                      re.I)
_OPERATION = re.compile(r"^/subscriptions/(?P<sub>[^/]+)/providers/Microsoft\.HybridContainerService/locations/"
                        r"[^/]+/(?P<kind>operationStatuses|operationResults)/(?P<op>[^/]+)$", re.I)
_SUBSCRIPTION = re.compile(r"^/subscriptions/(?P<sub>[^/]+)$", re.I)
_RESOURCE_GRAPH = "/providers/microsoft.resourcegraph/resources"


def arm_error(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def _claims(request: web.Request) -> dict | None:
    auth = request.headers.get("Authorization", "")
    if not auth.lower().startswith("bearer "):
        return None
    parts = auth[7:].strip().split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


def _restricted(claims: dict) -> bool:
    """The restricted identity (as the API server's RBAC names it): a upn starting with ``restricted``."""
    name = claims.get("upn") or claims.get("unique_name") or ""
    return isinstance(name, str) and name.lower().startswith("restricted")


class ARM:
    """The ARM emulator: one sandbox cluster (``cfg`` and the PEMs), or a fleet's (``clusters``: records with
    ``name``, ``resource_group``, ``subscription``, ``apiserver_url``, ``ca_pem``, ``admin_cert_pem``,
    ``admin_key_pem``, ``connectivity``, ``tags``); ``subscriptions``: ``[{"id", "display_name", "restricted"}]``
    (``restricted``: whether restricted identities see it)."""

    def __init__(self, cfg: dict, apiserver_url: str = "", ca_pem: bytes = b"", admin_cert_pem: bytes = b"",
                 admin_key_pem: bytes = b"", entra=None, clusters: list[dict] | None = None):
        self.subscription = cfg.get("subscription", SUBSCRIPTION)
        self.entra = entra  # a tests.sandbox.azure.entra.server.Entra: tokens are checked against its JWKS
        self.verifier = entra.verifier(leeway=300) if entra is not None else None
        self.tenant = cfg.get("tenant", "72f988bf-86f1-41af-91ab-2d7cd011db47")
        self.fleet = clusters is not None
        if clusters is None:  # one cluster, known in any subscription
            clusters = [{"name": cfg["cluster"], "resource_group": cfg["resource_group"], "subscription": None,
                         "apiserver_url": apiserver_url, "ca_pem": ca_pem, "admin_cert_pem": admin_cert_pem,
                         "admin_key_pem": admin_key_pem, "connectivity": "Connected", "tags": {}}]
        self.clusters = clusters
        self.subscriptions = cfg.get("subscriptions") or [{"id": self.subscription,
                                                           "display_name": "Sandbox Subscription", "restricted": True}]
        self.operations: dict[str, dict] = {}
        self.url = ""  # set by the server once its port is known

    def visible_subscriptions(self, claims: dict) -> list[str]:
        """The subscriptions the caller (the token's identity) can see."""
        return [s["id"] for s in self.subscriptions if s.get("restricted", True) or not _restricted(claims)]

    def _no_access(self, claims: dict, sub: str) -> bool:
        """A configured subscription this caller cannot see."""
        known = any(s["id"].lower() == sub.lower() for s in self.subscriptions)
        return known and sub.lower() not in {s.lower() for s in self.visible_subscriptions(claims)}

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/metadata/endpoints", self.h_metadata)
        app.router.add_route("*", "/{tail:.*}", self.h_any)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler):
        headers = {"x-ms-request-id": str(uuid.uuid4()),
                   "x-ms-correlation-request-id": request.headers.get("x-ms-correlation-request-id",
                                                                      str(uuid.uuid4()))}
        if request.path != "/metadata/endpoints":
            problem = self._authenticate(request)
            if problem:
                problem.headers.update(headers)
                login = self.entra.url if self.entra is not None else "https://login.microsoftonline.com"
                problem.headers["WWW-Authenticate"] = (f'Bearer authorization_uri="{login}/{self.tenant}", '
                                                       'error="invalid_token"')
                return problem
            if not request.query.get("api-version"):
                return arm_error(400, "MissingApiVersionParameter", "The api-version query parameter (?api-version=) "
                                 "is required for all requests.", headers)
        resp = await handler(request)
        resp.headers.update(headers)
        return resp

    def _authenticate(self, request) -> web.Response | None:
        if "Authorization" not in request.headers:
            return arm_error(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is "
                             "missing.")
        if self.verifier is not None:
            return self._authenticate_signed(request)
        claims = _claims(request)
        if claims is None:
            return arm_error(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is "
                             "provided in an invalid format.")
        aud = claims.get("aud")
        if not isinstance(aud, str) or aud.rstrip("/") not in ARM_AUDIENCES:
            return arm_error(401, "AuthenticationFailed", f"Authentication failed. The access token has been "
                             f"obtained for wrong audience or resource '{aud}'. It should exactly match with one of "
                             "the allowed audiences 'https://management.core.windows.net/','https://management."
                             "core.windows.net','https://management.azure.com/','https://management.azure.com'.")
        exp = claims.get("exp")
        if not isinstance(exp, (int, float)) or exp < time.time():
            return arm_error(401, "AuthenticationFailed", "Authentication failed. The access token expiry UTC time "
                             f"'{_utc(exp)}' is earlier than current UTC time '{_utc(time.time())}'.")
        request["claims"] = claims
        return None

    def _authenticate_signed(self, request) -> web.Response | None:
        """ARM's checks of an Entra access token, against the emulator's JWKS, with ARM's 401 codes."""
        from ..apiserver.jwtverify import TokenError
        auth = request.headers["Authorization"]
        if not auth.lower().startswith("bearer ") or auth[7:].strip().count(".") != 2:
            return arm_error(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is "
                             "provided in an invalid format.")
        token = auth[7:].strip()
        try:
            claims = self.verifier.verify(token, ARM_TOKEN_AUDIENCES)
        except TokenError as e:
            if e.kind == "expired":
                exp = _claims(request).get("exp") if _claims(request) else None
                return arm_error(401, "ExpiredAuthenticationToken", "The access token expiry UTC time "
                                 f"'{_utc_arm(exp)}' is earlier than current UTC time '{_utc_arm(time.time())}'.")
            if e.kind == "audience":
                aud = (_claims(request) or {}).get("aud")
                return arm_error(401, "InvalidAuthenticationTokenAudience", "The access token has been obtained for "
                                 f"wrong audience or resource '{aud}'. It should exactly match with one of the allowed "
                                 "audiences 'https://management.core.windows.net/','https://management.core.windows."
                                 "net','https://management.azure.com/','https://management.azure.com'.")
            if e.kind == "issuer":
                return arm_error(401, "InvalidAuthenticationTokenTenant", "The access token is from the wrong issuer "
                                 f"'{(_claims(request) or {}).get('iss')}'. It must match the tenant "
                                 f"'https://sts.windows.net/{self.tenant}/' associated with this subscription. Please "
                                 "use the authority (URL) "
                                 f"'{self.entra.url}/{self.tenant}' to get the token.")
            return arm_error(401, "InvalidAuthenticationToken", "The access token is invalid.")
        if claims.get("tid") != self.tenant:
            return arm_error(401, "InvalidAuthenticationTokenTenant", f"The access token is from the wrong issuer "
                             f"'{claims.get('iss')}'. It must match the tenant 'https://sts.windows.net/{self.tenant}/'"
                             " associated with this subscription.")
        request["claims"] = claims
        return None

    # -- cloud metadata, subscriptions ------------------------------------------------------------------------------

    async def h_metadata(self, request):
        """``ARM_CLOUD_METADATA_URL`` target: one cloud whose Resource Manager is this emulator."""
        base = self.url.rstrip("/") + "/"
        return web.json_response([{
            "name": "AzureCloud", "portal": "https://portal.azure.com", "resourceManager": base,
            "authentication": {"loginEndpoint": (self.entra.url + "/") if self.entra is not None
                               else "https://login.microsoftonline.com/",
                               "audiences": ["https://management.core.windows.net/", "https://management.azure.com/"],
                               "tenant": "common", "identityProvider": "AAD"},
            "media": "https://rest.media.azure.net", "graphAudience": "https://graph.windows.net/",
            "graph": "https://graph.windows.net/", "microsoftGraphResourceId": "https://graph.microsoft.com/",
            "suffixes": {"keyVaultDns": "vault.azure.net", "storage": "core.windows.net",
                         "acrLoginServer": "azurecr.io", "sqlServerHostname": "database.windows.net"},
            "batch": "https://batch.core.windows.net/", "sqlManagement": "https://management.core.windows.net:8443/",
            "gallery": "https://gallery.azure.com/",
            "activeDirectoryDataLake": "https://datalake.azure.net/"}])

    async def h_any(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        if path.lower() == _RESOURCE_GRAPH:
            if request.method != "POST":
                return arm_error(405, "HttpMethodNotAllowed", f"The HTTP method '{request.method}' is not supported "
                                 "for the resource type 'Microsoft.ResourceGraph/resources'.")
            return await self.h_resource_graph(request)
        m = _ACTION.match(path)
        if m:
            if request.method != "POST":
                return self._no_route(request, path)
            return await self.h_action(request, **m.groupdict())
        m = _OPERATION.match(path)
        if m and request.method == "GET":
            return await self.h_operation(request, m["kind"].lower(), m["op"])
        m = _CLUSTER.match(path)
        if m and request.method == "GET":
            return await self.h_cluster(request, m["sub"], m["rg"], m["name"], bool(m["instance"]))
        m = _SUBSCRIPTION.match(path)
        if m and request.method == "GET":
            visible = {s.lower() for s in self.visible_subscriptions(request["claims"])}
            if ((self.entra is not None or self.fleet) and m["sub"].lower() not in visible) or \
                    self._no_access(request["claims"], m["sub"]):
                return arm_error(404, "SubscriptionNotFound", f"The subscription '{m['sub']}' could not be found.")
            return web.json_response(self._subscription(m["sub"]))
        if path.lower() == "/subscriptions" and request.method == "GET":
            subs = self.visible_subscriptions(request["claims"])
            return web.json_response({"value": [self._subscription(s) for s in subs],
                                      "count": {"type": "Total", "value": len(subs)}})
        if path.lower() == "/tenants" and request.method == "GET":
            return web.json_response({"value": [{
                "id": f"/tenants/{self.tenant}", "tenantId": self.tenant, "countryCode": "US",
                "displayName": "Contoso", "domains": ["contoso.onmicrosoft.com", "contoso.com"],
                "tenantCategory": "Home", "defaultDomain": "contoso.onmicrosoft.com", "tenantType": "AAD"}]})
        return self._no_route(request, path)

    def _no_route(self, request, path):
        return arm_error(404, "NotFound" if "/providers/" not in path else "InvalidResourceType",
                         f"The resource type could not be found in the namespace for api version "
                         f"'{request.query.get('api-version')}'." if "/providers/" in path else
                         f"No HTTP resource was found that matches the request URI '{request.url}'.")

    def _subscription(self, sub: str) -> dict:
        name = next((s.get("display_name") for s in self.subscriptions if s["id"].lower() == sub.lower()), None)
        return {"id": f"/subscriptions/{sub}", "authorizationSource": "RoleBased", "managedByTenants": [],
                "subscriptionId": sub, "tenantId": self.tenant, "displayName": name or "Sandbox Subscription",
                "state": "Enabled", "subscriptionPolicies": {"locationPlacementId": "Public_2014-09-01",
                                                             "quotaId": "PayAsYouGo_2014-09-01",
                                                             "spendingLimit": "Off"}}

    # -- the cluster ---------------------------------------------------------------------------------------------------

    def _find(self, sub: str, rg: str, name: str) -> tuple[str | None, dict | None]:
        """(the behaviour for this cluster name, its record), or (None, None) when the resource does not exist.
        The failure modes by name use the first cluster's record for their kubeconfigs."""
        lower = name.lower()
        for prefix in ("missing", "forbidden", "useronly", "failing", "stuck", "malformed", "sync"):
            if lower.startswith(prefix + "-"):
                return (None, None) if prefix == "missing" else (prefix, self.clusters[0])
        for record in self.clusters:
            if lower == record["name"].lower() and rg.lower() == record["resource_group"].lower() and (
                    record["subscription"] is None or sub.lower() == record["subscription"].lower()):
                return "ok", record
        return None, None

    def _forbidden(self, request, action: str, scope: str) -> web.Response:
        claims = request["claims"]
        who = claims.get("upn") or claims.get("appid") or "unknown"
        return arm_error(403, "AuthorizationFailed", f"The client '{who}' with object id '{claims.get('oid', '')}' "
                         f"does not have authorization to perform action '{action}' over scope '{scope}' or the "
                         "scope is invalid. If access was recently granted, please refresh your credentials.")

    @staticmethod
    def _not_found(rg: str, name: str) -> web.Response:
        return arm_error(404, "ResourceNotFound", f"The Resource 'Microsoft.Kubernetes/connectedClusters/{name}' "
                         f"under resource group '{rg}' was not found. For more details please go to "
                         "https://aka.ms/ARMResourceNotFoundFix")

    async def h_cluster(self, request, sub, rg, name, instance: bool):
        cid = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Kubernetes/connectedClusters/{name}"
        if self._no_access(request["claims"], sub):
            return self._forbidden(request, "Microsoft.Kubernetes/connectedClusters/read", cid)
        mode, record = self._find(sub, rg, name)
        if mode is None:
            return self._not_found(rg, name)
        if instance:
            return web.json_response({
                "id": cid + "/providers/Microsoft.HybridContainerService/provisionedClusterInstances/default",
                "name": "default", "type": "microsoft.hybridcontainerservice/provisionedclusterinstances",
                "extendedLocation": {"type": "CustomLocation", "name": f"/subscriptions/{sub}/resourceGroups/{rg}/"
                                     "providers/Microsoft.ExtendedLocation/customLocations/sandbox-cl"},
                "properties": {"provisioningState": "Succeeded", "kubernetesVersion": "1.30.4",
                               "controlPlane": {"count": 1, "vmSize": "Standard_A4_v2"},
                               "status": {"currentState": "Succeeded"}}})
        return web.json_response({
            "id": cid, "name": name, "type": "microsoft.kubernetes/connectedclusters", "location": LOCATION,
            "kind": "ProvisionedCluster", "identity": {"type": "SystemAssigned"}, "tags": dict(record["tags"]),
            "properties": self._properties(record)})

    def _properties(self, record: dict) -> dict:
        return {"provisioningState": "Succeeded", "connectivityStatus": record["connectivity"],
                "distribution": "AKS", "infrastructure": "azure_stack_hci", "kubernetesVersion": "1.30.4",
                "agentVersion": "1.21.10", "totalNodeCount": 2,
                "aadProfile": {"enableAzureRBAC": False, "adminGroupObjectIDs": [], "tenantID": self.tenant}}

    # -- Resource Graph --------------------------------------------------------------------------------------------

    def resources(self) -> list[dict]:
        """Every cluster as an ARG ``resources`` row (``resourceGroup`` and ``type`` in lower case, as ARG has them)."""
        rows = []
        for r in self.clusters:
            sub = r["subscription"] or self.subscription
            rows.append({
                "id": f"/subscriptions/{sub}/resourceGroups/{r['resource_group']}/providers/Microsoft.Kubernetes/"
                      f"connectedClusters/{r['name']}",
                "name": r["name"], "type": "microsoft.kubernetes/connectedclusters", "tenantId": self.tenant,
                "kind": "ProvisionedCluster", "location": LOCATION, "resourceGroup": r["resource_group"].lower(),
                "subscriptionId": sub, "managedBy": "", "sku": None, "plan": None,
                "properties": self._properties(r), "tags": dict(r["tags"]),
                "identity": {"type": "SystemAssigned", "principalId": str(uuid.uuid5(uuid.NAMESPACE_URL, r["name"])),
                             "tenantId": self.tenant},
                "zones": None, "extendedLocation": None})
        return rows

    async def h_resource_graph(self, request):
        from .resourcegraph import API_VERSIONS as ARG_VERSIONS, QueryError, error_body, run
        version = request.query.get("api-version")
        if version not in ARG_VERSIONS:
            return arm_error(400, "InvalidApiVersionParameter", f"The api-version '{version}' is invalid. The "
                             f"supported versions are '{','.join(ARG_VERSIONS)}'.")
        try:
            body = await request.json()
        except ValueError:
            body = None
        try:
            answer = run(body, self.resources(), self.visible_subscriptions(request["claims"]), self.tenant)
        except QueryError as e:
            return web.json_response(error_body(e), status=400)
        return web.json_response(answer)

    async def h_action(self, request, sub, rg, name, action):
        if request.query.get("api-version") not in API_VERSIONS:
            return arm_error(400, "NoRegisteredProviderFound", f"No registered resource provider found for location "
                             f"'{LOCATION}' and API version '{request.query.get('api-version')}' for type "
                             "'provisionedClusterInstances'. The supported api-versions are "
                             f"'{', '.join(API_VERSIONS)}'.")
        admin = action.lower() == "listadminkubeconfig"
        scope = (f"/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Kubernetes/connectedClusters/{name}"
                 "/providers/Microsoft.HybridContainerService/provisionedClusterInstances/default")
        act = f"Microsoft.HybridContainerService/provisionedClusterInstances/{action}/action"
        if self._no_access(request["claims"], sub):
            return self._forbidden(request, act, scope)
        mode, record = self._find(sub, rg, name)
        if mode is None:
            return self._not_found(rg, name)
        if mode == "forbidden" or (mode == "useronly" and admin):
            return self._forbidden(request, act, scope)
        op = str(uuid.uuid4())
        tenant = request["claims"].get("tid") or self.tenant
        self.operations[op] = {"polls": 0, "mode": mode, "admin": admin, "resource": scope, "rg": rg,
                               "cluster": name, "tenant": tenant, "start": _utc(time.time()), "sub": sub,
                               "record": record}
        api_version = request.query["api-version"]
        if mode == "sync":
            return web.json_response(self._result(op, "Succeeded"))
        base = (f"{self.url.rstrip('/')}/subscriptions/{sub}/providers/Microsoft.HybridContainerService/locations/"
                f"{LOCATION}")
        return web.Response(status=202, headers={
            "Azure-AsyncOperation": f"{base}/operationStatuses/{op}?api-version={api_version}",
            "Location": f"{base}/operationResults/{op}?api-version={api_version}",
            "Retry-After": "1"})

    def _state(self, op: dict) -> str:
        if op["mode"] == "stuck" or op["polls"] <= IN_PROGRESS_POLLS:
            return "InProgress"
        return "Failed" if op["mode"] == "failing" else "Succeeded"

    def _result(self, op_id: str, status: str) -> dict:
        op = self.operations[op_id]
        body = {"id": f"/subscriptions/{op['sub']}/providers/Microsoft.HybridContainerService/locations/{LOCATION}/"
                      f"operationStatuses/{op_id}",
                "name": op_id, "resourceId": op["resource"], "status": status, "startTime": op["start"]}
        if status in ("Succeeded", "Failed"):
            body["endTime"] = _utc(time.time())
        if status == "Failed":
            body["error"] = {"code": "ListCredentialFailed", "message": "failed to get the kubeconfig of the "
                             "provisioned cluster: rpc error: code = DeadlineExceeded desc = context deadline "
                             "exceeded (the Arc resource bridge could not reach the cluster's control plane)"}
        elif status == "Succeeded":
            if op["mode"] == "malformed":
                value = base64.b64encode(b"<html><body><h1>502 Bad Gateway</h1></body></html>\n").decode()
            else:
                value = base64.b64encode(self.kubeconfig(op["cluster"], op["rg"], op["admin"], op["tenant"],
                                                         op["sub"], op["record"])).decode()
            body["properties"] = {"kubeconfigs": [{"name": "credentialAdmin" if op["admin"] else "credentialUser",
                                                   "value": value}]}
        return body

    async def h_operation(self, request, kind: str, op_id: str):
        op = self.operations.get(op_id)
        if op is None:
            return arm_error(404, "OperationNotFound", f"The operation '{op_id}' could not be found.")
        op["polls"] += 1
        status = self._state(op)
        if kind == "operationstatuses":
            return web.json_response(self._result(op_id, status))
        if status == "InProgress":
            return web.Response(status=202, headers={"Location": str(request.url), "Retry-After": "1"})
        body = self._result(op_id, status)
        if status == "Failed":
            return web.json_response({"error": body["error"]}, status=500)
        return web.json_response(body)

    # -- kubeconfigs ------------------------------------------------------------------------------------------------

    def kubeconfig(self, cluster: str, rg: str, admin: bool, tenant: str, sub: str | None = None,
                   record: dict | None = None) -> bytes:
        """What AKS Arc returns: an exec-plugin (kubelogin) user kubeconfig, or a client-certificate admin one,
        for the cluster's own API server (``record``: its entry in ``clusters``; default the first)."""
        record = record or self.clusters[0]
        ca = base64.b64encode(record["ca_pem"]).decode()
        if admin:
            user_name = f"clusterAdmin_{rg}_{cluster}"
            user = {"client-certificate-data": base64.b64encode(record["admin_cert_pem"]).decode(),
                    "client-key-data": base64.b64encode(record["admin_key_pem"]).decode()}
            context = f"{cluster}-admin"
        else:
            user_name = f"clusterUser_{rg}_{cluster}"
            args = ["get-token", "--login", "devicecode", "--server-id", AKS_SERVER_ID, "--client-id",
                    KUBELOGIN_CLIENT_ID, "--tenant-id", tenant, "--environment", "AzurePublicCloud"]
            if self.entra is not None:  # what AKS Arc returns for a cluster with Entra (enforcePoP)
                arm_id = (f"/subscriptions/{sub or self.subscription}/resourceGroups/{rg}/providers/"
                          f"Microsoft.Kubernetes/connectedClusters/{cluster}")
                args = ["get-token", "--login", "interactive", "--server-id", AKS_ARC_SERVER_ID, "--client-id",
                        AKS_ARC_CLIENT_ID, "--tenant-id", tenant, "--environment", "AzurePublicCloud",
                        "--pop-enabled", "--pop-claims", f"u={arm_id}"]
            user = {"exec": {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "args": args,
                "command": "kubelogin", "env": None,
                "installHint": "\nkubelogin is not installed which is required to connect to AAD enabled cluster.\n\n"
                               "To learn more, please go to https://aka.ms/aks/kubelogin\n",
                "interactiveMode": "IfAvailable", "provideClusterInfo": False}}
            context = f"{cluster}-user"
        cfg = {"apiVersion": "v1", "kind": "Config", "preferences": {},
               "clusters": [{"name": cluster, "cluster": {"certificate-authority-data": ca,
                                                          "server": record["apiserver_url"]}}],
               "contexts": [{"name": context, "context": {"cluster": cluster, "user": user_name}}],
               "current-context": context,
               "users": [{"name": user_name, "user": user}]}
        return yaml.safe_dump(cfg, sort_keys=True, default_flow_style=False).encode()


def _utc_arm(ts) -> str:
    """ARM's time format in its 401 messages (``M/D/YYYY h:mm:ss AM``)."""
    if not isinstance(ts, (int, float)):
        return "1/1/0001 12:00:00 AM"
    t = time.gmtime(ts)
    return f"{t.tm_mon}/{t.tm_mday}/{t.tm_year} {(t.tm_hour % 12) or 12}:{t.tm_min:02d}:{t.tm_sec:02d} " \
           f"{'AM' if t.tm_hour < 12 else 'PM'}"


def _utc(ts) -> str:
    if not isinstance(ts, (int, float)):
        return "0001-01-01T00:00:00.0000000Z"
    return time.strftime("%Y-%m-%dT%H:%M:%S.0000000Z", time.gmtime(ts))
