"""The controller's gauges the alerts read take the right values, against a real apiserver on
loopback: pool usage from the leader's status counts (gone with the pool, and with the lead), and
the expiry of the webhook certificate a replica serves (also after it reloads a renewed one)."""

from __future__ import annotations

import asyncio
import base64
import datetime
from typing import Any

from prometheus_client import REGISTRY

from spiderpool.controller import certs, leader, webhook
from spiderpool.controller.cache import ObjectCache
from spiderpool.controller.main import Controller, parse_args
from spiderpool.controller.status import StatusReconciler
from spiderpool.ipam.allocate import record_name
from spiderpool.k8s.client import ApiError, Client
from spiderpool.k8s.kinds import IPALLOCATION, IPPOOL, LEASE, MUTATING_WEBHOOKS, SECRET, VALIDATING_WEBHOOKS
from spiderpool_lab.envtest import ApiServer
from tests.inproc.conftest import create_record, eventually, gone, pool_body, record_spec, unique


def usage(pool: str, version: str = "4") -> tuple[float | None, float | None]:
    labels = {"pool": pool, "version": version}
    return (
        REGISTRY.get_sample_value("spiderpool_ippool_allocated_ips", labels),
        REGISTRY.get_sample_value("spiderpool_ippool_total_ips", labels),
    )


def exported_pools() -> set[str]:
    return {
        s.labels["pool"]
        for family in REGISTRY.collect()
        if family.name in ("spiderpool_ippool_allocated_ips", "spiderpool_ippool_total_ips")
        for s in family.samples
    }


def _v6_pool(name: str) -> dict[str, Any]:
    body = pool_body(name, "fd00:91::/64", ["fd00:91::10-fd00:91::11"])
    body["spec"]["ipVersion"] = 6
    return body


async def test_pool_usage_follows_the_records_and_goes_with_the_pool(client: Client, namespace: str) -> None:
    cache = ObjectCache(client)
    status = StatusReconciler(client, cache, finalizer_grace=0.5)
    tasks = [asyncio.create_task(cache.run()), asyncio.create_task(status.run())]
    pool, pool6 = unique("pool"), unique("pool")
    try:
        body = pool_body(pool, "10.91.0.0/24", ["10.91.0.10-10.91.0.13"], excludeIPs=["10.91.0.13"])
        await client.create(IPPOOL, body)
        await client.create(IPPOOL, _v6_pool(pool6))
        await eventually(lambda: usage(pool) == (0, 3), within=30, what=f"{pool}'s usage 0 of 3")
        await eventually(lambda: usage(pool6, "6") == (0, 2), within=30, what=f"{pool6}'s usage 0 of 2 (IPv6)")
        for ip in ("10.91.0.10", "10.91.0.11"):
            await create_record(client, record_spec(ip, pool, namespace, "holder", "uid-holder"))
        await eventually(lambda: usage(pool) == (2, 3), within=30, what=f"{pool}'s usage 2 of 3")

        # the same numbers as the status the leader wrote
        async def status_written() -> bool:
            st = (await client.get(IPPOOL, pool)).get("status") or {}
            return (st.get("allocatedIPCount"), st.get("totalIPCount")) == (2, 3)

        await eventually(status_written, within=30, what="the pool's status 2 of 3")

        # deleted: it stays (Terminating) while it holds IPs, and its series go with it
        await client.delete(IPPOOL, pool)
        await asyncio.sleep(1.0)
        assert usage(pool) == (2, 3)
        for ip in ("10.91.0.10", "10.91.0.11"):
            await client.delete(IPALLOCATION, record_name(ip))
        await eventually(lambda: gone(client, IPPOOL, pool), within=30, what=f"{pool} to be removed")
        await eventually(lambda: pool not in exported_pools(), within=30, what=f"{pool}'s series to go")
        assert usage(pool6, "6") == (0, 2)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    # a reconciler that stops (the leader's work is cancelled) takes its series with it
    assert pool6 not in exported_pools()


async def test_a_controller_that_loses_the_lead_stops_exporting_pool_usage(
    apiserver: ApiServer, client: Client
) -> None:
    lease = unique("lease")
    args = parse_args(
        [
            f"--kubeconfig={apiserver.kubeconfig}",
            "--namespace=default",
            f"--lease-name={lease}",
            "--identity=inproc",
            "--lease-duration=3",
            "--renew-deadline=2",
            "--retry-period=0.5",
            "--gc-disabled",
        ]
    )
    ctl = Controller(args)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(ctl.cache.run()), asyncio.create_task(ctl.elector.run(ctl.leading, stop))]
    pool = unique("pool")
    try:
        await client.create(IPPOOL, pool_body(pool, "10.92.0.0/24", ["10.92.0.10-10.92.0.14"]))
        await eventually(lambda: usage(pool) == (0, 5), within=60, what="the leader to export the pool's usage")
        assert leader.IS_LEADER._value.get() == 1
        # another replica holds the Lease now (as after a partition): this one cannot renew it
        await take_lease(client, lease)
        await eventually(lambda: not ctl.elector.is_leader, within=30, what="the controller to step down")
        await eventually(lambda: pool not in exported_pools(), within=30, what="the former leader to drop the series")
        assert leader.IS_LEADER._value.get() == 0
    finally:
        stop.set()
        await asyncio.wait_for(tasks[1], 30)
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await ctl.client.close()


async def take_lease(client: Client, lease: str) -> None:
    """Write the Lease as another replica's, read again if the leader renewed it meanwhile (a
    compare-and-swap, as a real contender's write is)."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        held = await client.get(LEASE, lease, "default")
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        held["spec"].update(holderIdentity="another-replica", leaseDurationSeconds=3600, renewTime=now)
        try:
            await client.replace(LEASE, held)
            return
        except ApiError as exc:
            if exc.code != 409 or asyncio.get_running_loop().time() > deadline:
                raise


def _expiry() -> float:
    return REGISTRY.get_sample_value("spiderpool_controller_webhook_cert_expiry_timestamp_seconds") or 0.0


def _secret(name: str, cert: certs.ServingCert) -> dict[str, Any]:
    data = {"ca.crt": cert.ca_pem, "tls.crt": cert.cert_pem, "tls.key": cert.key_pem}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "type": "kubernetes.io/tls",
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }


async def test_the_certificate_expiry_is_the_served_certificates_also_after_a_renewal(
    apiserver: ApiServer, client: Client
) -> None:
    """A replica that does not lead (another holds the Lease) serves the certificate of the Secret,
    and says when it ends; a renewed one put in the Secret is reloaded, and said too."""
    secret, lease = unique("webhook-cert"), unique("lease")
    now = datetime.datetime.now(datetime.UTC)
    await client.create(
        LEASE,
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": lease, "namespace": "default"},
            "spec": {
                "holderIdentity": "another-replica",
                "leaseDurationSeconds": 3600,
                "renewTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        },
    )
    first = certs.generate(dns=["localhost"], ips=["127.0.0.1"], validity=datetime.timedelta(days=30))
    await client.create(SECRET, _secret(secret, first))
    args = parse_args(
        [
            f"--kubeconfig={apiserver.kubeconfig}",
            "--namespace=default",
            f"--lease-name={lease}",
            "--identity=inproc",
            "--tls-method=provided",
            f"--webhook-secret={secret}",
            # nothing is admitted in this test: the address only has to be one
            "--webhook-url=https://127.0.0.1:9",
            "--webhook-bind=127.0.0.1",
            "--webhook-port=0",
            "--health-bind=127.0.0.1",
            "--health-port=0",
            "--metrics-port=0",
            "--cert-check-interval=1",
        ]
    )
    ctl = Controller(args)
    run = asyncio.create_task(ctl.run())
    try:
        want = first.leaf().not_valid_after_utc.timestamp()
        await eventually(lambda: _expiry() == want, within=60, what="the served certificate's expiry")
        assert not ctl.elector.is_leader
        renewed = certs.generate(dns=["localhost"], ips=["127.0.0.1"], validity=datetime.timedelta(days=10))
        stored = await client.get(SECRET, secret, "default")
        await client.replace(SECRET, {**_secret(secret, renewed), "metadata": stored["metadata"]})
        want = renewed.leaf().not_valid_after_utc.timestamp()
        await eventually(lambda: _expiry() == want, within=60, what="the renewed certificate's expiry")
    finally:
        ctl.stop.set()
        await asyncio.wait_for(run, 30)
        # (the next tests write pools with no webhook in the way)
        for kind in (MUTATING_WEBHOOKS, VALIDATING_WEBHOOKS):
            try:
                await client.delete(kind, webhook.CONFIG_NAME)
            except ApiError as exc:
                if exc.code != 404:
                    raise
