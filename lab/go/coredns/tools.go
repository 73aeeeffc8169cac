//go:build tools

// Package tools pins CoreDNS, the version kubeadm v1.37 deploys: the cluster DNS of the lab's
// underlay-only mode, which Kubernetes' DNS conformance tests query.
package tools

import (
	_ "github.com/coredns/coredns"
)
