"""Where each resource we read or write lives in the API."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from spiderpool.api.v2beta1 import GROUP, VERSION


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    namespaced: bool
    #: the object's ``kind`` (for messages and bodies)
    name: str = ""

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{quote(namespace, safe='')}"
        base += f"/{self.plural}"
        return base + (f"/{quote(name, safe='')}" if name else "")

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


POD = Kind("", "v1", "pods", True, "Pod")
NAMESPACE = Kind("", "v1", "namespaces", False, "Namespace")
NODE = Kind("", "v1", "nodes", False, "Node")
EVENT = Kind("", "v1", "events", True, "Event")
SECRET = Kind("", "v1", "secrets", True, "Secret")
CONFIGMAP = Kind("", "v1", "configmaps", True, "ConfigMap")
SERVICE = Kind("", "v1", "services", True, "Service")
ENDPOINTSLICE = Kind("discovery.k8s.io", "v1", "endpointslices", True, "EndpointSlice")
STATEFULSET = Kind("apps", "v1", "statefulsets", True, "StatefulSet")
REPLICASET = Kind("apps", "v1", "replicasets", True, "ReplicaSet")
DEPLOYMENT = Kind("apps", "v1", "deployments", True, "Deployment")
DAEMONSET = Kind("apps", "v1", "daemonsets", True, "DaemonSet")
JOB = Kind("batch", "v1", "jobs", True, "Job")
CRONJOB = Kind("batch", "v1", "cronjobs", True, "CronJob")
LEASE = Kind("coordination.k8s.io", "v1", "leases", True, "Lease")
#: Multus' (the Network Plumbing Working Group's); its CRD comes with Multus, not with Spiderpool
NAD = Kind("k8s.cni.cncf.io", "v1", "network-attachment-definitions", True, "NetworkAttachmentDefinition")
SERVICECIDR = Kind("networking.k8s.io", "v1", "servicecidrs", False, "ServiceCIDR")
#: other CNIs' pools (their CRDs may not be installed: check discovery before watching)
CALICO_IPPOOL = Kind("crd.projectcalico.org", "v1", "ippools", False, "IPPool")
CILIUM_POD_IPPOOL = Kind("cilium.io", "v2alpha1", "ciliumpodippools", False, "CiliumPodIPPool")
MUTATING_WEBHOOKS = Kind(
    "admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations", False, "MutatingWebhookConfiguration"
)
VALIDATING_WEBHOOKS = Kind(
    "admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", False, "ValidatingWebhookConfiguration"
)

IPPOOL = Kind(GROUP, VERSION, "spiderippools", False, "SpiderIPPool")
SUBNET = Kind(GROUP, VERSION, "spidersubnets", False, "SpiderSubnet")
RESERVEDIP = Kind(GROUP, VERSION, "spiderreservedips", False, "SpiderReservedIP")
COORDINATOR = Kind(GROUP, VERSION, "spidercoordinators", False, "SpiderCoordinator")
ENDPOINT = Kind(GROUP, VERSION, "spiderendpoints", True, "SpiderEndpoint")
MULTUSCONFIG = Kind(GROUP, VERSION, "spidermultusconfigs", True, "SpiderMultusConfig")
IPALLOCATION = Kind(GROUP, VERSION, "spideripallocations", False, "SpiderIPAllocation")
