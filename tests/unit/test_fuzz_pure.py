"""Fuzzing the pure parsers with hypothesis: every annotation we read (pod, namespace, application),
the veth plugin's config, the IPAM plugin's stdin config and the admission rules. Each input is
either accepted or refused with the error type that names the field; any other exception is a
crash (in the agent: a 500 and a traceback instead of a CNI error).

The lab-side fuzzing (tests/fuzz) sends the same kinds of input through the real agent, plugin,
apiserver and webhook; this is the fast, high-count half."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from spiderpool.api import annotations as ann
from spiderpool.cni import spiderpool_ipam
from spiderpool.controller import admission
from spiderpool.ipam import gc
from spiderpool.net import vethconf
from tests.fuzz import strategies as fz

FAST = settings(max_examples=300, deadline=None, derandomize=True, database=None)
COUNTS: dict[str, int] = {}


def _count(kind: str) -> None:
    COUNTS[kind] = COUNTS.get(kind, 0) + 1


def _attempt(fn: Any, *args: Any, refusal: type[Exception]) -> tuple[Any, Exception | None]:
    """(result, None), or (None, the refusal) when ``fn`` refuses its input; anything else propagates."""
    try:
        return fn(*args), None
    except refusal as err:
        return None, err


def _names_its_key(err: Exception, keys: set[str]) -> None:
    assert isinstance(err, ann.AnnotationError), err
    assert err.key in keys, err
    assert str(err).startswith(f"annotation {err.key}: "), err
    assert "expected e.g." in str(err), err


@FAST
@given(fz.annotations(fz.POD_ANNOTATIONS))
@example({"ipam.spidernet.io/ippool": "[" * 3000})  # RecursionError escaped the JSON decoder
@example({"ipam.spidernet.io/routes": '[{"dst": "10.0.0.0/8", "gw": "10.0.0.1", "GW": "x"}]'})
def test_pod_annotations_parse_or_name_the_key(values: dict[str, str]) -> None:
    _count("pod annotations (pure)")
    parsed, err = _attempt(ann.parse_pod, values, refusal=ann.AnnotationError)
    if err is not None:
        _names_its_key(err, set(values))
        return
    for choice in (parsed.ippool, *parsed.ippools, *parsed.subnets):
        if choice is not None:
            assert all(isinstance(n, str) and n for n in (*choice.ipv4, *choice.ipv6))
    # Multus' annotations are read too (for multusName): never an exception, whatever they hold
    nets = ann.multus_networks(values, "default", "kube-system/macvlan")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in nets.items())


@FAST
@given(fz.annotations({k: fz.POD_ANNOTATIONS[k] for k in (ann.MULTUS_DEFAULT_NETWORK, ann.MULTUS_NETWORKS)}))
@example({"v1.multus-cni.io/default-network": '[{"name": 5}]'})  # AttributeError on a non-string name
@example({"k8s.v1.cni.cncf.io/networks": "[[1]]"})  # AttributeError on a list item
def test_multus_annotations_never_raise(values: dict[str, str]) -> None:
    _count("Multus annotations (pure)")
    nets = ann.multus_networks(values, "default")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in nets.items())


@FAST
@given(fz.annotations(fz.NAMESPACE_ANNOTATIONS))
def test_namespace_annotations_parse_or_name_the_key(values: dict[str, str]) -> None:
    _count("namespace annotations (pure)")
    parsed, err = _attempt(ann.parse_namespace_defaults, values, refusal=ann.AnnotationError)
    if err is not None:
        _names_its_key(err, set(values))
        return
    v4, v6 = parsed
    assert all(isinstance(n, str) and n for n in (*v4, *v6))


@FAST
@given(fz.annotations(fz.APP_ANNOTATIONS))
@example({"ipam.spidernet.io/ippool-ip-number": "²"})  # str.isdigit() is true, int() refuses it
@example({"ipam.spidernet.io/ippool-ip-number": "9" * 5000})  # past int()'s digit limit
@example({"ipam.spidernet.io/ip-retention-policy": "[" * 3000})
def test_application_annotations_parse_or_name_the_key(values: dict[str, str]) -> None:
    """What the auto-pool reconciler reads from a Deployment's (or StatefulSet's) pod template, and
    the GC from a StatefulSet."""
    _count("application annotations (pure)")

    def read() -> tuple[tuple[bool, int] | None, bool | None]:
        ann.parse_pod(values)
        number = ann.parse_ip_number(values[ann.IP_NUMBER]) if ann.IP_NUMBER in values else None
        reclaim = ann.parse_reclaim(values[ann.RECLAIM]) if ann.RECLAIM in values else None
        return number, reclaim

    parsed, err = _attempt(read, refusal=ann.AnnotationError)
    if err is not None:
        _names_its_key(err, set(values))
    else:
        number, _ = parsed
        assert number is None or (number[1] >= 0 and (number[0] or number[1] > 0))
    sts = {"metadata": {"name": "web", "annotations": values}, "spec": {"replicas": 2}}
    assert isinstance(gc.retention(sts), dict)
    assert gc.statefulset_wants(sts, "web-1") in (True, False)


_VETH_KEYS = {
    "mode": st.sampled_from(["auto", "underlay", "overlay", "disabled", "disable", "bogus"]),
    "service_cidr": st.lists(fz.IP_LIKE, max_size=3),
    "serviceCIDR": st.lists(fz.IP_LIKE, max_size=3),
    "overlayPodCIDR": st.lists(fz.IP_LIKE, max_size=3),
    "hijackCIDR": st.lists(fz.IP_LIKE, max_size=3),
    "policyRoutes": st.lists(st.fixed_dictionaries({"dst": fz.IP_LIKE, "gw": fz.IP_LIKE}), max_size=2),
    "podMACPrefix": fz.TEXT | st.sampled_from(["0a:1b", "0b:1b", "zz:zz"]),
    "vethLinkAddress": fz.IP_LIKE,
    "hostRuleTable": st.integers(-5, 2**33),
    "podRPFilter": st.integers(-3, 5),
    "txQueueLen": st.integers(-1, 2**33),
    "vethMTU": st.integers(-1, 70000),
    "tunePodRoutes": st.booleans(),
    "detectIPConflict": st.booleans(),
    "detectGateway": st.booleans(),
    "podDefaultRouteNIC": fz.TEXT,
}


@FAST
@given(
    st.fixed_dictionaries({}, optional={k: fz.maybe_wrong(v) for k, v in _VETH_KEYS.items()}),
    st.none() | st.fixed_dictionaries({}, optional={"mode": fz.JSON, "hijackCIDR": fz.JSON, "podRPFilter": fz.JSON}),
    st.none() | st.fixed_dictionaries({}, optional={"serviceCIDR": fz.JSON, "overlayPodCIDR": fz.JSON}),
)
def test_veth_config_parses_or_names_the_key(
    conf: dict[str, Any], spec: dict[str, Any] | None, status: dict[str, Any] | None
) -> None:
    _count("veth plugin config (pure)")
    cfg, err = _attempt(vethconf.parse, vethconf.with_defaults(conf, spec, status), refusal=vethconf.ConfigError)
    if err is not None:
        assert any(k in str(err) for k in (*_VETH_KEYS, "service_cidr", "cluster_cidr", "mode")), err
        return
    assert cfg.mode in ("auto", "underlay", "overlay", "disabled")


@settings(FAST, max_examples=500)
@given(
    st.one_of(
        fz.JSON.map(json.dumps),
        fz.TEXT,
        st.fixed_dictionaries(
            {"ipam": fz.maybe_wrong(st.fixed_dictionaries({}, optional={
                k: fz.JSON if t is not list else fz.NAMES for k, t in spiderpool_ipam.IPAM_KEYS.items()
            } | {"bogus": fz.JSON}))},
            optional={"cniVersion": fz.maybe_wrong(st.sampled_from(spiderpool_ipam.SUPPORTED)), "name": fz.JSON},
        ).map(json.dumps),
    )
)  # fmt: skip
def test_ipam_plugin_config_loads_or_names_the_key(stdin: str) -> None:
    _count("IPAM plugin stdin config (pure)")
    loaded, err = _attempt(spiderpool_ipam.load_config, stdin, refusal=spiderpool_ipam.CniError)
    if isinstance(err, spiderpool_ipam.CniError):
        assert err.code in (1, 6, 7), err.msg
        want = {1: ("cniVersion",), 6: ("stdin",), 7: ("ipam", "'name'")}[err.code]
        assert any(w in err.msg for w in want), err.msg
        return
    conf, version = loaded
    assert version in spiderpool_ipam.SUPPORTED
    assert isinstance(conf["ipam"], dict)


_KINDS = ("SpiderIPPool", "SpiderSubnet", "SpiderReservedIP", "SpiderCoordinator", "SpiderMultusConfig")
_SPEC = st.fixed_dictionaries(
    {},
    optional={
        "subnet": fz.IP_LIKE,
        "ips": fz.maybe_wrong(st.lists(fz.IP_LIKE, max_size=3)),
        "excludeIPs": fz.maybe_wrong(st.lists(fz.IP_LIKE, max_size=3)),
        "gateway": fz.IP_LIKE,
        "ipVersion": st.sampled_from([4, 6, 5, "4", None]),
        "routes": fz.maybe_wrong(st.lists(st.fixed_dictionaries({"dst": fz.IP_LIKE, "gw": fz.IP_LIKE}), max_size=2)),
        "hijackCIDR": fz.maybe_wrong(st.lists(fz.IP_LIKE, max_size=2)),
        "policyRoutes": fz.JSON,
        "cniType": st.sampled_from(["macvlan", "ipvlan", "custom", "sriov", "x"]),
        "macvlan": fz.JSON,
        "customCNI": fz.TEXT,
        "default": fz.JSON,
    },
)
_OBJECT = st.fixed_dictionaries(
    {"metadata": fz.maybe_wrong(st.fixed_dictionaries({"name": fz.NAME}, optional={"annotations": fz.JSON}))},
    optional={"spec": fz.maybe_wrong(_SPEC)},
)


@settings(FAST, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_KINDS), _OBJECT, st.none() | _OBJECT)
def test_admission_never_raises(kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
    """The mutating webhook runs before the schema is checked, so it sees any shape; the validating
    one must not crash on what the schema lets through either."""
    _count("CRD objects through the admission rules (pure)")
    if not isinstance(obj.get("metadata"), dict):
        obj["metadata"] = {"name": "x"}
    snapshot = admission.Snapshot()
    mutated = admission.mutate(kind, obj, snapshot)
    assert isinstance(mutated, dict)
    errors = admission.validate(kind, "UPDATE" if old else "CREATE", obj, old, snapshot, admission.Settings())
    assert all(isinstance(e, str) and ": " in e for e in errors), errors


def test_zz_report_the_counts() -> None:
    """(runs last in this module) the number of generated inputs per kind, for docs/reliability.md"""
    print("pure fuzzing, inputs per kind: " + json.dumps(COUNTS, sort_keys=True))
    assert sum(COUNTS.values()) >= 1000, COUNTS
