"""The agent's errors as the plugin (and so the runtime, the pod's events and the admin) sees them.

Every failed allocation reads ``spiderpool IP allocation error: <what and why>; <what to do>; run
'kubectl spiderpool why <ns>/<pod>'``: the first words are upstream's, so scripts and alerts written
for upstream keep matching. API errors the agent can run into are translated into what to do about
them; the raw status follows in brackets for the record.
"""

from __future__ import annotations

import re

from spiderpool.k8s.client import ApiError

#: upstream's prefix of every allocation failure
ALLOCATION_ERROR = "spiderpool IP allocation error: "
#: upstream's phrase for an exhausted pool
USED_OUT = "all IP addresses used out"
#: why a pod naming a SpiderSubnet is refused while auto-pools are off
AUTO_POOL_OFF = (
    "the subnet annotations (ipam.spidernet.io/subnet, ipam.spidernet.io/subnets, or ipam.spidernet.io/ippool"
    " naming a SpiderSubnet) cannot be used while the auto-pool feature is disabled"
    " (enableAutoPoolForApplication: false in the spiderpool ConfigMap, chart value"
    " ipam.spiderSubnet.autoPool.enable): name SpiderIPPools with ipam.spidernet.io/ippool, or enable the feature"
)
#: how every allocation failure ends: the command that explains the pod's pools, verdicts and failure
WHY_HINT = "run 'kubectl spiderpool why {namespace}/{pod}'"


class IPAMError(Exception):
    """An allocation error for the plugin: a CNI code, a message naming the pod, and a reason label."""

    def __init__(self, code: int, msg: str, *, reason: str, details: str = "", http: int = 500) -> None:
        super().__init__(msg)
        self.code, self.msg, self.reason, self.details, self.http = code, msg, reason, details, http

    def hinted(self, namespace: str, pod: str) -> IPAMError:
        """This error ending with where to look next: the kubectl plugin's account of the pod."""
        hint = WHY_HINT.format(namespace=namespace, pod=pod)
        if not namespace or not pod or self.msg.endswith(hint):
            return self
        return IPAMError(self.code, f"{self.msg}; {hint}", reason=self.reason, details=self.details, http=self.http)

    def prefixed(self) -> IPAMError:
        """This error as an allocation failure (upstream's leading words, once)."""
        if self.msg.startswith(ALLOCATION_ERROR):
            return self
        return IPAMError(
            self.code, ALLOCATION_ERROR + self.msg, reason=self.reason, details=self.details, http=self.http
        )


_KIND_OF_PATH = re.compile(r"/(?:api|apis/[^/]+)/[^/]+(?:/namespaces/[^/]+)?/([a-z]+)")


def _what(exc: ApiError) -> str:
    verb = {"POST": "create", "PUT": "update", "PATCH": "update", "DELETE": "delete", "GET": "read"}.get(
        exc.method, "use"
    )
    found = _KIND_OF_PATH.match(exc.path)
    return f"{verb} {found.group(1) if found else 'objects'}"


def explain_api_error(exc: ApiError, who: str) -> IPAMError:
    """What an API refusal met while serving ``who`` (e.g. "pod ns/name") means, and what to do."""
    what, raw = _what(exc), f"[{exc.code} {exc.reason}: {exc.message}]"
    if exc.code in (409, 429) or exc.code >= 500:
        why = {409: "an object changed meanwhile", 429: "the apiserver is throttling spiderpool-agent"}.get(
            exc.code, "the apiserver failed"
        )
        return IPAMError(
            11, f"{who}: could not {what}: {why}; the runtime retries by itself {raw}", reason="api_error", http=503
        )
    if exc.code == 401:
        fix = "spiderpool-agent's credentials were refused: check its ServiceAccount token (or kubeconfig)"
    elif exc.code == 403:
        fix = f"spiderpool-agent is not allowed to {what}: give its ServiceAccount the chart's ClusterRole"
    elif exc.code == 404:
        fix = f"could not {what}: the resource does not exist; are the chart's CRDs installed (charts/spiderpool/crds)?"
    elif exc.code == 422:
        fix = (
            f"the apiserver refused to {what} as invalid; the installed CRDs may not match this spiderpool-agent:"
            " apply the chart's CRDs of the same version (charts/spiderpool/crds), and report it if they do"
        )
    else:
        fix = f"could not {what}"
    return IPAMError(100, f"{who}: {fix} {raw}", reason="api_error", http=500)


def as_ipam_error(exc: Exception, who: str, node: str) -> IPAMError:
    """Any failure of an allocation as the plugin reports it."""
    if isinstance(exc, IPAMError):
        return exc
    if isinstance(exc, ApiError):
        return explain_api_error(exc, who)
    return IPAMError(
        11,
        f"{who}: spiderpool-agent on node {node} cannot reach the Kubernetes API ({exc!r}); the runtime retries",
        reason="api_unreachable",
        http=503,
    )
