"""The Spiderpool CRDs as lightkube resource classes (objects are handled as plain dicts)."""

from __future__ import annotations

from typing import Any

from lightkube.generic_resource import create_global_resource, create_namespaced_resource

from spiderpool.api.v2beta1 import GROUP, VERSION

SpiderIPPool: Any = create_global_resource(GROUP, VERSION, "SpiderIPPool", "spiderippools")
SpiderSubnet: Any = create_global_resource(GROUP, VERSION, "SpiderSubnet", "spidersubnets")
SpiderReservedIP: Any = create_global_resource(GROUP, VERSION, "SpiderReservedIP", "spiderreservedips")
SpiderCoordinator: Any = create_global_resource(GROUP, VERSION, "SpiderCoordinator", "spidercoordinators")
SpiderEndpoint: Any = create_namespaced_resource(GROUP, VERSION, "SpiderEndpoint", "spiderendpoints")
SpiderMultusConfig: Any = create_namespaced_resource(GROUP, VERSION, "SpiderMultusConfig", "spidermultusconfigs")

BY_KIND: dict[str, Any] = {
    "SpiderIPPool": SpiderIPPool,
    "SpiderSubnet": SpiderSubnet,
    "SpiderReservedIP": SpiderReservedIP,
    "SpiderCoordinator": SpiderCoordinator,
    "SpiderEndpoint": SpiderEndpoint,
    "SpiderMultusConfig": SpiderMultusConfig,
}
SpiderIPAllocation: Any = create_global_resource(GROUP, VERSION, "SpiderIPAllocation", "spideripallocations")
BY_KIND["SpiderIPAllocation"] = SpiderIPAllocation
