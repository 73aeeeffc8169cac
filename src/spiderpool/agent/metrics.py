"""The agent's allocation metrics (names as upstream's, where upstream has one)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3, 10)

ALLOCATIONS = Counter("spiderpool_ipam_allocation_counts", "IP allocation requests")
ALLOCATION_FAILURES = Counter("spiderpool_ipam_allocation_failure_counts", "Failed allocations", ["reason"])
CONFLICTS = Counter("spiderpool_ipam_allocation_conflict_counts", "Record creates lost to another allocator")
RELEASES = Counter("spiderpool_ipam_release_counts", "IP release requests")
RELEASED_IPS = Counter("spiderpool_ipam_released_ip_counts", "IPs released", ["reason"])
API_WRITES = Counter("spiderpool_ipam_api_writes", "API writes made by the allocator", ["kind"])
ENDPOINTS_PENDING = Gauge("spiderpool_ipam_endpoint_sync_pending", "Pods whose SpiderEndpoint awaits a write")
LATENCY = Histogram("spiderpool_ipam_allocation_duration_seconds", "Allocation latency at the agent", buckets=_BUCKETS)
RELEASE_LATENCY = Histogram(
    "spiderpool_ipam_release_duration_seconds", "Release latency at the agent", buckets=_BUCKETS
)
REQUEST_ERRORS = Counter(
    "spiderpool_agent_request_errors_total",
    "Socket API requests that failed on a bug (the log has the traceback)",
    ["route"],
)
PLUGIN_REINSTALLS = Counter(
    "spiderpool_agent_plugin_reinstalls_total", "Times the plugins were found missing from the CNI bin dir and put back"
)
