"""The agent's socket API refuses a malformed request before any handler runs, naming the field."""

from __future__ import annotations

import pytest

from spiderpool.agent import requests
from spiderpool.agent.errors import IPAMError

ADD = {"containerID": "c1", "ifName": "eth0", "podNamespace": "default", "podName": "web-0", "podUID": "u"}


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("allocate", [1, 2], "request body must be a JSON object"),
        ("allocate", {**ADD, "ifName": ""}, "ifName is required"),
        ("allocate", {**ADD, "podUID": 7}, "podUID must be a str"),
        ("allocate", {**ADD, "cleanGateway": "yes"}, "cleanGateway must be a bool"),
        ("allocate", {**ADD, "defaultIPv4IPPool": ["a", ""]}, "defaultIPv4IPPool must be a list of non-empty strings"),
        ("allocate", {**ADD, "podName": ".."}, "podName '..' is not a Kubernetes name"),
        ("allocate", {**ADD, "podNamespace": "a/b"}, "podNamespace 'a/b' is not a Kubernetes name"),
        ("coordinator_add", {"containerID": "c", "ifName": "eth0", "netns": "/x"}, "config is required"),
        (
            "coordinator_add",
            {"containerID": "c", "ifName": "eth0", "netns": "/x", "config": []},
            "config must be a JSON object",
        ),
        ("gc", {"validAttachments": [1]}, "validAttachments[0] must be"),
        ("check", {"ifName": "eth0", "ips": "10.0.0.1"}, "ips must be a list"),
    ],
)
def test_malformed_requests_are_refused_naming_the_field(route: str, body: object, field: str) -> None:
    with pytest.raises(IPAMError) as caught:
        requests.check(route, body)
    assert (caught.value.code, caught.value.http) == (6, 400)
    assert field in caught.value.msg


def test_well_formed_requests_pass_unchanged() -> None:
    assert requests.check("allocate", ADD) is ADD
    assert requests.check("release", {"containerID": "c1", "ifName": "eth0", "podName": "", "podNamespace": ""})
    assert requests.check("gc", {"network": "n", "validAttachments": [{"containerID": "c", "ifname": "eth0"}]})
